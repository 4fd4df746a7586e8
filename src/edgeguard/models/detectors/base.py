"""The person-detector protocol: ``detector(images [B, 3, H, W] in [0, 1]) -> list[Detections]``
(one per image, after the detector's own threshold and grouping), and ``detector.candidates(images)``,
every scored box before thresholding, whose scores are differentiable with respect to the pixels:
patch attacks minimise them."""

from __future__ import annotations

import copy
from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import EdgeguardError

Boxes = torch.Tensor | Sequence[torch.Tensor]  # [N, 4] one person per image, or [k, 4] per image


def boxes_per_image(boxes: Boxes) -> list[torch.Tensor]:
    """``[k, 4]`` boxes of each image, from one ``[N, 4]`` box per image or a list per image."""
    return (
        [b[None] for b in boxes]
        if isinstance(boxes, torch.Tensor)
        else [b.reshape(-1, 4) for b in boxes]
    )


class DetectorError(EdgeguardError, ValueError):
    """Bad images, or a detector that cannot be loaded or is not a detector."""


@dataclass
class Detections:
    """``boxes [K, 4]`` (x1, y1, x2, y2) in pixels of the input image; ``scores [K]`` person scores
    (higher = more confident; their scale is the detector's own)."""

    boxes: torch.Tensor
    scores: torch.Tensor

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    def detach(self) -> Detections:
        return Detections(self.boxes.detach(), self.scores.detach())


def check_images(images: torch.Tensor) -> None:
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise DetectorError(f"images must be a float tensor [B, 3, H, W] in [0, 1], got {shape}")
    if not torch.is_floating_point(images):
        raise DetectorError(f"images must be floating point in [0, 1], got {images.dtype}")


def check_unit_images(images: torch.Tensor) -> None:
    """Images ``[B, 3, H, W]``, floating point, finite, in [0, 1]."""
    check_images(images)
    values = images.detach()
    if values.numel() and not bool(torch.isfinite(values).all()):
        raise DetectorError("images hold NaN or Inf values; expected finite values in [0, 1]")
    if values.numel() and (float(values.min()) < 0 or float(values.max()) > 1):
        raise DetectorError(
            f"images must be in [0, 1], got [{float(values.min()):.3g}, {float(values.max()):.3g}]"
        )


class PersonDetector(nn.Module):
    """Base class.  ``threshold``: a candidate with score >= threshold is a detection; the kept
    candidates are then merged by :meth:`merge` (NMS at ``nms_iou`` unless a detector overrides it)."""

    name: ClassVar[str] = ""
    threshold: float = 0.0
    nms_iou: float = 0.5
    pre_nms: ClassVar[int | None] = None  # at most this many top-scoring candidates are merged

    @abstractmethod
    def candidates(self, images: torch.Tensor) -> list[Detections]:
        """Every scored box (no threshold, no grouping), differentiable scores."""

    def forward(self, images: torch.Tensor) -> list[Detections]:
        out = []
        for cand in self.candidates(images):
            keep = cand.scores >= self.threshold
            out.append(
                self.merge(top_k(Detections(cand.boxes[keep], cand.scores[keep]), self.pre_nms))
            )
        return out

    def merge(self, det: Detections) -> Detections:
        """Overlapping detections of one person become one."""
        return nms(det, self.nms_iou)


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``[A, B]`` IoU of boxes ``a [A, 4]`` and ``b [B, 4]`` (x1, y1, x2, y2)."""
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp_min(0).prod(2)
    area_a = (a[:, 2:] - a[:, :2]).clamp_min(0).prod(1)
    area_b = (b[:, 2:] - b[:, :2]).clamp_min(0).prod(1)
    union = area_a[:, None] + area_b[None, :] - inter
    return torch.where(union > 0, inter / union.clamp_min(1e-12), torch.zeros_like(inter))


def binary_kl_sum(
    student: torch.Tensor,
    teacher: torch.Tensor,
    eps: float = 1e-6,
    focal: float = 0.0,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Summed binary KL divergence of probabilities ``student`` from ``teacher`` (same shape, in
    [0, 1], clamped to ``[eps, 1 - eps]``): the cross-entropy less the teacher's entropy, so 0 when
    they are equal.  The class-score term of the detectors' distillation losses.  ``focal`` (>= 0):
    each element weighted by ``|student - teacher| ** focal``, the modulating factor of Li et al.'s
    quality focal loss (GFL, 2020), so the cells the student gets most wrong (missed peaks) lead
    instead of the many nearly matched background cells; 0 is the plain KL.  ``weight``: per-element
    weights (broadcast against ``teacher``), e.g. :func:`size_balance`'s."""
    t = teacher.clamp(eps, 1 - eps)
    s = student.clamp(eps, 1 - eps)
    kl = F.binary_cross_entropy(s, t, reduction="none") - F.binary_cross_entropy(
        t, t, reduction="none"
    )
    if focal:
        kl = kl * (s - t).abs().pow(focal)
    return (kl if weight is None else kl * weight).sum()


