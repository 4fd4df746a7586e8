"""``edgeguard info``: per-layer table of a saved model."""

from __future__ import annotations

import json

from ..errors import UsageError
from .common import shape_arg


def add_parser(sub) -> None:
    p = sub.add_parser("info", help="per-layer table of a saved model")
    p.add_argument("checkpoint")
    p.add_argument("--input-shape", type=shape_arg, help="e.g. 1,3,16,112,112 (batch included)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..engine.text import format_table
    from ..modelfile import load_model
    from ..sparsity.summary import HEADERS, layer_table

    model, _, spec = load_model(args.checkpoint)
    shape = args.input_shape or tuple(spec.get("extra", {}).get("input_shape") or ())
    if not shape:
        raise UsageError("the checkpoint records no input shape; pass --input-shape 1,3,16,112,112")
    schemes = {n: e["scheme"]["name"] for n, e in spec["layers"].items() if "scheme" in e}
    print(f"model: {json.dumps(spec.get('arch'))}   input: {list(shape)}")
    print(format_table(HEADERS, layer_table(model, tuple(shape), schemes)))
    extra = {k: v for k, v in spec.get("extra", {}).items() if k != "input_shape"}
    if extra:
        print("recorded:", json.dumps(extra))
    return 0
