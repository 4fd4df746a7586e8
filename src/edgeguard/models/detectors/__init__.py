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
    "get_detector",
    "group_rectangles",
    "nms",
]


def get_detector(spec: str, trust_pickle: bool = False) -> PersonDetector:
    """A detector by name: ``hog``, ``cnn`` (the shipped weights), ``cnn:PATH``, ``centernet`` and
    ``nanodet`` (COCO-trained, fetched by ``make models``; ``:PATH`` a model.json), ``yolo:PATH``,
    ``faster-rcnn:PATH`` (user modules; see :func:`adapters.load_detector`)."""
    name, _, path = spec.partition(":")
    if name == "hog" and not path:
        return HOGPersonDetector()
    if name == "cnn":
        from .train import load_cnn_detector

        return load_cnn_detector(path or None)
    if name == "centernet":
        from .centernet import CenterNetDetector

        return CenterNetDetector(path=path or None)
    if name == "nanodet":
        from .nanodet import NanoDetDetector

        return NanoDetDetector(path=path or None)
    if name in ("yolo", "faster-rcnn") and path:
        from .adapters import load_detector

        return load_detector(path, name, trust_pickle=trust_pickle)
    raise DetectorError(
        f"unknown detector {spec!r}; available: hog, cnn[:PATH], centernet, nanodet, yolo:PATH, "
        "faster-rcnn:PATH"
    )
