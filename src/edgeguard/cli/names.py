"""The names each option accepts, read from the library's registries (never listed by hand)."""

from __future__ import annotations


def _join(names) -> str:
    return ", ".join(names)


def models() -> str:
    from ..models import MODELS

    return _join(MODELS)


def datasets() -> str:
    from ..data import DATASETS

    return _join(DATASETS)


def pruners() -> str:
    from ..prune.base import available_pruners

    return _join(available_pruners())


def schemes() -> str:
    from ..sparsity.base import available_schemes

    return _join(available_schemes())


def attacks() -> str:
    from ..attacks import ATTACKS

    return _join(ATTACKS)


def graph_attacks() -> str:
    try:
        from ..attacks.graph import GRAPH_ATTACKS
    except ImportError:  # the graph extra is not installed
        return "see `pip install edgeguard[graph]`"
    return _join([*GRAPH_ATTACKS, "pgd-cw"])


def detectors() -> str:
    from ..models.detectors import DETECTOR_SPECS

    return _join(DETECTOR_SPECS)
