"""RelativeAdam (engine.optim): Adam steps scaled by each filter's RMS."""

from __future__ import annotations

import argparse

import pytest
import torch
from torch import nn

from edgeguard.cli.common import add_train_args
from edgeguard.engine import TrainConfig
from edgeguard.engine.config import OPTIMIZERS, _make_optimizer
from edgeguard.engine.optim import RelativeAdam


class Scale(nn.Module):
    def __init__(self, s: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("s", s)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.s


def _net(c: torch.Tensor | None = None) -> nn.Sequential:
    """Linear -> ReLU -> Linear; with ``c``, the first layer's filter i holds c[i] times the
    weights and a fixed scale 1/c[i] follows it: the same function, stored as a batch norm folded
    into a conv stores it (the scale in the weights)."""
    torch.manual_seed(0)
    first, second = nn.Linear(5, 6), nn.Linear(6, 3)
    first.bias.requires_grad_(False)  # a vector: one RMS for all of it, outside this invariance
    if c is None:
        return nn.Sequential(first, nn.ReLU(), second)
    with torch.no_grad():
        first.weight.mul_(c[:, None])
        first.bias.mul_(c)
    return nn.Sequential(first, Scale(1 / c), nn.ReLU(), second)


def _params(net: nn.Module) -> list[torch.Tensor]:
    return [p for p in net.parameters() if p.requires_grad]


def _train(net: nn.Module, opt: torch.optim.Optimizer, steps: int = 20) -> None:
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x, y = torch.randn(16, 5, generator=gen), torch.randint(0, 3, (16,), generator=gen)
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()


def test_steps_are_equivariant_to_the_scale_of_each_filter():
    c = torch.tensor([1e-3, 0.1, 1.0, 10.0, 1e3, 3.0])
    x = torch.randn(8, 5)
    a, b = _net(), _net(c)
    assert torch.allclose(a(x), b(x), atol=1e-5)
    _train(a, RelativeAdam(_params(a), lr=1e-2, eps=1e-30))
    _train(b, RelativeAdam(_params(b), lr=1e-2, eps=1e-30))
    torch.testing.assert_close(b[0].weight, a[0].weight * c[:, None], rtol=1e-4, atol=1e-7)
    assert torch.allclose(a(x), b(x), rtol=1e-4, atol=1e-5)  # still one function
    assert not torch.allclose(a(x), _net()(x), atol=1e-3)  # and it did train
    # plain Adam moves every weight by ~lr: the small filters are rewritten, the large ones frozen
    a, b = _net(), _net(c)
    _train(a, torch.optim.Adam(_params(a), lr=1e-2))
    _train(b, torch.optim.Adam(_params(b), lr=1e-2))
    assert not torch.allclose(a(x), b(x), rtol=1e-2, atol=1e-2)


def test_first_step_is_lr_times_the_filter_rms_against_a_hand_computation():
    w = nn.Parameter(torch.tensor([[3.0, -4.0], [0.0, 0.5]]))
    opt = RelativeAdam([w], lr=0.1, eps=1e-12)
    w.grad = torch.tensor([[1.0, -2.0], [0.5, 0.0]])
    before = w.detach().clone()
    opt.step()
    # first Adam step: m_hat / (sqrt(v_hat) + eps) = sign(g), 0 where g = 0
    rms = torch.tensor([[12.5**0.5], [0.125**0.5]])
    want = before - 0.1 * rms * torch.tensor([[1.0, -1.0], [1.0, 0.0]])
    torch.testing.assert_close(w.detach(), want)


def test_config_cli_and_bad_settings():
    cfg = TrainConfig(optimizer="adam-relative", lr=1e-3)
    cfg.validate()
    assert isinstance(_make_optimizer(_net(), cfg), RelativeAdam)
    p = argparse.ArgumentParser()
    add_train_args(p, epochs=1, lr=1e-3)
    choices = next(a.choices for a in p._actions if a.dest == "optimizer")
    assert sorted(choices) == sorted(OPTIMIZERS)
    with pytest.raises(ValueError):
        RelativeAdam(_net().parameters(), lr=0)
    with pytest.raises(ValueError):
        RelativeAdam(_net().parameters(), betas=(1.0, 0.9))
