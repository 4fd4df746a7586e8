"""Explaining adversarial examples (Xu et al., "Interpreting adversarial examples by activation
promotion and suppression", arXiv 1904.02057): unit- and pixel-level promotion/suppression, the link
to class activation maps, network dissection and units' attack sensitivity."""

from ..data.concepts import Broden, SyntheticConcepts
from .analysis import AttackExplanation, explain_attack, successful
from .attribution import integrated_gradients, quadrature, unit_conductance
from .cam import class_activation_map, grad_cam, random_overlap, top_mask, topk_overlap
from .dissect import (
    Dissection,
    SensitivityCorrelation,
    dissect,
    sensitivity_vs_interpretability,
    unit_sensitivity,
)
from .hooks import ExplainError, get_layer, last_linear, last_spatial_layer, layer_names
from .pse import (
    CATEGORIES,
    PROMOTION_BELOW,
    SUPPRESSION_ABOVE,
    PixelPSE,
    UnitPSE,
    categorize,
    pixel_pse,
    suppression_share,
    unit_pse,
)
from .study import HEADERS, Study, explain_attacks

__all__ = [
    "CATEGORIES",
    "HEADERS",
    "PROMOTION_BELOW",
    "SUPPRESSION_ABOVE",
    "AttackExplanation",
    "Broden",
    "Dissection",
    "ExplainError",
    "PixelPSE",
    "SensitivityCorrelation",
    "Study",
    "SyntheticConcepts",
    "UnitPSE",
    "categorize",
    "class_activation_map",
    "dissect",
    "explain_attack",
    "explain_attacks",
    "get_layer",
    "grad_cam",
    "integrated_gradients",
    "last_linear",
    "last_spatial_layer",
    "layer_names",
    "pixel_pse",
    "quadrature",
    "random_overlap",
    "sensitivity_vs_interpretability",
    "successful",
    "suppression_share",
    "top_mask",
    "topk_overlap",
    "unit_conductance",
    "unit_pse",
    "unit_sensitivity",
]
