"""The one exception base of the library.  Every error that a user's input can cause (a bad option,
file, shape or number) is an ``EdgeguardError``; the CLI turns exactly these into a one-line message
and exit status 2, so anything else is a bug in edgeguard and shows its traceback."""

from __future__ import annotations


class EdgeguardError(Exception):
    """Base of every edgeguard error caused by its input; subclasses also derive from the matching
    built-in (``ValueError``, ``OSError``, ``RuntimeError``) so existing ``except`` clauses keep
    working."""


class UsageError(EdgeguardError, ValueError):
    """A wrong option, or a wrong combination of options."""


class OutputExistsError(EdgeguardError, FileExistsError):
    """An output folder already holds a run (refused so that no finished work is overwritten)."""


class ConfigError(EdgeguardError, ValueError):
    """A setting (training, model or dataset option) outside what is accepted."""


class TrainingDiverged(EdgeguardError, FloatingPointError):
    """Training stopped because its loss became NaN/Inf or grew past ``TrainConfig.diverge`` times
    its best epoch: a setting (usually the learning rate) too large for the model."""
