"""Person detectors behind one protocol (:class:`PersonDetector`): images ``[B, 3, H, W]`` in [0, 1]
-> per-image :class:`Detections` with differentiable scores."""

from collections.abc import Callable

from ...registry import lookup
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
    "DETECTORS",
    "DETECTOR_SPECS",
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


def _hog(path: str, trust_pickle: bool) -> PersonDetector:
    return HOGPersonDetector()


def _cnn(path: str, trust_pickle: bool) -> PersonDetector:
    from .train import load_cnn_detector

    return load_cnn_detector(path or None)


def _centernet(path: str, trust_pickle: bool) -> PersonDetector:
    from .centernet import CenterNetDetector

    return CenterNetDetector(path=path or None)


def _nanodet(path: str, trust_pickle: bool) -> PersonDetector:
    from .nanodet import NanoDetDetector

    return NanoDetDetector(path=path or None)


# name -> (factory of the part after ':', whether that part is "none", "optional" or "required")
DETECTORS: dict[str, tuple[Callable[[str, bool], PersonDetector], str]] = {
    "hog": (_hog, "none"),
    "cnn": (_cnn, "optional"),
    "centernet": (_centernet, "optional"),
    "nanodet": (_nanodet, "optional"),
    "yolo": (lambda path, trust: _module(path, "yolo", trust), "required"),
    "faster-rcnn": (lambda path, trust: _module(path, "faster-rcnn", trust), "required"),
}
DETECTOR_SPECS = tuple(
    n + {"none": "", "optional": "[:PATH]", "required": ":PATH"}[k]
    for n, (_, k) in DETECTORS.items()
)


def _module(path: str, kind: str, trust_pickle: bool) -> PersonDetector:
    from .adapters import load_detector

    return load_detector(path, kind, trust_pickle=trust_pickle)


def get_detector(spec: str, trust_pickle: bool = False) -> PersonDetector:
    """A detector by name: ``hog``, ``cnn`` (the shipped weights), ``cnn:PATH``, ``centernet`` and
    ``nanodet`` (COCO-trained, fetched by ``make models``; ``:PATH`` a model.json), ``yolo:PATH``,
    ``faster-rcnn:PATH`` (user modules; see :func:`adapters.load_detector`)."""
    name, _, path = spec.partition(":") if isinstance(spec, str) else (spec, "", "")
    factory, kind = lookup(DETECTORS, name, "detector", DetectorError)
    if kind == "none" and path:
        raise DetectorError(
            f"detector {name!r} takes no file, got {spec!r}; accepted: {', '.join(DETECTOR_SPECS)}"
        )
    if kind == "required" and not path:
        raise DetectorError(
            f"detector {name!r} needs a file: {name}:PATH; accepted: {', '.join(DETECTOR_SPECS)}"
        )
    return factory(path, trust_pickle)
