"""Adversarial attacks on images (one protocol: ``attack(model, inputs, labels, target=None)``)."""

from ..registry import construct, lookup
from .base import Attack, AttackError, AttackResult, Normalize, distortions
from .cw import CW
from .ead import EAD
from .fgsm import FGSM
from .minmax import Ensemble, MinMaxPGD, MinMaxResult, MinMaxWeights, project_simplex
from .pgd import PGD
from .zo import ZOO, ZOAdam, ZOSignSGD

ATTACKS = {cls.name: cls for cls in (FGSM, PGD, CW, EAD, ZOO, ZOSignSGD, ZOAdam)}


def get_attack(name: str, **settings) -> Attack:
    """An attack by name (``fgsm``, ``pgd``, ``cw``, ``ead``, ``zoo``, ``zo-signsgd``, ``zo-adam``)
    with its settings (the min-max ensemble attack takes an ``Ensemble``: use ``MinMaxPGD``)."""
    cls = lookup(ATTACKS, name, "attack", AttackError)
    return construct(cls, name, "attack", AttackError, **settings)


__all__ = [
    "ATTACKS",
    "CW",
    "EAD",
    "FGSM",
    "PGD",
    "Attack",
    "AttackError",
    "AttackResult",
    "Ensemble",
    "MinMaxPGD",
    "MinMaxResult",
    "MinMaxWeights",
    "Normalize",
    "distortions",
    "get_attack",
    "project_simplex",
]
