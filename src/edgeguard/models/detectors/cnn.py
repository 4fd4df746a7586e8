"""A small one-stage CNN person detector (anchor-free, CenterNet/FCOS-style), trained in the project
on the person photographs (``edgeguard.models.detectors.train``).

Fully convolutional, stride 8: every cell of the output grid predicts a person logit and a box
(centre offset within the cell, log width and height in cells).  A cell is trained positive when it
lies near a person's centre (within a quarter of the box size, capped at 1.5 cells; at least the nearest cell).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import Detections, PersonDetector, check_images

STRIDE = 8
OFFSET = 2.0  # a cell predicts a centre up to 2 cells away (positives lie within 1.5)


def _block(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


class TinyPersonNet(nn.Module):
    """``[B, 3, H, W]`` in [0, 1] -> ``[B, 5, H/8, W/8]``: person logit, dx, dy, log w, log h."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            _block(3, w, 2),
            _block(w, w, 1),
            _block(w, 2 * w, 2),
            _block(2 * w, 2 * w, 1),
            _block(2 * w, 4 * w, 2),
            _block(4 * w, 4 * w, 1),
            # a wider receptive field at stride 8: dilated context for whole bodies
            nn.Sequential(
                nn.Conv2d(4 * w, 4 * w, 3, 1, 2, dilation=2, bias=False),
                nn.BatchNorm2d(4 * w),
                nn.ReLU(inplace=True),
            ),
            nn.Sequential(
                nn.Conv2d(4 * w, 4 * w, 3, 1, 4, dilation=4, bias=False),
                nn.BatchNorm2d(4 * w),
                nn.ReLU(inplace=True),
            ),
            nn.Sequential(
                nn.Conv2d(4 * w, 4 * w, 3, 1, 8, dilation=8, bias=False),
                nn.BatchNorm2d(4 * w),
                nn.ReLU(inplace=True),
            ),
        )
        self.head = nn.Conv2d(4 * w, 5, 1)
        nn.init.constant_(self.head.bias, 0.0)
        with torch.no_grad():
            self.head.bias[0] = -4.0  # prior: few cells hold a person centre

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features((x - 0.45) / 0.25))


def decode(raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``raw [B, 5, h, w]`` -> (boxes ``[B, h*w, 4]`` pixels, logits ``[B, h*w]``)."""
    b, _, h, w = raw.shape
    ys, xs = torch.meshgrid(
        torch.arange(h, dtype=raw.dtype), torch.arange(w, dtype=raw.dtype), indexing="ij"
    )
    cx = (xs + 0.5 + OFFSET * raw[:, 1].tanh()) * STRIDE
    cy = (ys + 0.5 + OFFSET * raw[:, 2].tanh()) * STRIDE
    bw = raw[:, 3].clamp(-4, 6).exp() * STRIDE
    bh = raw[:, 4].clamp(-4, 6).exp() * STRIDE
    boxes = torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], -1)
    return boxes.reshape(b, -1, 4), raw[:, 0].reshape(b, -1)


class CNNPersonDetector(PersonDetector):
    """The trained :class:`TinyPersonNet` behind the detector protocol.  Scores are logits; the
    default ``threshold`` -1.5 (probability 0.18) suits the focal loss, which keeps probabilities
    of true persons low."""

    name = "cnn"

    def __init__(
        self, net: TinyPersonNet | None = None, threshold: float = -1.5, nms_iou: float = 0.45
    ) -> None:
        super().__init__()
        self.net = net if net is not None else TinyPersonNet()
        self.threshold, self.nms_iou = threshold, nms_iou

    def candidates(self, images: torch.Tensor) -> list[Detections]:
        check_images(images)
        h, w = images.shape[2:]
        ph, pw = (-h) % STRIDE, (-w) % STRIDE
        x = F.pad(images, (0, pw, 0, ph), mode="replicate") if ph or pw else images
        boxes, logits = decode(self.net(x))
        return [Detections(b, s) for b, s in zip(boxes, logits, strict=True)]


def targets(boxes: list[torch.Tensor], size: tuple[int, int]) -> tuple[torch.Tensor, ...]:
    """Training targets on the ``size`` (H, W) image grid: (positive mask ``[B, h, w]``, regression
    targets ``[B, 4, h, w]``: centre offset in units of ``OFFSET`` cells (-1..1, the tanh of the
    net's output), log width, log height in cells)."""
    h, w = -(-size[0] // STRIDE), -(-size[1] // STRIDE)
    pos = torch.zeros(len(boxes), h, w, dtype=torch.bool)
    reg = torch.zeros(len(boxes), 4, h, w)
    area = torch.full((len(boxes), h, w), float("inf"))
    ys = (torch.arange(h) + 0.5) * STRIDE
    xs = (torch.arange(w) + 0.5) * STRIDE
    for i, bx in enumerate(boxes):
        for x1, y1, x2, y2 in bx.tolist():
            cx, cy, bw, bh = (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1
            if bw < 2 or bh < 2:
                continue
            rx = min(max(bw / 4, STRIDE / 2), 1.5 * STRIDE)
            ry = min(max(bh / 4, STRIDE / 2), 1.5 * STRIDE)
            near = ((xs[None, :] - cx).abs() <= rx) & ((ys[:, None] - cy).abs() <= ry)
            if not near.any():  # the nearest cell at least
                near = torch.zeros(h, w, dtype=torch.bool)
                near[min(int(cy // STRIDE), h - 1), min(int(cx // STRIDE), w - 1)] = True
            take = near & (bw * bh < area[i])  # overlapping persons: the smaller wins the cell
            area[i][take] = bw * bh
            pos[i] |= take
            ox = ((cx - xs[None, :]) / STRIDE / OFFSET).clamp(-0.99, 0.99).expand(h, w)
            oy = ((cy - ys[:, None]) / STRIDE / OFFSET).clamp(-0.99, 0.99).expand(h, w)
            for k, v in enumerate((ox, oy)):
                reg[i, k][take] = v[take]
            reg[i, 2][take] = torch.log(torch.tensor(bw / STRIDE))
            reg[i, 3][take] = torch.log(torch.tensor(bh / STRIDE))
    return pos, reg


def detection_loss(
    raw: torch.Tensor, pos: torch.Tensor, reg: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0
) -> torch.Tensor:
    """Focal loss on the person logit over all cells (normalised by the positives) plus L1 on the
    box of positive cells."""
    logit = raw[:, 0]
    t = pos.to(logit.dtype)
    p = torch.sigmoid(logit)
    ce = F.binary_cross_entropy_with_logits(logit, t, reduction="none")
    pt = p * t + (1 - p) * (1 - t)
    focal = (alpha * t + (1 - alpha) * (1 - t)) * (1 - pt).pow(gamma) * ce
    npos = t.sum().clamp_min(1)
    if pos.any():
        pred = torch.stack([raw[:, 1].tanh(), raw[:, 2].tanh(), raw[:, 3], raw[:, 4]], 1)
        box = F.l1_loss(
            pred.permute(0, 2, 3, 1)[pos], reg.permute(0, 2, 3, 1)[pos], reduction="sum"
        )
    else:
        box = raw.sum() * 0
    return (focal.sum() + box) / npos
