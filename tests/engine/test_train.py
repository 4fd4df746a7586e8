from __future__ import annotations

import math
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset

from edgeguard.data import digits
from edgeguard.engine import (
    CheckpointError,
    TrainConfig,
    evaluate,
    fit,
    load_checkpoint,
    save_checkpoint,
    seed_everything,
)
from edgeguard.errors import TrainingDiverged
from edgeguard.models import build
from edgeguard.sparsity import get_masks, prune_model

from .helpers import die_after_first_checkpoint

FAST = TrainConfig(epochs=2, batch_size=64, lr=3e-3, progress=False)


def test_digits_cnn_learns():
    seed_everything(0)
    model = build("digits_cnn")
    fit(
        model,
        digits(train=True),
        None,
        TrainConfig(epochs=12, batch_size=32, lr=3e-3, progress=False),
    )
    assert evaluate(model, digits(train=False))["accuracy"] > 0.9


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path: Path, monkeypatch):
    train = digits(train=True)
    seed_everything(0)
    full = build("digits_cnn")
    fit(full, train, None, FAST, checkpoint_dir=tmp_path / "full")

    seed_everything(0)
    die_after_first_checkpoint(
        monkeypatch,
        lambda: fit(build("digits_cnn"), train, None, FAST, checkpoint_dir=tmp_path / "p"),
    )
    # a fresh process would rebuild the model with other weights: resume must overwrite them
    seed_everything(123)
    resumed = build("digits_cnn")
    hist = fit(resumed, train, None, FAST, checkpoint_dir=tmp_path / "p", resume=True)
    assert [h["epoch"] for h in hist.epochs] == [1, 2]
    for a, b in zip(full.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.allclose(a, b, atol=1e-6)


def test_masks_stay_applied_through_training_and_resume(tmp_path: Path):
    seed_everything(0)
    model = build("digits_cnn")
    prune_model(model, "kgs", rates=0.5)
    masks = {k: v.clone() for k, v in get_masks(model).items()}
    fit(model, digits(train=True), None, FAST, checkpoint_dir=tmp_path)
    for name, mask in masks.items():
        w = dict(model.named_modules())[name].weight
        assert not w[~mask].any() and w[mask].abs().sum() > 0
    fresh = build("digits_cnn")
    fit(fresh, digits(train=True), None, FAST, checkpoint_dir=tmp_path, resume=True)
    assert set(get_masks(fresh)) == set(masks)
    for name, mask in masks.items():
        assert not dict(fresh.named_modules())[name].weight[~mask].any()


def test_resume_with_other_settings_is_refused_naming_them(tmp_path: Path):
    fit(build("digits_cnn"), digits(train=True), None, FAST, checkpoint_dir=tmp_path)
    longer = TrainConfig(**{**FAST.__dict__, "epochs": FAST.epochs + 1, "lr": 0.5})
    with pytest.raises(CheckpointError, match=r"other settings \(epochs: stored 2, given 3; lr: "):
        fit(
            build("digits_cnn"),
            digits(train=True),
            None,
            longer,
            checkpoint_dir=tmp_path,
            resume=True,
        )


def test_checkpoint_errors(tmp_path: Path):
    path = save_checkpoint({"format": "x", "t": torch.ones(3)}, tmp_path / "c.pt")
    assert torch.equal(load_checkpoint(path)["t"], torch.ones(3))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "none.pt")

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    evil = tmp_path / "evil.pt"
    torch.save({"x": Evil()}, evil)
    with pytest.raises(CheckpointError, match="refusing"):
        load_checkpoint(evil)
    assert pickle  # used by torch.save above


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda s: s.pop("optimizer"), "lacks optimizer"),
        (lambda s: s.update(epoch=-1), "epoch must be an integer >= 0, got -1"),
        (lambda s: s.update(epoch="1"), "epoch must be an integer >= 0"),
        (lambda s: s.update(torch_rng=torch.zeros(3)), "invalid random-number state"),
        (lambda s: s.pop("config"), "records no training settings"),
    ],
)
def test_damaged_checkpoints_are_refused_with_a_message(tmp_path: Path, change, match):
    fit(build("digits_cnn"), digits(train=True), None, FAST, checkpoint_dir=tmp_path)
    state = load_checkpoint(tmp_path / "last.pt")
    change(state)
    save_checkpoint(state, tmp_path / "last.pt")
    with pytest.raises(CheckpointError, match=match):
        fit(
            build("digits_cnn"),
            digits(train=True),
            None,
            FAST,
            checkpoint_dir=tmp_path,
            resume=True,
        )


def test_bad_config_values():
    for kwargs, match in [
        ({"epochs": 0}, "epochs"),
        ({"lr": -1.0}, "lr"),
        ({"optimizer": "rmsprop"}, "optimizer"),
        ({"batch_size": 0}, "batch_size"),
    ]:
        with pytest.raises(ValueError, match=match):
            fit(build("digits_cnn"), digits(), None, TrainConfig(**kwargs))


