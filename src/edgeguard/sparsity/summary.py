"""Per-layer sparsity tables (what ``edgeguard info`` prints)."""

from __future__ import annotations

from typing import Any

from torch import nn

from ..models.flops import count_flops

HEADERS = (
    "layer",
    "shape",
    "scheme",
    "sparsity",
    "dense MACs",
    "kept MACs",
    "params",
    "kept params",
)


def layer_table(
    model: nn.Module, input_shape: tuple[int, ...], schemes: dict[str, str] | None = None
) -> list[tuple[Any, ...]]:
    """Rows of ``HEADERS`` for every Conv/Linear layer, then a ``total`` row.  ``sparsity`` is the
    fraction of weights removed; ``schemes`` maps layer name -> scheme name (``-`` if dense)."""
    report = count_flops(model, input_shape)
    schemes = schemes or {}
    rows: list[tuple[Any, ...]] = []
    for layer in report.layers:
        rows.append(
            (
                layer.name,
                "x".join(map(str, layer.weight_shape)),
                schemes.get(layer.name, "-"),
                1.0 - layer.density,
                layer.dense_macs,
                layer.kept_macs,
                layer.params,
                layer.kept_params,
            )
        )
    params = sum(r[6] for r in rows)
    kept = sum(r[7] for r in rows)
    rows.append(
        (
            "total",
            f"{report.reduction:.2f}x fewer MACs",
            "",
            1.0 - kept / max(params, 1),
            report.dense_macs,
            report.kept_macs,
            params,
            kept,
        )
    )
    return rows
