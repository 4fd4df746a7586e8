"""GPU check and benchmark of the Triton backend: KGS C3D at 3.6x fewer MACs against cuDNN dense.

Checks each Triton kernel against cuDNN float32 (TF32 off) on R(2+1)D/C3D-like shapes, then times
full C3D (101 classes, 1x3x16x112x112 and batch 8): dense cuDNN in TF32, bf16 (autocast) and fp32
against the compiled KGS model (Triton; TF32, bf16 and float32 products), with the default launch
and with each layer's launch tuned (:func:`edgeguard.compiler.triton_backend.tune_model`), for 16-
32- and 64-filter blocks; per layer, the tuned sparse time against the dense conv's.  Writes
``gpu_results.json`` to --out after every section (a run cut short keeps what it measured).  Run on
a GPU machine:

    PYTHONPATH=src python3 benchmarks/sparse_inference_gpu.py --out runs/bench/gpu
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch import nn

from edgeguard.compiler import SparseConv, compile_model, plan_conv
from edgeguard.compiler.bench import layer_inputs, median_ms
from edgeguard.compiler.triton_backend import DEFAULT_CONFIGS, tune_model
from edgeguard.models import build, count_flops
from edgeguard.sparsity import get_scheme, prune_model

SHAPE = (1, 3, 16, 112, 112)


def check_kernels() -> list[dict]:
    """Each kernel against cuDNN float32 (TF32 off) on C3D / R(2+1)D-like shapes."""
    rows = []
    torch.backends.cudnn.allow_tf32 = False
    cases = [
        (64, 128, 3, 1, 1, (16, 56, 56)),
        (256, 256, 3, 1, 1, (8, 28, 28)),
        (64, 144, (1, 3, 3), (1, 2, 2), (0, 1, 1), (8, 28, 28)),
        (144, 128, (3, 1, 1), (2, 1, 1), (1, 0, 0), (8, 14, 14)),
    ]
    for cin, cout, k, s, p, size in cases:
        torch.manual_seed(0)
        conv = nn.Conv3d(cin, cout, k, s, p)
        with torch.no_grad():
            conv.weight *= get_scheme("kgs").mask(conv.weight, 0.72)
        x = torch.randn(2, cin, *size, device="cuda")
        sc = SparseConv(plan_conv(conv, mr=16), mode="cuda").cuda()
        conv.cuda()
        row = {"shape": [cin, cout, str(k), str(s), list(size)]}
        with torch.no_grad():
            ref = conv(x)
            for prec in ("ieee", "tf32", "bf16"):
                sc.precision = prec
                y = sc(x)
                row[f"rel_err_{prec}"] = float((y - ref).abs().max() / ref.abs().max())
        rows.append(row)
        print("kernel", row, flush=True)
    return rows


def dense_times(dense: nn.Module, x: torch.Tensor, repeats: int) -> dict[str, float]:
    """cuDNN (autotuned) in TF32, bf16 autocast and plain float32, end to end (ms)."""
    out = {}
    with torch.no_grad():
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cuda.matmul.allow_tf32 = True
        out["tf32"] = median_ms(lambda: dense(x), repeats, 5)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out["bf16"] = median_ms(lambda: dense(x), repeats, 5)
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
        out["fp32"] = median_ms(lambda: dense(x), repeats, 5)
        torch.backends.cudnn.allow_tf32 = True
    return out


def dense_layer_times(dense: nn.Module, x: torch.Tensor, repeats: int) -> dict[str, float]:
    """Each dense conv alone on its own input, cuDNN TF32 (ms), by the compiled model's names."""
    convs = dict(dense.named_modules())
    with torch.no_grad():
        return {
            n: median_ms(lambda m=convs[n], a=a: m(a), repeats, 3)
            for n, a in layer_inputs(dense, x, (nn.Conv3d,)).items()
        }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="runs/bench/gpu")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--budget-s", type=float, default=300, help="skip sections started after this")
    args = ap.parse_args()
    t0 = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    import triton

    res: dict = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "configs_tried": [c.__dict__ for c in DEFAULT_CONFIGS],
    }

    def save(section: str) -> None:
        res.setdefault("sections_s", {})[section] = round(time.perf_counter() - t0, 1)
        (out / "gpu_results.json").write_text(json.dumps(res, indent=1, default=str))
        print(f"[{time.perf_counter() - t0:.0f} s] {section} done", flush=True)

    print(res, flush=True)
    res["kernels"] = check_kernels()
    save("kernels")
    torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    dense = build("c3d", num_classes=101).eval()
    model = build("c3d", num_classes=101).eval()
    model.load_state_dict(dense.state_dict())
    prune_model(model, "kgs", flops_reduction=3.6, input_shape=SHAPE)
    res["flops_reduction"] = count_flops(model, SHAPE).reduction
    dense, masked = dense.cuda(), model.cuda()
    xs = {b: torch.randn(b, *SHAPE[1:], device="cuda") for b in (8, 1)}
    res["dense_ms"] = {b: dense_times(dense, x, args.repeats) for b, x in xs.items()}
    res["dense_layer_ms_b8"] = dense_layer_times(dense, xs[8], args.repeats)
    with torch.no_grad():
        refs = {b: masked(x) for b, x in xs.items()}
    save("dense")
    print(res["dense_ms"], flush=True)
    res["sparse"] = {}
    for mr in (16, 32, 64):
        if time.perf_counter() - t0 > args.budget_s:
            break
        compiled = compile_model(model.cpu(), "cuda", precision="tf32", mr=mr)
        model.cuda()
        n_sparse = len(compiled.sparse_layers())
        entry: dict = {
            "sparse_layers": n_sparse,
            "decisions": [[d.name, d.action, round(d.density, 4)] for d in compiled.decisions],
        }
        res["sparse"][f"mr{mr}"] = entry

        def run_all(tag: str, compiled=compiled, entry=entry, mr=mr) -> None:
            for b, x in xs.items():
                for prec in ("tf32", "bf16", "ieee"):
                    for m in compiled.sparse_layers().values():
                        m.precision = prec
                    with torch.no_grad():
                        y = compiled(x)
                        err = float((y - refs[b]).abs().max() / refs[b].abs().max())
                        ms = median_ms(lambda x=x: compiled(x), args.repeats, 5)
                    entry[f"{tag}_{prec}_b{b}"] = {"ms": ms, "rel_err": err}
                    print(mr, tag, prec, b, round(ms, 3), f"{err:.1e}", flush=True)

        run_all("default")
        save(f"mr{mr} default")
        if time.perf_counter() - t0 > args.budget_s:
            break
        for m in compiled.sparse_layers().values():
            m.precision = "tf32"
        report = tune_model(compiled, xs[8], repeats=10)
        entry["tuned_b8"] = {
            n: {
                **r,
                "config": r["config"].__dict__,
                "dense_tf32_ms": res["dense_layer_ms_b8"].get(n),
            }
            for n, r in report.items()
        }
        save(f"mr{mr} tune")
        run_all("tuned")
        save(f"mr{mr} tuned")
    print(json.dumps(res, indent=1, default=str))


if __name__ == "__main__":
    main()
