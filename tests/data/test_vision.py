from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from edgeguard.data import DatasetError, cifar10, cifar100, digits


def test_digits_split_and_range():
    train, test = digits(train=True), digits(train=False)
    assert len(train) + len(test) == 1797
    assert abs(len(test) / 1797 - 0.25) < 0.01
    x, _y = train[0]
    assert x.shape == (1, 8, 8) and float(x.min()) >= 0 and float(x.max()) <= 1
    big = digits(train=True, upsample=2)
    assert big[0][0].shape == (1, 16, 16)
    # splits are disjoint: no test image appears among the training images
    tr = {t.numpy().tobytes() for t in train.tensors[0]}
    assert (
        sum(t.numpy().tobytes() in tr for t in test.tensors[0]) < 5
    )  # digits has a few duplicates
    with pytest.raises(ValueError, match="upsample"):
        digits(upsample=0)


def _write_cifar10(root: Path, n: int = 6) -> None:
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]:
        batch = {
            "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            "labels": list(rng.integers(0, 10, n)),
        }
        (base / name).write_bytes(pickle.dumps(batch))
    (base / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}))


def test_cifar10_reads_python_batches(tmp_path: Path):
    _write_cifar10(tmp_path)
    train = cifar10(tmp_path, train=True)
    test = cifar10(tmp_path / "cifar-10-batches-py", train=False)
    assert len(train) == 30 and len(test) == 6 and train.classes[3] == "c3"
    x, y = train[0]
    raw = pickle.loads((tmp_path / "cifar-10-batches-py/data_batch_1").read_bytes())
    expected = torch.from_numpy(raw["data"][0].reshape(3, 32, 32)).float() / 255
    assert torch.equal(x, expected) and y == int(raw["labels"][0])
    aug = cifar10(tmp_path, augment=True)[0][0]
    assert aug.shape == (3, 32, 32)


def test_cifar_errors(tmp_path: Path):
    with pytest.raises(DatasetError, match="expected CIFAR layout"):
        cifar100(tmp_path / "missing")
    _write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py/data_batch_3").write_bytes(b"\x80\x04garbage")
    with pytest.raises(DatasetError, match="not a valid CIFAR python batch"):
        cifar10(tmp_path)


def test_cifar_refuses_pickled_code(tmp_path: Path):
    _write_cifar10(tmp_path)

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    (tmp_path / "cifar-10-batches-py/test_batch").write_bytes(pickle.dumps({"data": Evil()}))
    with pytest.raises(DatasetError, match="refusing to unpickle"):
        cifar10(tmp_path, train=False)
