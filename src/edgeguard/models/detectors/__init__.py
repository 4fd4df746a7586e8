"""Person detectors behind one protocol (:class:`PersonDetector`): images ``[B, 3, H, W]`` in [0, 1]
-> per-image :class:`Detections` with differentiable scores."""

from .base import (
    Detections,
    DetectorError,
    PersonDetector,
    box_iou,
    check_images,
    group_rectangles,
    nms,
)
from .hog import HOGPersonDetector

__all__ = [
    "Detections",
    "DetectorError",
    "HOGPersonDetector",
    "PersonDetector",
    "box_iou",
    "check_images",
    "group_rectangles",
    "nms",
]
