"""OpenCV's own HOG people detector as a black box: scores and decisions from its unmodified
``detectMultiScale`` (no gradients)."""

from __future__ import annotations

import torch

from .base import Boxes, box_iou, boxes_per_image


class OpenCVHOGBlackBox:
    """OpenCV's unmodified ``HOGDescriptor.detectMultiScale`` as a black box: images go in as 8-bit
    BGR, only its returned windows and weights come out.  ``score`` is the best weight among the
    raw windows (no grouping) overlapping the person, floored at ``floor`` (its hit threshold)."""

    def __init__(self, floor: float = -1.5, scale: float = 1.05) -> None:
        import cv2

        self.hog = cv2.HOGDescriptor()
        self.hog.setSVMDetector(cv2.HOGDescriptor_getDefaultPeopleDetector())
        self.floor, self.scale, self.queries = floor, scale, 0

    @staticmethod
    def _bgr(image: torch.Tensor):
        import numpy as np

        arr = (image.detach().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        return np.ascontiguousarray(arr[:, :, ::-1])

    def _detect(self, image: torch.Tensor, hit: float, group: int):
        rects, weights = self.hog.detectMultiScale(
            self._bgr(image),
            hitThreshold=hit,
            winStride=(8, 8),
            padding=(8, 8),
            scale=self.scale,
            groupThreshold=group,
        )
        self.queries += 1
        boxes = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in rects], dtype=torch.float32)
        return boxes.reshape(-1, 4), torch.as_tensor(weights, dtype=torch.float32).reshape(-1)

    def scores(self, images: torch.Tensor, boxes: Boxes, iou: float = 0.3) -> torch.Tensor:
        """``[P]`` per person (``boxes`` as in :func:`person_scores`)."""
        out = []
        for img, person_boxes in zip(images, boxes_per_image(boxes), strict=True):
            b, w = self._detect(img, self.floor, 0)
            for box in person_boxes:
                near = (
                    box_iou(box[None], b)[0] >= iou if len(b) else torch.zeros(0, dtype=torch.bool)
                )
                out.append(float(w[near].max()) if near.any() else self.floor)
        return torch.tensor(out)

    def detected(self, images: torch.Tensor, boxes: Boxes, iou: float = 0.3) -> torch.Tensor:
        """Default call (hitThreshold 0, grouping 2): is each person found (IoU >= ``iou``)?"""
        out = []
        for img, person_boxes in zip(images, boxes_per_image(boxes), strict=True):
            b, _ = self._detect(img, 0.0, 2)
            for box in person_boxes:
                out.append(bool(len(b)) and bool((box_iou(box[None], b)[0] >= iou).any()))
        return torch.tensor(out, dtype=torch.bool)
