"""A pruning run killed at any point and resumed ends bit for bit where an uninterrupted run ends,
for every method: the pruner's auxiliary state (reweighting factors, Z, U, rho, thresholds) travels
in the checkpoints, and each stage starts from the same random state."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import edgeguard.engine.train as train_module
import edgeguard.prune.pipeline as pipeline_module
from edgeguard.data import digits
from edgeguard.engine import TrainConfig, fit, seed_everything
from edgeguard.models import build
from edgeguard.prune import get_pruner, run_pruning
from edgeguard.sparsity import SparsityError

SHAPE = (1, 1, 8, 8)
REG = TrainConfig(epochs=2, batch_size=64, lr=1e-3, optimizer="sgd", progress=False)
FT = TrainConfig(epochs=2, batch_size=64, lr=1e-3, progress=False)
OPTIONS = {
    "magnitude": {},
    "reweighted": {"lam": 1e-3},
    "admm": {"rho": 1e-2},
    "primal-proximal": {"rho": 1e-2},
    "gradual": {"ramp_epochs": 2},
    "gradual output-error": {"ramp_epochs": 2, "criterion": "output-error"},
}


class Killed(BaseException):
    """Stands for kill -9: nothing after it runs."""


@pytest.fixture(scope="module")
def dense():
    seed_everything(0)
    model = build("digits_cnn")
    fit(model, digits(True), None, TrainConfig(epochs=3, lr=3e-3, progress=False))
    return model


def _prune(dense, method: str, workdir: Path, resume: bool = False):
    return run_pruning(
        dense,
        get_pruner(method.split()[0], **OPTIONS[method]),
        digits(True),
        digits(False),
        SHAPE,
        flops_reduction=2.5,
        regularize=REG,
        finetune=FT,
        workdir=workdir,
        resume=resume,
        distill_weight=0.5,
    )


def _kill_after(monkeypatch, module, name: str, when) -> None:
    real = getattr(module, name)

    def wrapper(*args, **kwargs):
        out = real(*args, **kwargs)
        if when(*args):
            raise Killed
        return out

    monkeypatch.setattr(module, name, wrapper)


STAGES = {
    "regularize epoch 1": (
        train_module,
        "save_checkpoint",
        lambda state, path: "regularize" in str(path) and state["epoch"] == 1,
    ),
    "hard-pruned stage": (pipeline_module, "save_model", lambda *a: True),
    "fine-tune epoch 1": (
        train_module,
        "save_checkpoint",
        lambda state, path: "finetune" in str(path) and state["epoch"] == 1,
    ),
}


SLOW = (
    "reweighted",
    "primal-proximal",
)  # the other splitting pruner (admm) stays in the default run


@pytest.mark.parametrize(
    "method", [pytest.param(m, marks=pytest.mark.slow) if m in SLOW else m for m in OPTIONS]
)
def test_killed_anywhere_and_resumed_equals_uninterrupted(dense, tmp_path, monkeypatch, method):
    seed_everything(0)
    reference = _prune(dense, method, tmp_path / "full").model.state_dict()
    for stage, (module, name, when) in STAGES.items():
        if method == "magnitude" and stage.startswith("regularize"):
            continue  # magnitude pruning has no regularisation stage
        work = tmp_path / stage.replace(" ", "_")
        seed_everything(0)
        with monkeypatch.context() as m:
            _kill_after(m, module, name, when)
            with pytest.raises(Killed):
                _prune(dense, method, work)
        seed_everything(1234)  # a new process: other random state
        resumed = _prune(dense, method, work, resume=True).model.state_dict()
        for key, value in reference.items():
            assert torch.equal(resumed[key], value), f"{method}, killed after {stage}: {key}"


def test_resume_with_another_pruner_is_refused(dense, tmp_path):
    _prune(dense, "admm", tmp_path)
    with pytest.raises(SparsityError, match=r"another pruner \(method: stored 'admm', given "):
        _prune(dense, "reweighted", tmp_path, resume=True)
