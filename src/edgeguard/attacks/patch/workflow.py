"""The T-shirt study as one workflow: the CLI (``edgeguard tshirt``), the demo's section and
``benchmarks/tshirt_coco.py`` drive this class rather than each wiring the steps itself.

A :class:`TShirtStudy` holds one train / held-out split of a person-photo folder, in the form the
detectors need: whole photos where every usable person wears the patch (COCO detectors:
CenterNet, NanoDet; a person is matched at IoU 0.5), or person-normalised crops (the sliding-window
HOG detectors; IoU 0.3).  It trains white-box or zeroth-order patches on the training persons the
detectors find without a patch, and evaluates any patches against any detectors on the same
held-out draws.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

import torch

from ...models.detectors import PersonDetector, get_detector
from ...models.detectors.opencv import OpenCVHOGBlackBox
from ..base import AttackError
from .loss import person_scores
from .metrics import ASR
from .placement import PersonCrops
from .scenes import PersonScenes
from .study import (
    COCO_DETECTORS,
    CropSplit,
    SceneSplit,
    detection_examples,
    detector_checks,
    evaluate_patches,
    load_crops,
    load_scenes,
    only_detected,
    training_view,
)
from .transforms import EOT, ColorTransform
from .tshirt import AdversarialTShirt, TShirtConfig, TShirtResult
from .zo import ZOConfig, ZOTShirt

log = logging.getLogger(__name__)


def _base(spec: str) -> str:
    return spec.split(":")[0]


@dataclass
class TShirtStudy:
    """One split and the detectors used on it.  ``whole``: scenes (whole photos) rather than
    crops; ``iou``: the overlap at which a detection finds a person; ``detectors``: loaded
    detectors by spec (filled on first use)."""

    split: CropSplit | SceneSplit
    whole: bool
    iou: float
    trust_pickle: bool = False
    detectors: dict[str, PersonDetector] = field(default_factory=dict)
    _attackable: dict[tuple[str, ...], PersonCrops | PersonScenes] = field(
        default_factory=dict, repr=False
    )

    @classmethod
    def open(
        cls,
        root: str | Path,
        specs: Sequence[str],
        sources: list[str] | None = None,
        held_out: float = 0.3,
        seed: int = 0,
        scale: float = 1.0,
        limit: int | None = None,
        shape: str = "torso",
        fold: tuple[int, int] | None = None,
        trust_pickle: bool = False,
        loaded: Mapping[str, PersonDetector] | None = None,
    ) -> TShirtStudy:
        """The split of ``root`` (manifest.csv + images/) for the detectors ``specs`` (training and
        evaluation ones): whole photos when any of them is a COCO detector, crops otherwise.
        ``held_out``: share of photos held out; ``fold`` ``(i, k)``: fold ``i`` of ``k`` instead;
        ``loaded``: detectors already built, by spec (reused, not reloaded)."""
        whole = any(_base(s) in COCO_DETECTORS for s in specs)
        load = load_scenes if whole else load_crops
        split = load(root, sources, held_out, seed, scale, limit, shape, fold)
        return cls(split, whole, 0.5 if whole else 0.3, trust_pickle, dict(loaded or {}))

    @property
    def train_set(self) -> PersonCrops | PersonScenes:
        return self.split.train

    @property
    def test_set(self) -> PersonCrops | PersonScenes:
        return self.split.test

    def describe(self) -> str:
        """One line: what was loaded and what was skipped."""
        tr, te = self.split.train, self.split.test
        if self.whole:
            return (
                f"whole photos: {len(tr)} train photos ({tr.persons} wearers), {len(te)} held-out "
                f"photos ({te.persons} wearers); skipped {self.split.skipped}"
            )
        a, b = self.split.photos
        return (
            f"persons: {len(tr)} train crops from {a} photos, {len(te)} held-out crops from {b} "
            f"photos; skipped {self.split.skipped}"
        )

    def detector(self, spec: str) -> PersonDetector:
        """The detector of ``spec`` (a registry name or ``name:PATH``), loaded once."""
        if spec not in self.detectors:
            self.detectors[spec] = get_detector(spec, self.trust_pickle)
        return self.detectors[spec]

    def config(self, **change) -> TShirtConfig:
        """The trainer's configuration for this split: whole photos match at IoU 0.5 and score the
        best overlapping candidate (``topk`` 1); crops at 0.3 and the best 3 (HOG groups 3
        windows); ``change`` overrides any field."""
        base = TShirtConfig(iou=self.iou, topk=1 if self.whole else 3)
        return replace(base, **change)

    def attackable(self, specs: Sequence[str]) -> PersonCrops | PersonScenes:
        """The training items (crops, or photos with a wearer) every detector in ``specs`` finds
        without a patch: the ones worth attacking.  ``"opencv"`` is OpenCV's own HOG."""
        if tuple(specs) in self._attackable:
            return self._attackable[tuple(specs)]
        # the views the trainer attacks (HOG: fewer pyramid levels)
        views = {s: training_view(d) for s, d in self._loaded(specs).items()}
        checks = detector_checks(list(specs), self.trust_pickle, self.iou, views)
        items = self.split.train
        for spec in specs:
            items = only_detected(checks[spec], items)
        if len(items) == 0:
            raise AttackError(
                f"no training person is detected by {', '.join(specs)} without a patch: nothing "
                "to attack"
            )
        self._attackable[tuple(specs)] = items
        return items

    def train(
        self, specs: Sequence[str], config: TShirtConfig | None = None, log_every: int = 25
    ) -> TShirtResult:
        """A white-box patch against the detectors ``specs`` (min-max or average weights over
        several, as ``config.weighting`` says) on :meth:`attackable` training items."""
        if not specs:
            raise AttackError("train needs at least one detector")
        cfg = config or self.config()
        items = self.attackable(specs)
        log.info("t-shirt: training on %d items %s detect", len(items), "+".join(specs))
        dets = [training_view(self.detector(s)) for s in specs]
        return AdversarialTShirt(dets, cfg).train(items, log_every=log_every)

    def train_zo(
        self, spec: str, config: ZOConfig | None = None, snapshots: Sequence[int] = ()
    ) -> TShirtResult:
        """A zeroth-order patch against one detector's outputs only (no gradients): its person
        scores, or for ``"opencv"`` OpenCV's own HOG through ``detectMultiScale``.  ``snapshots``:
        query counts at which to keep the patch (ASR-against-queries curves)."""
        if spec == "opencv":
            score = partial(OpenCVHOGBlackBox().scores, iou=self.iou)
        else:
            det = self.detector(spec)

            def score(images: torch.Tensor, boxes) -> torch.Tensor:
                with torch.no_grad():
                    return person_scores(det, images, boxes, self.iou, kappa=1.0)

        items = self.attackable([spec])
        return ZOTShirt(score, config or ZOConfig()).train(items, snapshots=snapshots)

    def evaluate(
        self,
        patches: Mapping[str, torch.Tensor],
        specs: Sequence[str],
        eot: EOT,
        samples: int = 4,
        color: ColorTransform | None = None,
        on: str = "test",
    ) -> dict[tuple[str, str], ASR]:
        """ASR (with person-level bootstrap intervals) of every patch against every detector in
        ``specs`` on the same draws: ``samples`` per wearer under ``eot`` and ``color``, on the
        held-out wearers (``on="test"``) or on the training ones (``"train"``: what the patch was
        fitted to, to tell an objective that fails from one that does not generalise)."""
        if on not in ("test", "train"):
            raise AttackError(f"evaluate on 'test' or 'train' wearers, got {on!r}")
        items = self.split.test if on == "test" else self.split.train
        checks = detector_checks(list(specs), self.trust_pickle, self.iou, self._loaded(specs))
        return evaluate_patches(patches, checks, items, eot, samples, color=color)

    def examples(self, spec: str, patch: torch.Tensor, eot: EOT, path: Path, n: int = 6) -> Path:
        """PNG of ``n`` held-out items without / with the patch and the detector's boxes."""
        return detection_examples(
            self.detector(spec), self.split.test, patch, eot, path, n=n, iou=self.iou
        )

    def _loaded(self, specs: Sequence[str]) -> dict[str, PersonDetector]:
        return {s: self.detector(s) for s in specs if s != "opencv"}
