"""Several attacks explained on one model, with dissection and the figures of the report."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..attacks import Attack
from ..engine.text import format_table
from . import plots
from .analysis import AttackExplanation, NothingToExplain, explain_attack
from .dissect import Dissection, SensitivityCorrelation, dissect, sensitivity_vs_interpretability
from .hooks import last_spatial_layer

log = logging.getLogger(__name__)

HEADERS = (
    "attack",
    "attacked",
    "failed (excluded)",
    "suppression-dominated",
    "balanced",
    "promotion-dominated",
    "overlap supp./CAM true",
    "overlap prom./CAM adv",
    "random overlap",
    "sensitivity-IoU rho (p)",
)


@dataclass
class Study:
    """Explanations of several attacks on one model.

    Attributes:
        explanations: one per attack; dissection: of ``cam_layer`` on the concept dataset (or None);
        correlations: per attack, sensitivity against interpretability (empty without dissection);
        figures: ``{caption: PNG path}`` in the order they were made;
        skipped: ``{attack: reason}`` for attacks with nothing to explain (failed on every sample).
    """

    explanations: list[AttackExplanation]
    dissection: Dissection | None = None
    correlations: dict[str, SensitivityCorrelation] = field(default_factory=dict)
    figures: dict[str, Path] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    def rows(self) -> list[tuple]:
        """Table rows under :data:`HEADERS` (percentages of the successful perturbations)."""
        out = []
        for e in self.explanations:
            shares = e.category_shares()
            c = self.correlations.get(e.attack)
            corr = f"{c.rho:+.2f} (p={c.p_value:.2g})" if c else "-"
            out.append(
                (
                    e.attack,
                    e.attempted,
                    e.failed,
                    *(
                        f"{100 * shares[k]:.0f}%"
                        for k in ("suppression-dominated", "balanced", "promotion-dominated")
                    ),
                    f"{float(e.overlap_suppression.mean()):.3f}",
                    f"{float(e.overlap_promotion.mean()):.3f}",
                    f"{float(e.random_suppression.mean()):.3f}",
                    corr,
                )
            )
        out += [
            (name, reason, *["-"] * (len(HEADERS) - 2)) for name, reason in self.skipped.items()
        ]
        return out

    def table(self) -> str:
        """The rows as an aligned text table."""
        return format_table(HEADERS, self.rows())


def explain_attacks(
    model: nn.Module,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    attacks: Mapping[str, Attack],
    out_dir: str | Path | None = None,
    concepts=None,
    layer: str | None = None,
    cam_layer: str | None = None,
    fraction: float = 0.1,
    steps: int = 32,
    progress: bool = True,
) -> Study:
    """Explain every attack of ``attacks`` on ``(inputs, labels)``; with ``concepts`` (a concept
    dataset whose images the model takes) also dissect ``cam_layer`` and correlate the units' attack
    sensitivity with their interpretability.  With ``out_dir``, write the figures there as PNG.

    See :func:`~edgeguard.explain.analysis.explain_attack` for the settings."""
    model.eval()
    cam_layer = cam_layer or last_spatial_layer(model, inputs)
    study = Study([])
    for name, attack in attacks.items():
        log.info("explaining %s", name)
        try:
            e = explain_attack(
                model,
                inputs,
                labels,
                attack,
                name,
                layer=layer,
                cam_layer=cam_layer,
                fraction=fraction,
                steps=steps,
            )
        except NothingToExplain as err:
            log.warning("%s: %s", name, err)
            study.skipped[name] = str(err)
            continue
        study.explanations.append(e)
    if not study.explanations:
        raise NothingToExplain(f"no attack succeeded on any sample: {study.skipped}")
    if concepts is not None:
        study.dissection = dissect(model, cam_layer, concepts, progress=progress)
        for e in study.explanations:
            study.correlations[e.attack] = sensitivity_vs_interpretability(
                e.sensitivity, study.dissection
            )
    if out_dir is not None:
        out = Path(out_dir)
        f = study.figures
        f["Share of each perturbation category per attack."] = plots.category_bars(
            study.explanations, out / "pse_categories.png"
        )
        for e in study.explanations:
            slug = "".join(ch if ch.isalnum() else "_" for ch in e.attack.lower()).strip("_")
            f[f"{e.attack}: per-unit promotion and suppression (mean over samples)."] = (
                plots.unit_pse_bars(e, out / f"pse_units_{slug}.png")
            )
            f[f"{e.attack}: pixel-level promotion/suppression and Grad-CAM."] = plots.pse_overlays(
                e, out / f"pse_maps_{slug}.png"
            )
        if study.dissection is not None:
            f["Network dissection of the CAM layer."] = plots.dissection_summary(
                study.dissection, out / "dissection.png"
            )
            f["Attack sensitivity against interpretability per unit."] = plots.sensitivity_scatter(
                {e.attack: e.sensitivity for e in study.explanations},
                study.dissection,
                out / "sensitivity_vs_iou.png",
            )
    return study