def test_amp_runs_on_cpu():
    seed_everything(0)
    model = build("digits_cnn")
    x = TensorDataset(torch.rand(64, 1, 8, 8), torch.randint(0, 10, (64,)))
    hist = fit(model, x, x, TrainConfig(epochs=1, batch_size=32, amp=True, progress=False))
    assert torch.isfinite(torch.tensor(hist.last["train_loss"]))


@pytest.mark.slow
def test_torchrun_two_processes_end_with_identical_weights(tmp_path: Path):
    worker = Path(__file__).with_name("ddp_worker.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_port=29533",
        str(worker),
        str(tmp_path),
    ]
    subprocess.run(cmd, check=True, env=env, timeout=600)
    a = torch.load(tmp_path / "rank0.pt", weights_only=True)
    b = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert (tmp_path / "model.safetensors").is_file()  # written by rank 0 only


def test_warmup_ramps_the_learning_rate_linearly():
    seen = []
    model = build("digits_cnn")
    data = TensorDataset(torch.rand(40, 1, 8, 8), torch.randint(0, 10, (40,)))
    cfg = TrainConfig(
        epochs=2, batch_size=10, lr=1e-2, warmup_epochs=1, scheduler="none", progress=False
    )

    real_step = torch.optim.Adam.step

    def spy(self, *args, **kwargs):
        seen.append(self.param_groups[0]["lr"])
        return real_step(self, *args, **kwargs)

    torch.optim.Adam.step = spy
    try:
        fit(model, data, None, cfg)
    finally:
        torch.optim.Adam.step = real_step
    assert seen == pytest.approx([2.5e-3, 5e-3, 7.5e-3, 1e-2, 1e-2, 1e-2, 1e-2, 1e-2])
    with pytest.raises(ValueError, match="warmup_epochs"):
        fit(model, data, None, TrainConfig(epochs=1, warmup_epochs=2))


def _scripted_losses(values: list[float], steps: int):
    """A loss_fn whose value is ``values[epoch]`` (``steps`` batches an epoch), with a gradient."""
    calls = []

    def loss_fn(net, x, y):
        calls.append(1)
        return net(x).sum() * 0 + values[(len(calls) - 1) // steps]

    return loss_fn


@pytest.mark.parametrize(
    "values, diverge, stops_at",
    [
        ([2.0, 1.0, 2.5, 0.5], 2.0, 3),  # 2.5 > 2 x the best (1.0): stop at epoch 3
        ([2.0, 1.0, 2.0, 0.5], 2.0, None),  # exactly 2x is allowed
        ([2.0, 1.0, 2.5, 0.5], 0.0, None),  # off
        ([-1.0, -2.0, 5.0, 0.5], 2.0, None),  # no positive best: nothing to compare with
    ],
)
def test_a_diverging_loss_stops_the_run_and_keeps_the_epoch_before(
    tmp_path: Path, values, diverge, stops_at
):
    data = TensorDataset(torch.rand(20, 1, 8, 8), torch.zeros(20, dtype=torch.long))
    cfg = TrainConfig(epochs=4, batch_size=10, diverge=diverge, progress=False)
    run = lambda: fit(  # noqa: E731
        build("digits_cnn"), data, None, cfg, tmp_path, loss_fn=_scripted_losses(values, 2)
    )
    if stops_at is None:
        assert [e["train_loss"] for e in run().epochs] == pytest.approx(values)
        return
    with pytest.raises(
        TrainingDiverged, match=r"epoch 3's mean loss 2\.5 is 2\.5x the best epoch's 1 \(limit 2x\)"
    ):
        run()
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == stops_at - 1
    # the guard may change on resume (it computes nothing): off, the run goes on from epoch 2
    cfg.diverge = 0.0
    hist = fit(
        build("digits_cnn"),
        data,
        None,
        cfg,
        tmp_path,
        resume=True,
        loss_fn=_scripted_losses(values[2:], 2),
    )
    assert [e["epoch"] for e in hist.epochs] == [1, 2, 3, 4]


def test_a_non_finite_loss_and_a_bad_divergence_factor_are_refused():
    data = TensorDataset(torch.rand(20, 1, 8, 8), torch.zeros(20, dtype=torch.long))
    cfg = TrainConfig(epochs=1, batch_size=10, progress=False)
    with pytest.raises(TrainingDiverged, match="loss became nan at epoch 1"):
        fit(build("digits_cnn"), data, None, cfg, loss_fn=_scripted_losses([math.nan], 2))
    for bad in (1.0, 0.5, -2.0, math.inf):
        with pytest.raises(ValueError, match=r"diverge must be 0 \(off\) or a factor > 1"):
            TrainConfig(diverge=bad).validate()
