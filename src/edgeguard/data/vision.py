"""Image datasets: scikit-learn's digits (built in) and CIFAR-10/100 from the standard python batches.
Items are ``(image, label)`` with ``image`` a float tensor ``[C, H, W]`` in [0, 1]."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

from ..errors import ConfigError
from .errors import DatasetError
from .safe_pickle import restricted_load


def digits(
    train: bool = True, upsample: int = 1, test_fraction: float = 0.25, seed: int = 0
) -> TensorDataset:
    """scikit-learn's 1,797 real 8x8 handwritten digits, split into train/test (stratified, fixed seed).

    Args:
        train: the training part (True) or the held-out part.
        upsample: integer factor (1 keeps 8x8; 2 gives 16x16, bilinear).
        test_fraction: share of images held out, in (0, 1).
    Returns a ``TensorDataset`` of ``[N, 1, 8*upsample, 8*upsample]`` floats in [0, 1] and int labels,
    with ``.classes`` (the 10 digit names) and ``.num_classes``.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if not isinstance(upsample, int) or upsample < 1:
        raise ConfigError(f"upsample must be an integer >= 1, got {upsample!r}")
    if not 0 < test_fraction < 1:
        raise ConfigError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    data = load_digits()
    x = data.images.astype(np.float32) / 16.0
    y = data.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=test_fraction, random_state=seed, stratify=y
    )
    xs, ys = (x_tr, y_tr) if train else (x_te, y_te)
    images = torch.from_numpy(xs).unsqueeze(1)
    if upsample > 1:
        images = torch.nn.functional.interpolate(
            images, scale_factor=upsample, mode="bilinear", align_corners=False
        ).clamp(0, 1)
    ds = TensorDataset(images, torch.from_numpy(ys))
    ds.classes = [str(i) for i in range(10)]
    ds.num_classes = 10
    return ds


CIFAR_LAYOUT = """expected CIFAR layout (the 'python version' from the CIFAR page, extracted):
  CIFAR-10:  ROOT/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}
  CIFAR-100: ROOT/cifar-100-python/{train, test, meta}
  (ROOT may also be the batches folder itself)"""


def _load_batch(path: Path) -> dict:
    if not path.is_file():
        raise DatasetError(f"missing CIFAR file {path}\n{CIFAR_LAYOUT}")
    try:
        obj = restricted_load(path)
    except DatasetError as err:
        raise DatasetError(f"not a valid CIFAR python batch: {err}\n{CIFAR_LAYOUT}") from None
    if not isinstance(obj, dict) or "data" not in obj:
        raise DatasetError(f"{path} has no 'data' entry\n{CIFAR_LAYOUT}")
    return obj


class CIFAR(Dataset):
    """CIFAR-10 or CIFAR-100 kept as uint8 in memory; items are ``[3, 32, 32]`` floats in [0, 1].
    With ``augment`` (training): 4-pixel padded random crop and random horizontal flip."""

    def __init__(
        self, root: str | Path, name: str = "cifar10", train: bool = True, augment: bool = False
    ):
        if name not in ("cifar10", "cifar100"):
            raise ConfigError(f"name must be 'cifar10' or 'cifar100', got {name!r}")
        root = Path(root)
        folder = "cifar-10-batches-py" if name == "cifar10" else "cifar-100-python"
        base = root / folder if (root / folder).is_dir() else root
        if not base.is_dir():
            raise DatasetError(f"CIFAR folder not found: {root}\n{CIFAR_LAYOUT}")
        if name == "cifar10":
            files = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
            label_key, meta, names_key = "labels", "batches.meta", "label_names"
        else:
            files = ["train" if train else "test"]
            label_key, meta, names_key = "fine_labels", "meta", "fine_label_names"
        data, labels = [], []
        for f in files:
            batch = _load_batch(base / f)
            if label_key not in batch:
                raise DatasetError(f"{base / f} has no {label_key!r} entry\n{CIFAR_LAYOUT}")
            arr = np.asarray(batch["data"], dtype=np.uint8)
            if arr.ndim != 2 or arr.shape[1] != 3072:
                raise DatasetError(f"{base / f}: data must be N x 3072 uint8, got {arr.shape}")
            data.append(arr.reshape(-1, 3, 32, 32))
            labels.extend(int(v) for v in batch[label_key])
        self.data = torch.from_numpy(np.concatenate(data))
        self.labels = torch.tensor(labels, dtype=torch.int64)
        n_cls = 10 if name == "cifar10" else 100
        meta_path = base / meta
        self.classes = (
            list(_load_batch_meta(meta_path, names_key))
            if meta_path.is_file()
            else [str(i) for i in range(n_cls)]
        )
        self.num_classes = n_cls
        self.augment = augment

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        img = self.data[index].float() / 255.0
        if self.augment:
            img = torch.nn.functional.pad(img, (4, 4, 4, 4), mode="reflect")
            y, x = torch.randint(0, 9, (2,)).tolist()
            img = img[:, y : y + 32, x : x + 32]
            if torch.rand(()) < 0.5:
                img = img.flip(2)
        return img, int(self.labels[index])


def _load_batch_meta(path: Path, key: str) -> list[str]:
    try:
        obj = restricted_load(path)
        return [str(n) for n in obj[key]]
    except Exception as err:  # metadata is optional: fall back to numeric names
        raise DatasetError(f"{path}: cannot read class names ({err})") from None


def cifar10(root: str | Path, train: bool = True, augment: bool = False) -> CIFAR:
    return CIFAR(root, "cifar10", train, augment)


def cifar100(root: str | Path, train: bool = True, augment: bool = False) -> CIFAR:
    return CIFAR(root, "cifar100", train, augment)
