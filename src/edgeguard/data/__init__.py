"""Datasets: synthetic moving-shape videos, UCF101/HMDB51 folders, digits, CIFAR folders, and concept
segmentation sets for network dissection (synthetic shapes/colours/textures, Broden folders).

``get_dataset(name, train=..., **options)`` gives the datasets the CLI knows by name.
"""

from __future__ import annotations

from typing import Any

from torch.utils.data import Dataset

from ..errors import ConfigError
from ..registry import construct
from .concepts import Broden, SyntheticConcepts
from .errors import DatasetError
from .images import UnlabeledImages
from .video import SyntheticMovingShapes, VideoClipDataset, hmdb51, read_frames, ucf101
from .vision import CIFAR, cifar10, cifar100, digits

DATASETS = (
    "synthetic-video",
    "synthetic-concepts",
    "ucf101",
    "hmdb51",
    "digits",
    "cifar10",
    "cifar100",
)


def get_dataset(name: str, train: bool = True, root: str | None = None, **options: Any) -> Dataset:
    """Build a dataset by name (one of ``DATASETS``).  Folder datasets need ``root``.  For
    ``synthetic-video`` the training and test sets use different seeds (``seed`` and ``seed + 1``)."""
    if name in ("synthetic-video", "synthetic-concepts"):
        concepts = name == "synthetic-concepts"  # 4 shapes to classify; items (image, shape index)
        seed = int(options.pop("seed", 0))
        n = options.pop("num_samples", 2000 if train else 500 if concepts else 600)
        cls = SyntheticConcepts if concepts else SyntheticMovingShapes
        seed = 2 * seed + (0 if train else 1)
        ds = construct(
            cls, name, "dataset", ConfigError, int(n) if concepts else n, seed=seed, **options
        )
        return ds.classification() if concepts else ds
    if name == "digits":
        return construct(digits, name, "dataset", ConfigError, train=train, **options)
    if name in ("ucf101", "hmdb51", "cifar10", "cifar100"):
        if root is None:
            raise DatasetError(
                f"dataset {name!r} is read from a local folder: pass root=/data/path"
            )
        fn = {"ucf101": ucf101, "hmdb51": hmdb51, "cifar10": cifar10, "cifar100": cifar100}[name]
        return construct(fn, name, "dataset", ConfigError, root, train=train, **options)
    raise ConfigError(f"unknown dataset {name!r}; available: {', '.join(DATASETS)}")


__all__ = [
    "CIFAR",
    "DATASETS",
    "Broden",
    "DatasetError",
    "SyntheticConcepts",
    "SyntheticMovingShapes",
    "UnlabeledImages",
    "VideoClipDataset",
    "cifar10",
    "cifar100",
    "digits",
    "get_dataset",
    "hmdb51",
    "read_frames",
    "ucf101",
]
