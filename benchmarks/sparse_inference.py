"""Sparse inference: generated kernels against dense PyTorch and ONNX Runtime (CPU), same process.

Per layer: C3D's conv shapes at 1x3x16x112x112, KGS at 2x..8x fewer MACs, speedup over dense torch
conv3d.  End to end: C3D and R(2+1)D-18 pruned 2.5x and 3.6x (KGS and vanilla), compiled, against
dense torch, dense ONNX Runtime, and the channel-pruned (filter scheme, physically shrunk) model of the
same MACs in torch and ONNX Runtime.  2-D end to end (``--only e2e2d``): ResNet-18 and VGG-16 (CIFAR,
32x32) pruned 3x, batch 1 and 32, compiled and exported to ONNX, against dense torch and ONNX Runtime.
Weights are random (speed does not depend on them); masks are
one-shot magnitude masks.  Prints markdown tables and writes results JSON and a PNG plot.

    .venv/bin/python benchmarks/sparse_inference.py --threads 2              # all (~15 min)
    .venv/bin/python benchmarks/sparse_inference.py --only layers --repeats 5
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from functools import partial
from pathlib import Path

import torch
from torch import nn

from edgeguard.compiler import compile_model
from edgeguard.compiler.bench import median_ms, paired_ms, steady_allocator
from edgeguard.models import build, count_flops
from edgeguard.sparsity import get_scheme, prune_model

C3D_LAYERS = [  # name, cin, cout, input T, H, W (C3D at 16x112x112)
    ("conv1", 3, 64, 16, 112, 112),
    ("conv2", 64, 128, 16, 56, 56),
    ("conv3a", 128, 256, 8, 28, 28),
    ("conv3b", 256, 256, 8, 28, 28),
    ("conv4a", 256, 512, 4, 14, 14),
    ("conv4b", 512, 512, 4, 14, 14),
    ("conv5a", 512, 512, 2, 7, 7),
    ("conv5b", 512, 512, 2, 7, 7),
]


def per_layer(reductions, repeats):
    rows = []
    for name, cin, cout, t, h, w in C3D_LAYERS:
        torch.manual_seed(0)
        conv = nn.Conv3d(cin, cout, 3, padding=1).eval()
        x = torch.randn(1, cin, t, h, w)
        for red in reductions:
            net = nn.Sequential(conv).eval()
            sparse = nn.Sequential(nn.Conv3d(cin, cout, 3, padding=1)).eval()
            sparse.load_state_dict(net.state_dict())
            mask = get_scheme("kgs").mask(sparse[0].weight, 1 - 1 / red)
            with torch.no_grad():
                sparse[0].weight *= mask
            real = mask.numel() / mask.sum().item()
            comp = compile_model(sparse, "cpu", input_shape=tuple(x.shape), max_density=1.0)
            # The layer itself, as the dense conv is timed: the compiled *model* also copies its
            # output out of the layer's reused buffer (10 ms for conv1's 51 MB), which inside a
            # network the next layer does not need.
            (layer,) = comp.sparse_layers().values()
            with torch.no_grad():  # dense and sparse timed alternately: the ratio is robust
                dense_ms, ms = paired_ms(
                    lambda c=conv, x=x: c(x), lambda c=layer, x=x: c(x), repeats
                )
            rows.append(
                {
                    "layer": name,
                    "target": red,
                    "reduction": real,
                    "dense_ms": dense_ms,
                    "sparse_ms": ms,
                    "speedup": dense_ms / ms,
                }
            )
            print(
                f"  {name:7s} {red:g}x: dense {dense_ms:7.1f} ms  sparse {ms:7.1f} ms  "
                f"speedup {dense_ms / ms:5.2f}  ({dense_ms / ms / real:.2f} of the MAC reduction)",
                flush=True,
            )
    return rows


def channel_pruned(dense: nn.Module, arch: str, shape, target: float):
    """Filter pruning (magnitude, one uniform rate) physically shrunk by the compiler, with the rate
    found by bisection so that the *shrunk* model has ``target``x fewer MACs (the mask-based count
    does not credit the next layer's removed input channels, the shrunk model does)."""
    dense_macs = count_flops(dense, shape).dense_macs

    def shrunk(rate: float):
        net = build(arch, num_classes=101).eval()
        net.load_state_dict(dense.state_dict())
        prune_model(net, "filter", rates=rate)
        comp = compile_model(net, "torch")
        return comp, dense_macs / count_flops(comp.module, shape).dense_macs

    lo, hi = 0.0, 0.95
    for _ in range(10):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if shrunk(mid)[1] >= target else (mid, hi)
    comp, red = shrunk(hi)
    print(
        f"  channel-pruned model: uniform filter rate {hi:.3f}, {red:.2f}x fewer MACs once shrunk",
        flush=True,
    )
    return comp


def export_plain(model: nn.Module, x: torch.Tensor, path: Path, opset: int = 18) -> None:
    """``model`` as PyTorch's own ONNX export writes it (the dense baseline; DeepSparse's input)."""
    import warnings

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model.eval(), (x,), str(path), dynamo=False, input_names=["input"], opset_version=opset
        )


