"""A/B of two checkouts' CPU kernels on C3D's conv shapes, in one process.

Each checkout's ``edgeguard`` package is imported under its own name, so both variants' kernels
(generated and compiled from their own ``cpu.py``) and dense torch run side by side on the same
input and weights.  Per layer and rate, three alternating pairs (dense/A, B/A, B/dense) give the
ratio of speedup to MAC reduction for each and the time of B over A, which is robust to the
machine's clock drifting between runs.

    .venv/bin/python benchmarks/kernel_ab.py --a /tmp/base --b . --layers conv4b conv5a \\
        --reductions 2 4 --repeats 7
    .venv/bin/python benchmarks/kernel_ab.py --a . --b . --knobs '{"nv": 3}'  # a knob against default
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import sys
from pathlib import Path

import torch
from torch import nn

# C3D's conv shapes, as the per-layer benchmark times them (this folder is on sys.path when run)
from sparse_inference import C3D_LAYERS

LAYERS = {name: shape for name, *shape in C3D_LAYERS}  # name: cin, cout, input T, H, W


def load_checkout(tag: str, root: Path):
    """The ``edgeguard`` package of the checkout at ``root``, imported as ``eg_<tag>``."""
    pkg = Path(root).resolve() / "src" / "edgeguard"
    if not (pkg / "__init__.py").exists():
        raise SystemExit(f"{root}: not an edgeguard checkout (no src/edgeguard/__init__.py)")
    name = f"eg_{tag}"
    spec = importlib.util.spec_from_file_location(
        name, pkg / "__init__.py", submodule_search_locations=[str(pkg)]
    )
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    try:  # the compiler package (named "compile" in checkouts before the rename)
        return importlib.import_module(f"{name}.compiler")
    except ModuleNotFoundError:
        return importlib.import_module(f"{name}.compile")


def three_pairs(dense, a, b, x, repeats: int) -> tuple[float, ...]:
    """Medians (ms) of the pairs dense/A, B/A and B/dense, each timed alternately."""
    from edgeguard.compiler.bench import paired_ms

    d1, ta1 = paired_ms(lambda: dense(x), lambda: a(x), repeats)
    tb1, ta2 = paired_ms(lambda: b(x), lambda: a(x), repeats)
    tb2, d2 = paired_ms(lambda: b(x), lambda: dense(x), repeats)
    return d1, ta1, tb1, ta2, tb2, d2


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--a", type=Path, required=True, help="checkout of variant A (the baseline)")
    ap.add_argument("--b", type=Path, required=True, help="checkout of variant B")
    ap.add_argument(
        "--layers", nargs="+", default=["conv3b", "conv4b", "conv5a"], choices=list(LAYERS)
    )
    ap.add_argument("--reductions", type=float, nargs="+", default=[2, 4])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--mr", type=int, default=8, help="filters per block (default 8: AVX-512)")
    ap.add_argument(
        "--knobs", default="{}", help="JSON of SparseConv options for B, e.g. '{\"nv\": 3}'"
    )
    args = ap.parse_args()
    knobs = json.loads(args.knobs)
    torch.set_num_threads(args.threads)
    comp_a, comp_b = load_checkout("a", args.a), load_checkout("b", args.b)
    from edgeguard.sparsity import get_scheme

    for name in args.layers:
        cin, cout, t, h, w = LAYERS[name]
        torch.manual_seed(0)
        dense = nn.Conv3d(cin, cout, 3, padding=1).eval()
        x = torch.randn(1, cin, t, h, w)
        for red in args.reductions:
            sparse = nn.Conv3d(cin, cout, 3, padding=1).eval()
            sparse.load_state_dict(dense.state_dict())
            with torch.no_grad():
                mask = get_scheme("kgs").mask(sparse.weight, 1 - 1 / red)
                sparse.weight *= mask
            real = mask.numel() / mask.sum().item()
            a = comp_a.SparseConv(comp_a.plan_conv(sparse, mr=args.mr), mode="cpu", name=name)
            b = comp_b.SparseConv(
                comp_b.plan_conv(sparse, mr=args.mr), mode="cpu", name=name, **knobs
            )
            with torch.no_grad():
                ref = sparse(x)
                scale = ref.abs().max()
                err_a = float((a(x) - ref).abs().max() / scale)
                err_b = float((b(x) - ref).abs().max() / scale)
                a.reuse_buffers = b.reuse_buffers = True
                d1, ta1, tb1, ta2, tb2, d2 = three_pairs(dense, a, b, x, args.repeats)
            print(
                f"{name} {red:g}x: dense {d1:.1f}/{d2:.1f} ms  A {ta1:.2f}/{ta2:.2f}  "
                f"B {tb2:.2f}/{tb1:.2f}  ratio A {d1 / ta1 / real:.2f} B {d2 / tb2 / real:.2f}  "
                f"B/A {tb1 / ta2:.3f}  rel. err {err_a:.1e} {err_b:.1e}",
                flush=True,
            )


if __name__ == "__main__":
    main()
