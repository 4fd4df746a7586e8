"""Shared by the engine tests."""

from __future__ import annotations

from collections.abc import Callable

import pytest

import edgeguard.engine.train as train_module


def die_after_first_checkpoint(monkeypatch: pytest.MonkeyPatch, run: Callable[[], object]) -> None:
    """Call ``run`` (a ``fit`` with a checkpoint folder) and kill it right after it wrote its
    first checkpoint, as a process killed between epochs would be."""
    real_save = train_module.save_checkpoint

    def save_then_crash(state, path):
        real_save(state, path)
        raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "save_checkpoint", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        run()
    monkeypatch.setattr(train_module, "save_checkpoint", real_save)