def ort_session(path: Path, threads: int, spinning: bool = True):
    """An ONNX Runtime CPU session, as ORT runs by default (its workers spin for a while after
    each parallel section: 10-25 % faster at batch 1 here); ``spinning=False`` where it is timed
    in turn with other models' calls, whose cores those spinning workers would take."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    if not spinning:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def ort_ms(model: nn.Module, shape, repeats: int, threads: int) -> float | None:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.onnx"
        export_plain(model, torch.randn(*shape), path)
        sess = ort_session(path, threads)  # timed alone
        feed = {"input": torch.randn(*shape).numpy()}
        return median_ms(lambda: sess.run(None, feed), repeats)


def end_to_end(repeats: int, threads: int, models, targets):
    rows = []
    for arch in models:
        shape = (1, 3, 16, 112, 112)
        torch.manual_seed(0)
        dense = build(arch, num_classes=101).eval()
        x = torch.randn(*shape)
        with torch.no_grad():
            dense_ms = median_ms(lambda d=dense, x=x: d(x), repeats)
        dense_ort = ort_ms(dense, shape, repeats, threads)
        print(
            f"{arch}: dense torch {dense_ms:.1f} ms, dense ONNX Runtime {dense_ort} ms", flush=True
        )
        for target in targets:
            ch_comp = channel_pruned(dense, arch, shape, target)
            ch_ms = median_ms(lambda c=ch_comp, x=x: c(x), repeats)
            ch_ort = ort_ms(ch_comp.module, shape, repeats, threads)
            for scheme in ("kgs", "vanilla"):
                model = build(arch, num_classes=101).eval()
                model.load_state_dict(dense.state_dict())
                prune_model(model, scheme, flops_reduction=target, input_shape=shape)
                red = count_flops(model, shape).reduction
                t0 = time.perf_counter()
                comp = compile_model(model, "cpu", input_shape=shape)
                build_s = time.perf_counter() - t0
                with torch.no_grad():
                    err = float((comp(x) - model(x)).abs().max() / model(x).abs().max())
                with torch.no_grad():
                    dense_ms, ms = paired_ms(
                        lambda d=dense, x=x: d(x), lambda c=comp, x=x: c(x), repeats
                    )
                row = {
                    "model": arch,
                    "scheme": scheme,
                    "target": target,
                    "reduction": red,
                    "compiled_ms": ms,
                    "dense_ms": dense_ms,
                    "dense_ort_ms": dense_ort,
                    "channel_torch_ms": ch_ms,
                    "channel_ort_ms": ch_ort,
                    "rel_err": err,
                    "build_s": build_s,
                }
                rows.append(row)
                print(
                    f"  {scheme:7s} {target:g}x (reached {red:.2f}x): compiled {ms:.1f} ms "
                    f"(speedup {dense_ms / ms:.2f} over torch, {(dense_ort or 0) / ms:.2f} over ORT); "
                    f"channel-pruned torch {ch_ms:.1f} ms, ORT {ch_ort} ms; err {err:.1e}; "
                    f"build {build_s:.0f} s",
                    flush=True,
                )
    return rows


PROTOCOLS = ("blocks", "in-turn")


def torch_then_ort(
    torch_fns, ort_fns, repeats: int, rounds: int = 3, protocol: str = "blocks"
) -> list[float]:
    """Median ms of the torch-side calls, then, after half a second, of the ONNX Runtime calls,
    over ``rounds`` such pairs of loops (``repeats`` timed calls of each function per loop)
    spread over the run, so that the two sides' times come from the same spells of a shared
    machine.

    ``protocol`` ``"blocks"``: within a loop each function runs a block of calls (three untimed
    first: the first two still found some of the other model's data in the caches, then
    ``repeats`` timed), blocks in turn: each model's steady state, as a deployed
    model called again and again runs (its weights and buffers in the caches as far as they
    fit).  ``"in-turn"``: one call of each function in turn, every call timed right after
    another model's, whose data it finds in the caches instead of its own (build ORT's sessions
    with ``spinning=False`` for it).  Torch and ORT are never interleaved: OpenMP workers of
    torch and of the generated kernels spin for a while after each call and slowed the ORT call
    that followed (ResNet-18 batch 1: dense ORT 10.3 ms interleaved with the compiled model, 7.4
    ms on its own)."""
    from edgeguard.compiler.bench import interleaved_times

    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")

    def loop(fns, first: bool, flip: bool) -> list[list[float]]:
        if protocol == "in-turn":
            return interleaved_times(fns, repeats, warmup=2 if first else 1)
        got: list[list[float]] = [[] for _ in fns]
        # the blocks' order flips from round to round: a block that follows another model's
        # is not always the same model's
        for i in reversed(range(len(fns))) if flip else range(len(fns)):
            got[i] = interleaved_times([fns[i]], repeats, warmup=4 if first else 3)[0]
        return got

    times: list[list[float]] = [[] for _ in (*torch_fns, *ort_fns)]
    for r in range(rounds):
        first = loop(torch_fns, r == 0, r % 2 == 1)
        time.sleep(0.5)
        second = loop(ort_fns, r == 0, r % 2 == 1)
        time.sleep(0.5)
        for acc, got in zip(times, first + second, strict=True):
            acc.extend(got)
    return [statistics.median(t) for t in times]


def scheme_of(spec: str):
    """``"kgs"``, ``"column"``, ... or ``"kgs4x8"`` (KGS with groups of 4 filters x 8 channels)."""
    if spec.startswith("kgs") and "x" in spec:
        gm, gn = spec[3:].split("x")
        return get_scheme("kgs", gm=int(gm), gn=int(gn))
    return get_scheme(spec)


def end_to_end_2d(
    repeats: int,
    threads: int,
    models,
    batches,
    target: float,
    schemes,
    rounds: int = 3,
    protocol: str = "blocks",
):
    """2-D CIFAR models: compiled (edgeguard kernels) and edgeguard's ONNX export in ONNX Runtime
    against dense torch and the dense ONNX export (:func:`torch_then_ort`'s ``protocol``)."""

    from edgeguard.compiler.onnx_export import export_onnx

    rows = []
    for arch in models:
        torch.manual_seed(0)
        dense = build(arch, num_classes=10).eval()
        for scheme in schemes:
            model = build(arch, num_classes=10).eval()
            model.load_state_dict(dense.state_dict())
            prune_model(
                model, scheme_of(scheme), flops_reduction=target, input_shape=(1, 3, 32, 32)
            )
            red = count_flops(model, (1, 3, 32, 32)).reduction
            for batch in batches:
                shape = (batch, 3, 32, 32)
                x = torch.randn(*shape)
                comp = compile_model(model, "cpu", input_shape=shape)
                with tempfile.TemporaryDirectory() as tmp:
                    dpath, spath = Path(tmp) / "dense.onnx", Path(tmp) / "sparse.onnx"
                    export_plain(dense, x, dpath)
                    export_onnx(comp, spath, shape)
                    spin = protocol != "in-turn"
                    dsess = ort_session(dpath, threads, spin)
                    ssess = ort_session(spath, threads, spin)
                    feed = {"input": x.numpy()}
                    with torch.no_grad():
                        ref = model(x)
                        err = float((comp(x) - ref).abs().max() / ref.abs().max())
                        onnx_out = torch.from_numpy(ssess.run(None, feed)[0])
                        onnx_err = float((onnx_out - ref).abs().max() / ref.abs().max())
                        t_dense, t_comp, t_ort, t_export = torch_then_ort(
                            [partial(dense, x), partial(comp, x)],
                            [partial(dsess.run, None, feed), partial(ssess.run, None, feed)],
                            repeats,
                            rounds,
                            protocol,
                        )
                forms = sorted({m.standard_form() for m in comp.sparse_layers().values()})
                row = {
                    "model": arch,
                    "scheme": scheme,
                    "batch": batch,
                    "reduction": red,
                    "dense_torch_ms": t_dense,
                    "dense_ort_ms": t_ort,
                    "compiled_ms": t_comp,
                    "export_ort_ms": t_export,
                    "rel_err": err,
                    "export_rel_err": onnx_err,
                    "export_forms": forms,
                    "protocol": protocol,
                }
                rows.append(row)
                print(
                    f"{arch} {scheme} {red:.2f}x batch {batch}: dense torch {t_dense:.1f} ms, "
                    f"dense ORT {t_ort:.1f}, compiled {t_comp:.1f} (x{t_dense / t_comp:.2f} torch, "
                    f"x{t_ort / t_comp:.2f} ORT; target x{0.8 * red:.2f}), our export in ORT "
                    f"{t_export:.1f} (x{t_ort / t_export:.2f} dense export, forms {forms}); "
                    f"err {err:.1e} / {onnx_err:.1e}",
                    flush=True,
                )
    return rows


def peer_files(repeats: int, threads: int, out: Path) -> list[dict]:
    """Step 1 of benchmarks/deepsparse_peer.py: C3D (KGS 3.6x) and ResNet-18 CIFAR (KGS 3x) as
    dense and masked ONNX files, with edgeguard's compiled time and dense ORT's, timed in turn."""

    rows = []
    for arch, shape, target, classes in (
        ("c3d", (1, 3, 16, 112, 112), 3.6, 101),
        ("resnet18_cifar", (1, 3, 32, 32), 3.0, 10),
    ):
        torch.manual_seed(0)
        dense = build(arch, num_classes=classes).eval()
        model = build(arch, num_classes=classes).eval()
        model.load_state_dict(dense.state_dict())
        prune_model(model, "kgs", flops_reduction=target, input_shape=shape)
        red = count_flops(model, shape).reduction
        x = torch.randn(*shape)
        files = {}
        for tag, net in (("dense", dense), ("masked", model)):
            files[tag] = f"{arch}_{tag}.onnx"
            export_plain(net, x, out / files[tag], opset=13)
        comp = compile_model(model, "cpu", input_shape=shape)
        sess = ort_session(out / files["dense"], threads)
        feed = {"input": x.numpy()}
        with torch.no_grad():
            t_comp, t_ort = torch_then_ort(
                [partial(comp, x)], [partial(sess.run, None, feed)], repeats
            )
        row = {
            "model": arch,
            "scheme": "kgs",
            "reduction": red,
            "input_shape": list(shape),
            "dense_onnx": files["dense"],
            "masked_onnx": files["masked"],
            "compiled_ms": t_comp,
            "dense_ort_ms": t_ort,
        }
        rows.append(row)
        print(
            f"{arch} KGS {red:.2f}x: compiled {t_comp:.1f} ms, dense ORT {t_ort:.1f} ms",
            flush=True,
        )
    (out / "peers.json").write_text(json.dumps(rows, indent=1))
    return rows


def plot(layers, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    names = sorted({r["layer"] for r in layers}, key=[n for n, *_ in C3D_LAYERS].index)
    for name in names:
        rs = [r for r in layers if r["layer"] == name]
        ax.plot([r["reduction"] for r in rs], [r["speedup"] for r in rs], marker="o", label=name)
    top = max(r["reduction"] for r in layers)
    ax.plot([1, top], [1, top], "k--", lw=1, label="speedup = MAC reduction")
    ax.plot([1, top], [0.8, 0.8 * top], "k:", lw=1, label="0.8 x MAC reduction")
    ax.set_xlabel("MAC reduction (KGS)")
    ax.set_ylabel("speedup over dense torch conv3d")
    ax.set_title("C3D layers, batch 1, generated CPU kernels")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    fig.savefig(out, dpi=110, bbox_inches="tight")
    print(f"plot: {out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="2-D models: rounds of (torch-side loop, ORT loop), each of --repeats calls",
    )
    ap.add_argument("--only", choices=["layers", "e2e", "e2e2d", "peers"])
    ap.add_argument(
        "--protocol",
        choices=PROTOCOLS,
        default="blocks",
        help="2-D models: each model timed over blocks of calls (its steady state; ORT with its "
        "default spinning workers), or one call of each in turn (every call after another "
        "model's; ORT without spinning)",
    )
    ap.add_argument("--models2d", nargs="+", default=["resnet18_cifar", "vgg16_cifar"])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--schemes2d", nargs="+", default=["kgs", "column"])
    ap.add_argument("--target2d", type=float, default=3.0)
    ap.add_argument("--reductions", type=float, nargs="+", default=[2, 3, 4, 6, 8])
    ap.add_argument("--models", nargs="+", default=["c3d", "r2plus1d_18"])
    ap.add_argument("--targets", type=float, nargs="+", default=[2.5, 3.6])
    ap.add_argument("--out", default="runs/bench/sparse_inference")
    ap.add_argument(
        "--glibc-malloc",
        action="store_true",
        help="keep glibc's default allocator (large blocks mmap'ed and page-faulted on "
        "every call: a slower, state-dependent dense baseline)",
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    steady = False if args.glibc_malloc else steady_allocator()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(
        f"machine: {platform.processor() or platform.machine()}, threads {args.threads}, "
        f"torch {torch.__version__}, steady allocator {steady}",
        flush=True,
    )
    results = {
        "threads": args.threads,
        "date": time.strftime("%Y-%m-%d"),
        "steady_allocator": steady,
    }
    if args.only in (None, "layers"):
        results["layers"] = per_layer(args.reductions, args.repeats)
        plot(results["layers"], out / "layer_speedup.png")
    if args.only in (None, "e2e"):
        results["end_to_end"] = end_to_end(args.repeats, args.threads, args.models, args.targets)
    if args.only in (None, "e2e2d"):
        results["end_to_end_2d"] = end_to_end_2d(
            args.repeats,
            args.threads,
            args.models2d,
            args.batches,
            args.target2d,
            args.schemes2d,
            args.rounds,
            args.protocol,
        )
    if args.only == "peers":
        results["peers"] = peer_files(args.repeats, args.threads, out)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    print(f"results: {out / 'results.json'}")


if __name__ == "__main__":
    main()
