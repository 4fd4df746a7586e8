"""Attacks on graph neural networks (global or targeted): topology attacks PGD (CE/CW), GTA, ZO-GTA,
random flips and DICE; a PGD feature-flip attack; Metattack (poisoning by meta-gradients).
``attack(model, data, target=None) -> GraphAttackResult`` is evasion; :func:`poison` turns any of
them into poisoning (retraining on the perturbed graph)."""

from ...registry import construct, lookup
from .base import GraphAttack, GraphAttackResult
from .baselines import DICE, RandomFlips
from .edges import check_graph, flip_pairs, resolve_budget
from .errors import GraphAttackError
from .features import PGDFeatures
from .gta import GreedyTopology
from .metattack import Metattack
from .pgd import PGDTopology, project_budget
from .poisoning import PoisoningResult, poison
from .zo_gta import ZOGreedyTopology

GRAPH_ATTACKS = {
    cls.name: cls
    for cls in (
        PGDTopology,
        GreedyTopology,
        ZOGreedyTopology,
        RandomFlips,
        DICE,
        PGDFeatures,
        Metattack,
    )
}


def get_graph_attack(name: str, **settings) -> GraphAttack:
    """A graph attack by name (``pgd``, ``gta``, ``zo-gta``, ``random``, ``dice``, ``pgd-features``,
    ``metattack``) with its settings; ``pgd-cw`` is PGD with the CW loss."""
    if name == "pgd-cw":
        name, settings = "pgd", {**settings, "loss": "cw"}
    cls = lookup(GRAPH_ATTACKS, name, "graph attack", GraphAttackError, extra=("pgd-cw",))
    return construct(cls, name, "graph attack", GraphAttackError, **settings)


__all__ = [
    "DICE",
    "GRAPH_ATTACKS",
    "GraphAttack",
    "GraphAttackError",
    "GraphAttackResult",
    "GreedyTopology",
    "Metattack",
    "PGDFeatures",
    "PGDTopology",
    "PoisoningResult",
    "RandomFlips",
    "ZOGreedyTopology",
    "check_graph",
    "flip_pairs",
    "get_graph_attack",
    "poison",
    "project_budget",
    "resolve_budget",
]
