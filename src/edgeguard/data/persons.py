"""Photographs of people with person boxes (the layout of ``../shared/data/persons``): ``manifest.csv``
with ``file,width,height,boxes`` (boxes ``x1 y1 x2 y2`` in pixels, ``;``-separated) and ``images/``.

Images without boxes are skipped and counted (an empty field means "not annotated", not "no
person"); boxes must lie inside their image.  The train / held-out split is by source (the file-name
prefix before the first underscore), with a fixed seed, so both parts hold every source."""

from __future__ import annotations

import csv
import random
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import EdgeguardError
from .images import read_rgb


class PersonDataError(EdgeguardError, ValueError):
    """A missing or malformed manifest, image or box."""


@dataclass
class PersonPhoto:
    """``image [3, H, W]`` uint8 RGB; ``boxes [K, 4]`` float (x1, y1, x2, y2) pixels."""

    name: str
    source: str
    image: torch.Tensor
    boxes: torch.Tensor

    def float_image(self) -> torch.Tensor:
        """``[3, H, W]`` float in [0, 1]."""
        return self.image.float() / 255


@dataclass
class PersonPhotos:
    photos: list[PersonPhoto]
    skipped: list[str] = field(default_factory=list)  # images without boxes

    def __len__(self) -> int:
        return len(self.photos)

    def __iter__(self):
        return iter(self.photos)

    @property
    def num_persons(self) -> int:
        return sum(len(p.boxes) for p in self.photos)

    def _shuffled_sources(self, seed: int) -> list[list[PersonPhoto]]:
        """Each source's photos (sources in name order), sorted by name then shuffled by a generator
        seeded by ``seed`` and the source name: one generator per source, so a source's order does
        not depend on which other sources are loaded."""
        by_source: dict[str, list[PersonPhoto]] = {}
        for p in self.photos:
            by_source.setdefault(p.source, []).append(p)
        out = []
        for src in sorted(by_source):
            items = sorted(by_source[src], key=lambda p: p.name)
            random.Random(f"{seed}:{src}").shuffle(items)
            out.append(items)
        return out

    def split(self, held_out: float = 0.3, seed: int = 0) -> tuple[PersonPhotos, PersonPhotos]:
        """(train, held-out): within each source, a shuffle seeded by ``seed`` and the source name
        puts ``held_out`` of the photos (at least one when the source has two or more) in the
        held-out part, the same whichever other sources are loaded."""
        if not 0 < held_out < 1:
            raise PersonDataError(f"held_out must be in (0, 1), got {held_out}")
        train, test = [], []
        for items in self._shuffled_sources(seed):
            k = round(len(items) * held_out)
            if len(items) >= 2:
                k = min(max(k, 1), len(items) - 1)
            test += items[:k]
            train += items[k:]
        return PersonPhotos(train), PersonPhotos(test)

    def folds(self, k: int, seed: int = 0) -> list[tuple[PersonPhotos, PersonPhotos]]:
        """``k`` (train, held-out) pairs for k-fold cross-validation: within each source the photos
        are shuffled as in :meth:`split` and dealt to the folds in turn, so every photo is held out
        exactly once and every fold holds about ``1/k`` of each source.  With little data this is
        how an attack's held-out success rate gets a usable confidence interval: every person is
        evaluated by a patch that never saw its photo."""
        if isinstance(k, bool) or not isinstance(k, int) or k < 2:
            raise PersonDataError(f"k must be an integer >= 2, got {k!r}")
        parts: list[list[PersonPhoto]] = [[] for _ in range(k)]
        for items in self._shuffled_sources(seed):
            for i, item in enumerate(items):
                parts[i % k].append(item)
        return [
            (
                PersonPhotos([p for j, part in enumerate(parts) if j != i for p in part]),
                PersonPhotos(parts[i]),
            )
            for i in range(k)
        ]

    def only(self, sources: list[str] | tuple[str, ...]) -> PersonPhotos:
        return PersonPhotos([p for p in self.photos if p.source in sources], self.skipped)


def parse_boxes(text: str, width: int, height: int, where: str) -> torch.Tensor:
    boxes = []
    for part in (b for b in text.split(";") if b.strip()):
        try:
            x1, y1, x2, y2 = (float(v) for v in part.split())
        except ValueError:
            raise PersonDataError(f"{where}: a box is 'x1 y1 x2 y2', got {part!r}") from None
        if not (0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height):
            raise PersonDataError(
                f"{where}: box {part!r} is empty or outside the {width}x{height} image"
            )
        boxes.append((x1, y1, x2, y2))
    return torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)


def load_persons(
    root: str | Path, sources: list[str] | None = None, limit: int | None = None
) -> PersonPhotos:
    """Read ``root/manifest.csv`` and its images (RGB).  ``sources`` keeps those file-name prefixes."""
    root = Path(root)
    manifest = root / "manifest.csv"
    if not manifest.is_file():
        raise PersonDataError(f"{manifest} is missing (expected manifest.csv and images/)")
    with open(manifest, newline="") as fh:
        reader = csv.DictReader(fh)
        rows = list(reader)
        header = reader.fieldnames or []
    need = {"file", "width", "height", "boxes"}
    if rows and not need <= set(rows[0]):
        raise PersonDataError(f"{manifest} lacks columns {sorted(need - set(rows[0]))}")
    photos, skipped = [], []
    for line, r in enumerate(rows, start=2):
        if any(r.get(k) is None for k in need) or None in r:
            given = sum(v is not None for k, v in r.items() if k is not None) + len(r.get(None, []))
            raise PersonDataError(
                f"{manifest} line {line}: expected the {len(header)} fields of "
                f"the header, got {given}"
            )
        if not r["file"] or Path(r["file"]).name != r["file"]:
            raise PersonDataError(
                f"{manifest} line {line}: 'file' must be a file name inside "
                f"images/, got {r['file']!r}"
            )
        try:
            declared = (int(r["width"]), int(r["height"]))
        except ValueError:
            raise PersonDataError(
                f"{manifest} line {line}: width and height must be integers, "
                f"got {r['width']!r}, {r['height']!r}"
            ) from None
        source = r["file"].split("_", 1)[0]
        if sources is not None and source not in sources:
            continue
        if not r["boxes"].strip():
            skipped.append(r["file"])
            continue
        path = root / "images" / r["file"]
        rgb = read_rgb(path)
        if rgb is None:
            raise PersonDataError(f"cannot read image {path}")
        h, w = rgb.shape[1:]
        if (w, h) != declared:
            raise PersonDataError(
                f"{r['file']}: manifest says {r['width']}x{r['height']}, the image is {w}x{h}"
            )
        boxes = parse_boxes(r["boxes"], w, h, r["file"])
        photos.append(PersonPhoto(r["file"], source, rgb, boxes))
        if limit is not None and len(photos) >= limit:
            break
    return PersonPhotos(photos, skipped)
