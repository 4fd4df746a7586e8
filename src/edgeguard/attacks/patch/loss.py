"""The T-shirt's attack loss: a detector's person scores on the persons' boxes.

The loss of detector k on an image is the mean of its ``topk`` best person scores among the
candidate boxes that overlap the person (IoU >= ``iou``), relative to its threshold and floored at
``-kappa`` (a window already below by a margin stops pulling): ``f_k = mean max(s - threshold,
-kappa)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ...models.detectors import PersonDetector, box_iou
from ...models.detectors.base import Boxes, boxes_per_image

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (images, boxes) -> [N] scores


def person_scores(
    detector: PersonDetector,
    images: torch.Tensor,
    boxes: Boxes,
    iou: float = 0.3,
    topk: int = 1,
    kappa: float = math.inf,
) -> torch.Tensor:
    """``[P]`` per person (image-major): the mean of the ``topk`` best candidate scores (minus the
    detector's threshold, each floored at ``-kappa``) among the candidate boxes with IoU >= ``iou``
    with the person's box; ``-kappa`` where none overlaps.  ``boxes``: ``[N, 4]`` (one person per
    image, as crops) or a ``[k, 4]`` tensor per image (scenes).  ``topk = 1``: the best score.  More
    than one matters for detectors that group windows (OpenCV's HOG keeps a cluster of at least 3)."""
    out = []
    floor = torch.tensor(-kappa)
    for cand, person_boxes in zip(detector.candidates(images), boxes_per_image(boxes), strict=True):
        if len(person_boxes) == 0:
            continue
        near_all = box_iou(person_boxes, cand.boxes.detach()) >= iou
        for near in near_all:
            s = cand.scores[near] - detector.threshold
            if s.numel() == 0:
                out.append(floor)
                continue
            top = s.topk(min(topk, s.numel())).values
            out.append(torch.maximum(top, floor).mean())
    return torch.stack(out) if out else torch.zeros(0)


def detected(
    detector: PersonDetector, images: torch.Tensor, boxes: Boxes, iou: float = 0.3
) -> torch.Tensor:
    """``[P]`` bool per person (image-major): a final detection (after threshold and grouping) has
    IoU >= ``iou`` with the person's box (``boxes`` as in :func:`person_scores`)."""
    with torch.no_grad():
        dets = detector(images)
    out = []
    for d, person_boxes in zip(dets, boxes_per_image(boxes), strict=True):
        if len(person_boxes) == 0:
            continue
        if len(d) == 0:
            out += [False] * len(person_boxes)
        else:
            out += (box_iou(person_boxes, d.boxes) >= iou).any(1).tolist()
    return torch.tensor(out, dtype=torch.bool)
