"""Detectors users bring from disk, behind the person-detector protocol.

- :class:`YOLOAdapter` wraps an Ultralytics-style YOLO module: v5 raw output ``[B, N, 5 + C]``
  (box cx, cy, w, h, objectness logit-or-probability, class scores) or v8/11 output
  ``[B, 4 + C, N]`` (box, class scores; no objectness).  ``score`` picks the person score:
  ``"obj*cls"`` (v5 default), ``"obj"`` or ``"cls"``, the loss variants of Adversarial T-shirt.
- :class:`FasterRCNNAdapter` wraps a torchvision-style two-stage detector in eval mode: a module
  whose forward takes a list of ``[3, H, W]`` images and returns ``[{"boxes", "labels", "scores"}]``.

:func:`load_detector` reads such a module from disk: TorchScript archives (``torch.jit.load``) are
loaded as they are; pickled ``nn.Module`` files (Ultralytics ``.pt``) execute code when unpickled,
so they load only with ``trust_pickle=True``.  Nothing is ever downloaded.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from torch import nn

from .base import Detections, DetectorError, PersonDetector, check_images

SCORES = ("obj*cls", "obj", "cls")


def _prob(t: torch.Tensor) -> torch.Tensor:
    """Scores given as logits or probabilities, as probabilities (export formats differ)."""
    return t if bool(((t >= 0) & (t <= 1)).all()) else torch.sigmoid(t)


class YOLOAdapter(PersonDetector):
    """Person detections from a YOLO module (see the module docstring for the layouts)."""

    name = "yolo"

    def __init__(
        self,
        model: nn.Module,
        person_class: int = 0,
        score: str = "obj*cls",
        threshold: float = 0.25,
        nms_iou: float = 0.45,
        input_size: int | None = None,
    ) -> None:
        super().__init__()
        if score not in SCORES:
            raise DetectorError(f"score must be one of {', '.join(SCORES)}, got {score!r}")
        self.model, self.person_class, self.score = model, person_class, score
        self.threshold, self.nms_iou, self.input_size = threshold, nms_iou, input_size

    def _raw(self, images: torch.Tensor) -> torch.Tensor:
        out = self.model(images)
        if isinstance(out, list | tuple):  # (inference output, feature maps) in eval mode
            out = out[0]
        if not isinstance(out, torch.Tensor) or out.dim() != 3:
            raise DetectorError(
                "the YOLO module must return a [B, N, 5 + C] (v5) or [B, 4 + C, N] (v8/11) "
                f"tensor, got {type(out).__name__} {getattr(out, 'shape', '')}"
            )
        return out

    def candidates(self, images: torch.Tensor) -> list[Detections]:
        check_images(images)
        raw = self._raw(images)
        v5 = raw.shape[2] < raw.shape[1]  # [B, N, 5 + C]: anchors outnumber channels
        if v5:
            box, obj, cls = raw[..., :4], _prob(raw[..., 4]), _prob(raw[..., 5:])
        else:
            raw = raw.transpose(1, 2)
            box, obj, cls = raw[..., :4], None, _prob(raw[..., 4:])
        if self.person_class >= cls.shape[-1]:
            raise DetectorError(
                f"person class {self.person_class} but the model has {cls.shape[-1]} classes"
            )
        person = cls[..., self.person_class]
        if obj is None or self.score == "cls":
            s = person
        elif self.score == "obj":
            s = obj
        else:
            s = obj * person
        xyxy = torch.cat([box[..., :2] - box[..., 2:] / 2, box[..., :2] + box[..., 2:] / 2], -1)
        return [Detections(b, sc) for b, sc in zip(xyxy, s, strict=True)]


class FasterRCNNAdapter(PersonDetector):
    """Person detections of a torchvision-style detector (COCO person label 1 by default).  Its
    own post-processing (score threshold, NMS) runs first; set its ``box_score_thresh`` low for
    attacks so scores stay visible as they fall."""

    name = "faster-rcnn"

    def __init__(self, model: nn.Module, person_label: int = 1, threshold: float = 0.5) -> None:
        super().__init__()
        self.model, self.person_label, self.threshold = model, person_label, threshold

    def candidates(self, images: torch.Tensor) -> list[Detections]:
        check_images(images)
        out = self.model(list(images))
        if not isinstance(out, list) or not all(isinstance(o, dict) for o in out):
            raise DetectorError(
                "a Faster R-CNN-style module returns a list of dicts with boxes, labels and "
                f"scores, got {type(out).__name__}"
            )
        dets = []
        for o in out:
            missing = {"boxes", "labels", "scores"} - set(o)
            if missing:
                raise DetectorError(f"detector output lacks {sorted(missing)}")
            keep = o["labels"] == self.person_label
            dets.append(Detections(o["boxes"][keep], o["scores"][keep]))
        return dets

    def merge(self, det: Detections) -> Detections:
        return det  # the model's own post-processing has merged them


def load_detector(
    path: str | Path, kind: str, trust_pickle: bool = False, **settings
) -> PersonDetector:
    """A user's detector from disk, wrapped: ``kind`` is ``"yolo"`` or ``"faster-rcnn"``."""
    path = Path(path)
    if kind not in ("yolo", "faster-rcnn"):
        raise DetectorError(f"kind must be 'yolo' or 'faster-rcnn', got {kind!r}")
    if not path.is_file():
        raise DetectorError(f"detector file {path} not found")
    model = None
    with contextlib.suppress(RuntimeError, ValueError):  # not TorchScript: maybe a pickle
        model = torch.jit.load(str(path), map_location="cpu")
    if model is None:
        if not trust_pickle:
            raise DetectorError(
                f"{path} is not a TorchScript archive; a pickled module runs code when loaded, so "
                "it loads only with trust_pickle=True (CLI: --trust-pickle) for files you trust"
            )
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=False)
        except Exception as err:
            raise DetectorError(f"cannot load {path}: {err}") from None
        # Ultralytics checkpoints hold the module under "model" (or "ema")
        model = obj
        if isinstance(obj, dict):
            model = obj.get("ema") if obj.get("ema") is not None else obj.get("model")
    if not isinstance(model, nn.Module):
        raise DetectorError(f"{path} holds a {type(model).__name__}, not a detector module")
    model = model.float().eval()
    return (YOLOAdapter if kind == "yolo" else FasterRCNNAdapter)(model, **settings)
