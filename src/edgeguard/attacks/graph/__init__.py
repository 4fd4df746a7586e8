"""Topology attacks on graph neural networks (evasion, global or targeted): PGD (CE/CW), GTA, ZO-GTA,
random flips and DICE.  ``attack(model, data, target=None) -> GraphAttackResult``."""

from .base import (
    GraphAttack,
    GraphAttackError,
    GraphAttackResult,
    check_graph,
    flip_pairs,
    resolve_budget,
)
from .baselines import DICE, RandomFlips
from .gta import GreedyTopology
from .pgd import PGDTopology, project_budget
from .zo_gta import ZOGreedyTopology

GRAPH_ATTACKS = {cls.name: cls for cls in (PGDTopology, GreedyTopology, ZOGreedyTopology,
                                            RandomFlips, DICE)}  # fmt: skip


def get_graph_attack(name: str, **settings) -> GraphAttack:
    """A graph attack by name (``pgd``, ``gta``, ``zo-gta``, ``random``, ``dice``) with its settings;
    ``pgd-cw`` is PGD with the CW loss."""
    if name == "pgd-cw":
        name, settings = "pgd", {**settings, "loss": "cw"}
    if name not in GRAPH_ATTACKS:
        raise GraphAttackError(
            f"unknown graph attack {name!r}; available: {', '.join(sorted(GRAPH_ATTACKS))}, pgd-cw"
        )
    return GRAPH_ATTACKS[name](**settings)


__all__ = [
    "DICE",
    "GRAPH_ATTACKS",
    "GraphAttack",
    "GraphAttackError",
    "GraphAttackResult",
    "GreedyTopology",
    "PGDTopology",
    "RandomFlips",
    "ZOGreedyTopology",
    "check_graph",
    "flip_pairs",
    "get_graph_attack",
    "project_budget",
    "resolve_budget",
]
