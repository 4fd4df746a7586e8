"""Concept-segmentation datasets for network dissection.

A concept dataset has ``concepts`` (C names), ``concept_category`` (C category indices into
``categories``) and items ``(image, labels, has_category)``:

- ``image``: ``[3, H, W]`` float in [0, 1];
- ``labels``: ``[L, h, w]`` int64 label maps, ``c + 1`` where concept ``c`` is present and 0 elsewhere
  (several maps because concepts of different categories overlap; image-level concepts, like Broden's
  scenes and textures, fill a whole map);
- ``has_category``: ``[G]`` bool, whether the image is annotated for each category (IoUs of a concept
  only count images annotated for its category, as in Bau et al. 2017).

Two implementations: :class:`SyntheticConcepts` (shapes x colours x textures, generated) and
:class:`Broden` (the Broden dataset's standard layout, for users who have it).  They are used by
:func:`edgeguard.explain.dissect`.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

from .errors import DatasetError

SHAPES = ("circle", "square", "triangle", "cross")
COLOURS = {
    "red": (0.9, 0.1, 0.1),
    "green": (0.1, 0.8, 0.1),
    "blue": (0.15, 0.2, 0.95),
    "yellow": (0.95, 0.9, 0.1),
}
TEXTURES = ("solid", "stripes", "checker")


def _shape_mask(kind: str, dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
    if kind == "circle":
        return dx**2 + dy**2 <= r**2
    if kind == "square":
        return (np.abs(dx) <= 0.8 * r) & (np.abs(dy) <= 0.8 * r)
    if kind == "triangle":  # apex up, base at the bottom
        return (dy <= 0.8 * r) & (np.abs(dx) <= 0.62 * (dy + r))
    arm = r / 3  # cross
    return ((np.abs(dx) <= arm) & (np.abs(dy) <= r)) | ((np.abs(dy) <= arm) & (np.abs(dx) <= r))


class SyntheticConcepts(Dataset):
    """Images of one object (4 shapes x 4 colours x 3 textures, random size and place) on grey noise,
    with pixel-exact concept maps for shape, colour and texture.

    Args:
        n: number of images; size: image side in pixels (>= 16); seed: the generator seed.
    Items follow the concept-dataset protocol (module docstring); ``targets`` (``[n]``, the shape
    index) makes it a 4-class classification task via :meth:`classification`.
    """

    categories = ("shape", "colour", "texture")

    def __init__(self, n: int = 1000, size: int = 32, seed: int = 0) -> None:
        if not isinstance(n, int) or n < 1:
            raise DatasetError(f"n must be a positive integer, got {n!r}")
        if not isinstance(size, int) or size < 16:
            raise DatasetError(f"size must be an integer >= 16, got {size!r}")
        self.concepts = [*SHAPES, *COLOURS, *TEXTURES]
        self.concept_category = [0] * len(SHAPES) + [1] * len(COLOURS) + [2] * len(TEXTURES)
        rng = np.random.default_rng(seed)
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
        images = np.empty((n, 3, size, size), np.float32)
        labels = np.zeros((n, 3, size, size), np.int64)
        targets = np.empty(n, np.int64)
        colour_names = list(COLOURS)
        for i in range(n):
            grey = rng.uniform(0.3, 0.7) + rng.normal(0, 0.05, (size, size))
            img = np.repeat(grey[None], 3, 0)
            s, c, t = rng.integers(len(SHAPES)), rng.integers(len(COLOURS)), rng.integers(3)
            r = rng.uniform(0.16, 0.3) * size
            cx, cy = rng.uniform(r, size - r, 2)
            mask = _shape_mask(SHAPES[s], xx - cx, yy - cy, r)
            rgb = np.array(COLOURS[colour_names[c]], np.float32) * rng.uniform(0.85, 1.0)
            period = max(2, size // 12)
            if TEXTURES[t] == "stripes":
                dark = ((xx + yy) // period) % 2 == 1
            elif TEXTURES[t] == "checker":
                dark = ((xx // period) + (yy // period)) % 2 == 1
            else:
                dark = np.zeros_like(mask)
            shade = np.where(dark, 0.45, 1.0)
            for ch in range(3):
                img[ch][mask] = (rgb[ch] * shade)[mask]
            images[i] = img
            labels[i, 0][mask] = 1 + s
            labels[i, 1][mask] = 1 + len(SHAPES) + c
            labels[i, 2][mask] = 1 + len(SHAPES) + len(COLOURS) + t
            targets[i] = s
        self.images = torch.from_numpy(images).clamp_(0, 1)
        self.labels = torch.from_numpy(labels)
        self.targets = torch.from_numpy(targets)
        self.classes = list(SHAPES)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.images[i], self.labels[i], torch.ones(3, dtype=torch.bool)

    def classification(self) -> TensorDataset:
        """``(image, shape index)`` pairs: a 4-class task to train a CNN that is then dissected."""
        ds = TensorDataset(self.images, self.targets)
        ds.classes, ds.num_classes = self.classes, len(self.classes)
        return ds


BRODEN_LAYOUT = """expected Broden layout (NetDissect's broden1_227 / broden1_224):
  ROOT/index.csv   image,split,ih,iw,sh,sw,color,object,part,material,scene,texture
  ROOT/label.csv   number,name,category,frequency,coverage,syns
  ROOT/images/...  the images and the segmentation PNGs that index.csv names
  pixel categories (color, object, part, material): ';'-separated PNG paths, label = R + 256 * G
  image categories (scene, texture): ';'-separated label numbers"""

PIXEL_CATEGORIES = ("color", "object", "part", "material")
IMAGE_CATEGORIES = ("scene", "texture")


class Broden(Dataset):
    """The Broden concept dataset (Bau et al. 2017) read from its standard layout.

    Args:
        root: the folder with ``index.csv``, ``label.csv`` and ``images/``.
        categories: which categories to use (default: all six).
        split: ``"train"``/``"val"`` rows of index.csv only (default: all rows).
        limit: read only the first ``limit`` rows (quick runs).
    Items follow the concept-dataset protocol; images are resized to nothing (Broden's are all the
    same size), so a dataset of mixed sizes is reported as an error by :func:`dissect`.
    """

    def __init__(
        self, root: str | Path, categories=None, split: str | None = None, limit: int | None = None
    ) -> None:
        self.root = Path(root)
        for f in ("index.csv", "label.csv"):
            if not (self.root / f).is_file():
                raise DatasetError(f"missing {self.root / f}\n{BRODEN_LAYOUT}")
        self.categories = tuple(categories or (*PIXEL_CATEGORIES, *IMAGE_CATEGORIES))
        unknown = set(self.categories) - set(PIXEL_CATEGORIES) - set(IMAGE_CATEGORIES)
        if unknown:
            raise DatasetError(f"unknown Broden categories {sorted(unknown)}")
        numbers, self.concepts, self.concept_category = {}, [], []
        with open(self.root / "label.csv", newline="") as fh:
            for row in csv.DictReader(fh):
                try:
                    number = int(row["number"])
                except (KeyError, ValueError):
                    raise DatasetError(f"label.csv: bad row {row}\n{BRODEN_LAYOUT}") from None
                cat = _main_category(row.get("category", ""))
                if number == 0 or cat not in self.categories:
                    continue
                numbers[number] = len(self.concepts) + 1
                self.concepts.append(row["name"])
                self.concept_category.append(self.categories.index(cat))
        self._lut = np.zeros(max(numbers, default=0) + 1, np.int64)
        for number, cid in numbers.items():
            self._lut[number] = cid
        with open(self.root / "index.csv", newline="") as fh:
            rows = [r for r in csv.DictReader(fh) if split is None or r.get("split") == split]
        if not rows or "image" not in rows[0]:
            raise DatasetError(f"{self.root / 'index.csv'} lists no images\n{BRODEN_LAYOUT}")
        self.rows = rows[:limit] if limit else rows

    def __len__(self) -> int:
        return len(self.rows)

    def _read(self, rel: str, flags: int) -> np.ndarray:
        import cv2

        path = self.root / "images" / rel
        img = cv2.imread(str(path), flags)
        if img is None:
            raise DatasetError(f"cannot read {path}\n{BRODEN_LAYOUT}")
        return img

    def _lookup(self, numbers: np.ndarray) -> np.ndarray:
        numbers = np.where(numbers < len(self._lut), numbers, 0)
        return self._lut[numbers]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        import cv2

        row = self.rows[i]
        bgr = self._read(row["image"], cv2.IMREAD_COLOR)
        image = torch.from_numpy(bgr[:, :, ::-1].copy()).permute(2, 0, 1).float() / 255
        sh, sw = int(row.get("sh") or bgr.shape[0]), int(row.get("sw") or bgr.shape[1])
        maps, has = [], torch.zeros(len(self.categories), dtype=torch.bool)
        for g, cat in enumerate(self.categories):
            cell = (row.get(cat) or "").strip()
            if not cell:
                continue
            has[g] = True
            for item in cell.split(";"):
                if cat in PIXEL_CATEGORIES:
                    seg = self._read(item, cv2.IMREAD_COLOR).astype(np.int64)
                    if seg.shape[:2] != (sh, sw):
                        raise DatasetError(
                            f"{item}: segmentation is {seg.shape[0]}x{seg.shape[1]}, index.csv "
                            f"says {sh}x{sw}"
                        )
                    maps.append(self._lookup(seg[:, :, 2] + 256 * seg[:, :, 1]))
                else:
                    maps.append(np.full((sh, sw), self._lookup(np.array(int(item))), np.int64))
        labels = np.stack(maps) if maps else np.zeros((1, sh, sw), np.int64)
        return image, torch.from_numpy(labels), has


def _main_category(field: str) -> str:
    """``"object(120);part(3)"`` -> ``"object"`` (the category with the largest count)."""
    best, count = "", -1
    for part in field.split(";"):
        name, _, rest = part.partition("(")
        n = int(rest.rstrip(")") or 0) if rest.rstrip(")").isdigit() else 0
        if n > count:
            best, count = name.strip(), n
    return best
