"""Compiled pruned COCO detectors (issue 27): ``edgeguard.compile`` on CenterNet-MobileNetV3
(512x512) and NanoDet (416x416) pruned to a MAC target, batch 1, against dense PyTorch and the
dense model in ONNX Runtime, in the same process; per layer, the speedup against the layer's own
MAC reduction.

Speed does not depend on the values of the kept weights, only on which are kept: the masks here
are one-shot magnitude masks of the pretrained weights over the layers ``detector_layers`` picks
(the layers the accuracy benchmark prunes), which have the structure a fine-tuned model keeps.
``depchannel``: ``prune_channels`` (dependency-aware, physically smaller; the heads keep their
filters), MACs counted on the smaller graph.

    .venv/bin/python benchmarks/compile_detectors.py --threads 2
    .venv/bin/python benchmarks/compile_detectors.py --detectors centernet --schemes kgs --targets 2
    .venv/bin/python benchmarks/compile_detectors.py --schemes kgs --scheme-options gn=1
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import tempfile
import time
from datetime import date
from pathlib import Path

import torch

from edgeguard.cli.common import kv
from edgeguard.compiler import compile_model
from edgeguard.compiler.bench import benchmark, steady_allocator
from edgeguard.models import count_flops
from edgeguard.models.detectors import get_detector
from edgeguard.prune.distill import cut_classes, detector_layers, head_convs
from edgeguard.sparsity import get_scheme, prune_channels, prune_model
from prune_detectors import add_keep_classes
from sparse_inference import export_plain, ort_session, torch_then_ort

# inputs in each graph's own range: CenterNet takes raw 0-255 pixels, NanoDet 0-1
SCALE = {"centernet": 255.0, "nanodet": 1.0}


def detector_input(name: str, shape) -> torch.Tensor:
    torch.manual_seed(0)
    return torch.rand(*shape) * SCALE[name]


def run_one(
    name: str,
    scheme: str,
    target: float,
    repeats: int,
    threads: int,
    per_layer: bool,
    keep: list[int] | None = None,
    options: dict | None = None,
):
    """One detector x scheme x MAC target; ``keep``: the class head first cut to these COCO
    classes (its cut counts towards ``target``; the dense baselines stay the 80-class graph);
    ``options``: the scheme's (kernel-group sizes ``gm``, ``gn``)."""
    det = get_detector(name)
    shape = (1, 3, *det.input_size)
    dense = copy.deepcopy(det.net).eval()
    rest = target
    if keep is not None:
        det, rest = cut_classes(det, keep, target)
    layers, dense_layers = detector_layers(det)
    if scheme == "depchannel":  # physically smaller: dependency-aware channel pruning, heads whole
        heads = head_convs(det, dense_layers)
        model = prune_channels(copy.deepcopy(det.net).eval(), shape, rest, ignored=heads).model
        model.eval()
    else:
        model = copy.deepcopy(det.net).eval()
        sch = get_scheme(scheme, **(options or {}))
        prune_model(model, sch, flops_reduction=rest, input_shape=shape, layers=layers)
    flops = count_flops(model, shape)
    # against the dense graph: a physically smaller model has no masks, its own MACs are all kept
    reduction = count_flops(dense, shape).dense_macs / flops.kept_macs
    t0 = time.perf_counter()
    compiled = compile_model(model, "cpu", input_shape=shape)
    build_s = time.perf_counter() - t0
    x = detector_input(name, shape)
    with torch.no_grad():
        want = [t.flatten() for t in _flat(model(x))]
        got = [t.flatten() for t in _flat(compiled(x))]
    err = max(
        float((g - w).abs().max() / (w.abs().max() + 1e-12)) for g, w in zip(got, want, strict=True)
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "dense.onnx"
        export_plain(dense, x, path)
        sess = ort_session(path, threads)
        feed = {sess.get_inputs()[0].name: x.numpy()}
        with torch.no_grad():
            dense_ms, compiled_ms, ort_ms = torch_then_ort(
                [lambda: dense(x), lambda: compiled(x)],
                [lambda: sess.run(None, feed)],
                repeats,
                rounds=1,
            )
    row = {
        "detector": name,
        "scheme": scheme,
        "scheme_options": options or {},
        "target": target,
        "classes": list(getattr(det, "classes", range(80))),
        "reduction": reduction,
        "dense_torch_ms": dense_ms,
        "dense_ort_ms": ort_ms,
        "compiled_ms": compiled_ms,
        "speedup_vs_torch": dense_ms / compiled_ms,
        "speedup_vs_ort": ort_ms / compiled_ms,
        "rel_err": err,
        "build_s": build_s,
        "actions": _count(d.action for d in compiled.decisions),
        "left_dense": dense_layers,
    }
    print(
        f"{name} {scheme} {target:g}x (reached {reduction:.2f}x): dense torch {dense_ms:.1f} "
        f"ms, dense ORT {ort_ms:.1f} ms, compiled {compiled_ms:.1f} ms -> "
        f"{row['speedup_vs_torch']:.2f}x vs torch, {row['speedup_vs_ort']:.2f}x vs ORT; "
        f"rel err {err:.1e}; build {build_s:.1f} s; {row['actions']}",
        flush=True,
    )
    if per_layer:
        total = flops.dense_macs
        by_name = {lf.name: lf for lf in flops.layers}
        res = benchmark(model, compiled, shape, repeats=repeats)
        row["layers"] = []
        for t in res.layers:
            # a fused 1x1 + depthwise kernel counts both layers' MACs
            parts = [by_name.get(n) for n in t.covers or (t.name,)]
            if None in parts:
                continue
            dense_macs = sum(lf.dense_macs for lf in parts)
            row["layers"].append(
                {
                    "layer": t.name,
                    "covers": list(t.covers),
                    "action": t.action,
                    "mac_share": dense_macs / total,
                    "mac_reduction": dense_macs / max(sum(lf.kept_macs for lf in parts), 1),
                    "dense_ms": t.dense_ms,
                    "compiled_ms": t.compiled_ms,
                    "speedup": t.speedup,
                }
            )
        big = [r for r in row["layers"] if r["action"] == "sparse" and r["mac_share"] >= 0.05]
        for r in sorted(big, key=lambda r: -r["mac_share"]):
            ratio = r["speedup"] / r["mac_reduction"]
            what = r["layer"][-48:] + (" + its depthwise conv" if r["covers"] else "")
            print(
                f"    {what:48s} {100 * r['mac_share']:4.1f}% of MACs, "
                f"{r['mac_reduction']:.2f}x fewer: {r['speedup']:.2f}x faster ({ratio:.2f} of it)",
                flush=True,
            )
    return row


def _flat(out) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    return [t for o in out for t in _flat(o)]


def _count(items) -> dict[str, int]:
    out: dict[str, int] = {}
    for i in items:
        out[i] = out.get(i, 0) + 1
    return out


def plot(rows, out: Path) -> None:
    """Latency against MAC reduction, one line per detector and scheme, dense levels dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, name in zip(axes, ("centernet", "nanodet"), strict=True):
        mine = [r for r in rows if r["detector"] == name]
        if not mine:
            ax.set_visible(False)
            continue
        for scheme in sorted({r["scheme"] for r in mine}):
            pts = sorted((r["reduction"], r["compiled_ms"]) for r in mine if r["scheme"] == scheme)
            ax.plot(*zip(*pts, strict=True), "o-", label=f"compiled {scheme}")
        ax.axhline(mine[0]["dense_torch_ms"], ls="--", c="k", label="dense PyTorch")
        ax.axhline(mine[0]["dense_ort_ms"], ls=":", c="gray", label="dense ONNX Runtime")
        ax.set_xlabel("MAC reduction (x)")
        ax.set_ylabel("latency, batch 1 (ms)")
        ax.set_title(name)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--detectors", nargs="+", default=["centernet", "nanodet"])
    ap.add_argument(
        "--schemes", nargs="+", default=["kgs", "vanilla", "filter", "column", "depchannel"]
    )
    ap.add_argument("--targets", nargs="+", type=float, default=[1.5, 2.0, 3.0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--per-layer-target", type=float, default=2.0, help="per-layer table here")
    add_keep_classes(ap)  # the dense baselines stay the 80-class graph
    ap.add_argument(
        "--scheme-options",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="options of the schemes (kernel-group sizes, e.g. gm=8 gn=1)",
    )
    ap.add_argument("--out", default="runs/bench/compile_detectors")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    # dense PyTorch's large outputs would otherwise be mapped fresh (page faults) on many calls:
    # the baseline is the faster, stable one
    steady = steady_allocator()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in args.detectors:
        for scheme in args.schemes:
            for target in args.targets:
                rows.append(
                    run_one(
                        name,
                        scheme,
                        target,
                        args.repeats,
                        args.threads,
                        # a shrunk graph's layers are not the dense layers: no per-layer rows
                        per_layer=target == args.per_layer_target and scheme != "depchannel",
                        keep=args.keep_classes,
                        options=kv(args.scheme_options) if scheme != "depchannel" else None,
                    )
                )
                record = {
                    "date": str(date.today()),
                    "machine": platform.processor() or platform.machine(),
                    "threads": args.threads,
                    "steady_allocator": steady,
                    "args": vars(args),
                    "rows": rows,
                }
                (out / "results.json").write_text(json.dumps(record, indent=1))
    plot(rows, out / "latency_vs_macs.png")
    print(
        "| detector | scheme | MACs | dense torch ms | dense ORT ms | compiled ms | vs torch | vs ORT |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['detector']} | {r['scheme']} | {r['reduction']:.2f}x | {r['dense_torch_ms']:.1f} "
            f"| {r['dense_ort_ms']:.1f} | {r['compiled_ms']:.1f} | {r['speedup_vs_torch']:.2f}x | "
            f"{r['speedup_vs_ort']:.2f}x |"
        )


if __name__ == "__main__":
    main()