def side_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of boxes given as distances ``[..., 4]`` = (left, top, right, bottom) from one shared
    point (negative distances count as 0), shape ``[...]``; 1 where both boxes are empty."""
    a, b = a.clamp_min(0), b.clamp_min(0)
    area_a = (a[..., 0] + a[..., 2]) * (a[..., 1] + a[..., 3])
    area_b = (b[..., 0] + b[..., 2]) * (b[..., 1] + b[..., 3])
    m = torch.minimum(a, b)
    inter = (m[..., 0] + m[..., 2]) * (m[..., 1] + m[..., 3])
    union = area_a + area_b - inter
    return torch.where(union > 0, inter / union.clamp_min(1e-12), torch.ones_like(union))


def size_balance(
    score: torch.Tensor, side: torch.Tensor, balance: float, ref: float, cap: float = 16.0
) -> torch.Tensor:
    """Per-location weights that give a small object's locations the pull of a large one's:
    ``1 + score * (f - 1)`` with ``f = clamp(ref / side, 1, cap ** (1 / balance)) ** balance``,
    where ``score [...]`` is the teacher's object probability at the location (0-1) and ``side``
    (same shape, > 0) the geometric mean side of the teacher's box there, in ``ref``'s units.  A
    teacher's heat blob and its summed KL grow with the object's area, so a distillation loss
    summed over locations is ruled by the large objects, and a pruned student learns to miss the
    small ones; ``balance`` 2 evens that out for objects down to ``ref / 4``, 0 gives all ones."""
    if balance == 0:
        return torch.ones_like(score)
    f = (ref / side.clamp_min(1e-6)).clamp(1.0, cap ** (1.0 / balance)).pow(balance)
    return 1 + score * (f - 1)


def top_k(det: Detections, k: int | None) -> Detections:
    """The ``k`` highest-scoring detections (all when ``k`` is None or not exceeded): a detector
    whose scores went flat (a badly pruned one) would otherwise send every cell to the quadratic
    NMS."""
    if k is None or len(det) <= k:
        return det
    idx = torch.topk(det.scores.detach(), k).indices
    return Detections(det.boxes[idx], det.scores[idx])


def nms(det: Detections, iou: float = 0.5) -> Detections:
    """Greedy non-maximum suppression (highest score first)."""
    if len(det) == 0:
        return det
    order = torch.argsort(det.scores.detach(), descending=True)
    boxes = det.boxes.detach()[order]
    ious = box_iou(boxes, boxes)
    keep = torch.ones(len(order), dtype=torch.bool)
    for i in range(len(order)):
        if keep[i]:
            keep[i + 1 :] &= ious[i, i + 1 :] <= iou
    idx = order[keep]
    return Detections(det.boxes[idx], det.scores[idx])


def group_rectangles(det: Detections, group_threshold: int = 2, eps: float = 0.2) -> Detections:
    """OpenCV's ``groupRectangles``: clusters of similar boxes (corners within ``eps`` x mean size)
    with more than ``group_threshold`` members become their average box (rounded), scored by their
    best member; clusters inside a better-supported cluster are dropped."""
    if len(det) == 0 or group_threshold <= 0:
        return det
    r = det.boxes.detach().double()
    xywh = torch.cat([r[:, :2], r[:, 2:] - r[:, :2]], 1)
    n = len(r)
    parent = list(range(n))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    wh_min = torch.minimum(xywh[:, None, 2:], xywh[None, :, 2:])
    delta = eps * (wh_min[..., 0] + wh_min[..., 1]) * 0.5
    corners = torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1)
    similar = ((corners[:, None] - corners[None, :]).abs() <= delta[..., None]).all(2)
    for i, j in zip(*torch.nonzero(similar, as_tuple=True), strict=True):
        a, b = find(int(i)), find(int(j))
        if a != b:
            parent[b] = a
    labels = torch.tensor([find(i) for i in range(n)])
    classes = torch.unique(labels)
    rects, counts, scores = [], [], []
    for c in classes:
        members = (labels == c).nonzero().squeeze(1)
        # as OpenCV: the integer sum times the float 1/n, rounded half to even (cvRound)
        mean = xywh[members].sum(0).float() * torch.tensor(1.0 / len(members), dtype=torch.float32)
        rects.append(torch.round(mean).double())
        counts.append(len(members))
        scores.append(det.scores[members].max())
    keep = []
    for i, (r1, n1) in enumerate(zip(rects, counts, strict=True)):
        if n1 <= group_threshold:
            continue
        inside = False
        for j, (r2, n2) in enumerate(zip(rects, counts, strict=True)):
            if j == i or n2 <= group_threshold:
                continue
            dx, dy = round(float(r2[2]) * eps), round(float(r2[3]) * eps)
            if (
                r1[0] >= r2[0] - dx
                and r1[1] >= r2[1] - dy
                and r1[0] + r1[2] <= r2[0] + r2[2] + dx
                and r1[1] + r1[3] <= r2[1] + r2[3] + dy
                and (n2 > max(3, n1) or n1 < 3)
            ):
                inside = True
                break
        if not inside:
            keep.append(i)
    if not keep:
        return Detections(det.boxes[:0], det.scores[:0])
    boxes = torch.stack([torch.cat([rects[i][:2], rects[i][:2] + rects[i][2:]]) for i in keep])
    return Detections(boxes.to(det.boxes.dtype), torch.stack([scores[i] for i in keep]))


COCO_CLASSES = 80


def class_channels(have: Sequence[int], classes: Sequence[int]) -> list[int]:
    """The output channels, among a detector's ``have`` (the COCO index of each channel), of
    ``classes`` sorted (person = 0 first).  A person detector keeps the person class; every index
    must be in [0, 80) and among ``have``."""
    keep = sorted({int(c) for c in classes})
    if not keep or keep[0] < 0 or keep[-1] >= COCO_CLASSES:
        raise DetectorError(f"classes must be COCO class indices in [0, 79], got {list(classes)}")
    if keep[0] != 0:
        raise DetectorError(f"a person detector keeps the person class (0), got {keep}")
    if any(c not in have for c in keep):
        raise DetectorError(f"classes {keep} are not all in {tuple(have)}")
    return [list(have).index(c) for c in keep]


def slice_conv(conv: nn.Conv2d, filters: Sequence[int]) -> nn.Conv2d:
    """A copy of ``conv`` computing only ``filters`` (output channels, in that order), its
    parameters' ``requires_grad`` as the original's."""
    out = nn.Conv2d(
        conv.in_channels,
        len(filters),
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        conv.groups,
        conv.bias is not None,
        conv.padding_mode,
    )
    idx = torch.as_tensor(list(filters))
    with torch.no_grad():
        out.weight.copy_(conv.weight[idx])
        if conv.bias is not None:
            out.bias.copy_(conv.bias[idx])
    for p in out.parameters():
        p.requires_grad_(conv.weight.requires_grad)
    return out


def twin_with_net(
    detector: PersonDetector, net: nn.Module, channels: Sequence[int] | None = None
) -> PersonDetector:
    """A shallow copy of ``detector`` that runs ``net`` in place of its graph (its other modules
    and buffers shared, not copied); ``channels``: ``net`` outputs only these of the detector's
    class channels (its ``classes`` follow)."""
    twin = copy.copy(detector)
    twin._modules = dict(detector._modules)  # copy.copy shares the module table: give it its own
    twin.net = net
    if channels is not None:
        twin.classes = tuple(detector.classes[i] for i in channels)
    return twin
