"""Attack success of a patch: persons hidden among those the detector finds without it, with
bootstrap intervals by person and pooling over folds."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..base import AttackError
from .loss import Boxes
from .placement import PersonCrops
from .scenes import PersonScenes
from .transforms import EOT, ColorTransform


@dataclass
class ASR:
    """Attack success rate over (person, transformation) samples of persons the detector finds
    without the patch: ``rate = hidden / attacked``; ``per_person``: ``[P]`` hidden samples of each
    attacked person (out of ``attacked / P``), for :meth:`interval`."""

    attacked: int
    hidden: int
    clean_detected: int
    persons: int
    per_person: torch.Tensor | None = None

    @property
    def rate(self) -> float:
        return self.hidden / self.attacked if self.attacked else math.nan

    @classmethod
    def pooled(cls, parts: Sequence[ASR]) -> ASR:
        """One ASR over disjoint sets of persons, e.g. the held-out folds of a cross-validation
        (each person attacked by the patch of the fold that held it out)."""
        if not parts:
            raise AttackError("nothing to pool")
        pp = [a.per_person for a in parts]
        per_person = None if any(p is None for p in pp) else torch.cat(pp)
        return cls(
            sum(a.attacked for a in parts),
            sum(a.hidden for a in parts),
            sum(a.clean_detected for a in parts),
            sum(a.persons for a in parts),
            per_person,
        )

    @classmethod
    def repeated(cls, runs: Sequence[ASR]) -> ASR:
        """One ASR over the *same* persons attacked by several patches (training runs of one
        configuration, e.g. seeds): per-person counts add up, so the bootstrap of
        :meth:`interval` still resamples persons, each with all runs' transformations."""
        if not runs:
            raise AttackError("nothing to combine")
        first = runs[0]
        same = all(
            (a.clean_detected, a.persons) == (first.clean_detected, first.persons)
            and (a.per_person is None) == (first.per_person is None)
            and (a.per_person is None or a.per_person.shape == first.per_person.shape)
            for a in runs
        )
        if not same:
            raise AttackError("repeated runs must attack the same persons (counts differ)")
        per_person = None if first.per_person is None else sum(a.per_person for a in runs)
        return cls(
            sum(a.attacked for a in runs),
            sum(a.hidden for a in runs),
            first.clean_detected,
            first.persons,
            per_person,
        )

    def interval(
        self, level: float = 0.95, draws: int = 2000, seed: int = 0
    ) -> tuple[float, float]:
        """Percentile bootstrap interval of :attr:`rate` that resamples *persons* (with all their
        transformations): samples of one person are correlated (a hard person stays hard), so a
        binomial interval over samples would be too narrow.  ``(nan, nan)`` without per-person
        counts or persons."""
        _check_level(level)
        pp = self.per_person
        if pp is None:
            return math.nan, math.nan
        return _person_bootstrap(pp.double(), self.attacked, level, draws, seed)

    def lead(
        self, other: ASR, level: float = 0.95, draws: int = 2000, seed: int = 0
    ) -> tuple[float, float, float]:
        """How far this patch's rate lies above ``other``'s on the *same* persons and draws (two
        patches evaluated on one split): ``(difference, lo, hi)``, the percentile bootstrap
        interval resampling persons for both at once (paired: a hard person is hard for both,
        which an interval from the two separate intervals would ignore)."""
        _check_level(level)
        a, b = self.per_person, other.per_person
        if (
            a is None
            or b is None
            or a.shape != b.shape
            or (self.attacked, self.persons) != (other.attacked, other.persons)
        ):
            raise AttackError(
                "a lead compares two patches on the same persons and draws: per-person counts "
                f"of equal length and attacked samples are needed, got {self.attacked} and "
                f"{other.attacked} samples"
            )
        lo, hi = _person_bootstrap(a.double() - b.double(), self.attacked, level, draws, seed)
        return self.rate - other.rate, lo, hi


def _check_level(level: float) -> None:
    if not 0 < level < 1:
        raise AttackError(f"level must be in (0, 1), got {level}")


def _person_bootstrap(
    per_person: torch.Tensor, attacked: int, level: float, draws: int, seed: int
) -> tuple[float, float]:
    """Percentile interval of ``per_person.sum() / attacked`` over ``draws`` resamples of the
    persons (``per_person [P]``: each person's hidden count, or a difference of two patches'),
    ``(nan, nan)`` without persons."""
    if len(per_person) == 0:
        return math.nan, math.nan
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(len(per_person), (draws, len(per_person)), generator=gen)
    rates = per_person[idx].sum(1) / attacked  # every resample has P persons
    lo, hi = torch.quantile(rates, torch.tensor([(1 - level) / 2, (1 + level) / 2]).double())
    return float(lo), float(hi)


def attack_success(
    is_detected: Callable[[torch.Tensor, Boxes], torch.Tensor],
    data: PersonCrops | PersonScenes,
    patch: torch.Tensor,
    eot: EOT | None = None,
    color: ColorTransform | None = None,
    samples: int = 4,
    seed: int = 1234,
    batch: int = 16,
) -> ASR:
    """ASR of ``patch`` on ``data`` (person crops, or whole-photo scenes where every wearer has the
    patch) under ``samples`` random transformations, for a detector given as
    ``is_detected(images, boxes) -> [P] bool`` per person.  Persons missed without the patch are
    left out (there is nothing to hide)."""
    clean, owner, keep = found_without_patch(is_detected, data, batch)
    target = data.subset(keep.nonzero().squeeze(1))
    target_clean = clean[keep[owner]]  # the kept items' persons, in order
    gen = torch.Generator().manual_seed(seed)
    hidden = []
    with torch.no_grad():
        for i in range(0, len(target), batch):
            part = target.subset(range(i, min(i + batch, len(target))))
            imgs, boxes = part.dress(patch, eot, color, samples, gen)
            seen = is_detected(imgs, boxes)
            # image-major: item j's samples in turn, each with item j's persons
            per_item = torch.split(seen, [int(c) * samples for c in person_counts(part)])
            hidden += [(~s).view(samples, -1).sum(0) for s in per_item]
    pp = torch.cat(hidden)[target_clean] if hidden else torch.zeros(0, dtype=torch.long)
    return ASR(len(pp) * samples, int(pp.sum()), int(clean.sum()), len(clean), pp)


def person_counts(data: PersonCrops | PersonScenes) -> torch.Tensor:
    """``[N]`` wearers per item (1 per crop)."""
    if isinstance(data, PersonCrops):
        return torch.ones(len(data), dtype=torch.long)
    return torch.tensor([len(b) for b in data.boxes], dtype=torch.long)


def found_without_patch(
    is_detected: Callable[[torch.Tensor, Boxes], torch.Tensor],
    data: PersonCrops | PersonScenes,
    batch: int = 16,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(``[P]`` bool: each person found without a patch; ``[P]`` the item (crop or scene) each
    person belongs to; ``[N]`` bool: items with at least one found person)."""
    clean = torch.cat([is_detected(*_part(data, i, batch)) for i in range(0, len(data), batch)])
    owner = torch.repeat_interleave(torch.arange(len(data)), person_counts(data))
    keep = torch.zeros(len(data), dtype=torch.bool).index_fill_(0, owner[clean], True)
    return clean, owner, keep


def _part(data, i: int, batch: int):
    part = data.subset(range(i, min(i + batch, len(data))))
    return part.images, part.boxes
