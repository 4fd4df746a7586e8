"""Zeroth-order (black-box) attacks: gradient estimators, ZOO, ZO-signSGD, ZO-Adam."""

from .adam import ZOAdam
from .base import ZOAttack
from .blackbox import BlackBox, BlackBoxError
from .estimators import coordinate_estimate, random_estimate
from .signsgd import ZOSignSGD
from .zoo import ZOO

__all__ = [
    "ZOO",
    "BlackBox",
    "BlackBoxError",
    "ZOAdam",
    "ZOAttack",
    "ZOSignSGD",
    "coordinate_estimate",
    "random_estimate",
]
