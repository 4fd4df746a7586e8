"""The weight average of ``fit`` (``TrainConfig.ema``): against the recurrence worked by hand over
the raw weights of each step, resumed bit-exactly, and what callbacks and checkpoints see."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from edgeguard.engine import CheckpointError, TrainConfig, fit, load_checkpoint
from edgeguard.engine.ema import WeightAverage

from .helpers import die_after_first_checkpoint


def _data() -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 3, generator=g)
    return TensorDataset(x, x @ torch.tensor([1.0, -2.0, 0.5]) + 0.3)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Linear(3, 1)


def _cfg(ema: float, epochs: int = 2) -> TrainConfig:
    return TrainConfig(
        epochs=epochs, batch_size=8, lr=0.05, optimizer="sgd", ema=ema, progress=False
    )


def _mse_recording(seen: list[torch.Tensor] | None = None):
    def loss(net, x, y):
        if seen is not None:  # the weights this step starts from
            seen.append(torch.cat([p.detach().flatten().clone() for p in net.parameters()]))
        return ((net(x).squeeze(1) - y) ** 2).mean()

    return loss


def _train(model: nn.Module, ema: float, **options) -> None:
    fit(model, _data(), None, _cfg(ema), loss_fn=_mse_recording(), **options)


def _flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_the_average_follows_the_recurrence_over_every_steps_raw_weights():
    seen: list[torch.Tensor] = []
    raw = _model()
    fit(raw, _data(), None, _cfg(0.0), loss_fn=_mse_recording(seen))
    steps = [*seen[1:], _flat(raw)]  # the raw weights after each of the 10 steps
    want = seen[0].clone()
    for w in steps:
        want = 0.8 * want + 0.2 * w
    averaged = _model()
    _train(averaged, 0.8)
    assert len(steps) == 10 and not torch.allclose(want, steps[-1], atol=1e-3)
    torch.testing.assert_close(_flat(averaged), want, rtol=0, atol=1e-6)


def test_callbacks_see_the_average_and_checkpoints_keep_both(tmp_path: Path):
    at_callback: list[torch.Tensor] = []
    model = _model()
    _train(
        model,
        0.8,
        checkpoint_dir=tmp_path,
        callbacks=[lambda e, m, metrics: at_callback.append(_flat(m).clone())],
    )
    state = load_checkpoint(tmp_path / "last.pt")
    avg = torch.cat([state["ema"]["avg"]["weight"].flatten(), state["ema"]["avg"]["bias"]])
    raw = torch.cat([state["model"]["weight"].flatten(), state["model"]["bias"]])
    torch.testing.assert_close(at_callback[-1], avg, rtol=0, atol=0)
    torch.testing.assert_close(_flat(model), avg, rtol=0, atol=0)  # the result is the average
    assert not torch.allclose(raw, avg, atol=1e-4)  # training goes on from the raw weights


def test_a_resumed_run_ends_with_the_same_average(tmp_path: Path, monkeypatch):
    full = _model()
    _train(full, 0.8, checkpoint_dir=tmp_path / "full")
    die_after_first_checkpoint(
        monkeypatch, lambda: _train(_model(), 0.8, checkpoint_dir=tmp_path / "p")
    )
    resumed = nn.Linear(3, 1)  # other weights: the checkpoint overwrites them
    _train(resumed, 0.8, checkpoint_dir=tmp_path / "p", resume=True)
    torch.testing.assert_close(_flat(resumed), _flat(full), rtol=0, atol=0)


def test_resuming_without_a_stored_average_and_bad_decays_are_refused(tmp_path: Path):
    _train(_model(), 0.0, checkpoint_dir=tmp_path)
    # an older checkpoint (no ema setting stored) resumes under the default, and only under it
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    del state["config"]["ema"]
    torch.save(state, tmp_path / "last.pt")
    _train(_model(), 0.0, checkpoint_dir=tmp_path, resume=True)
    with pytest.raises(CheckpointError, match=r"other settings \(ema: stored 0.0, given 0.5\)"):
        _train(_model(), 0.5, checkpoint_dir=tmp_path, resume=True)
    # a checkpoint that says it was averaged but holds no average
    _train(_model(), 0.5, checkpoint_dir=tmp_path / "avg")
    state = torch.load(tmp_path / "avg" / "last.pt", weights_only=True)
    del state["ema"]
    torch.save(state, tmp_path / "avg" / "last.pt")
    with pytest.raises(CheckpointError, match="holds no weight average to resume from"):
        _train(_model(), 0.5, checkpoint_dir=tmp_path / "avg", resume=True)
    for bad in (1.0, -0.1, float("nan")):
        with pytest.raises(ValueError, match="ema must be a decay in"):
            _train(_model(), bad)
    with pytest.raises(CheckpointError, match="weight average does not fit"):
        WeightAverage(_model(), 0.5).load_state_dict({"avg": {"weight": torch.zeros(1, 3)}})
