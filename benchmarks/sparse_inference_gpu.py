"""GPU check and benchmark of the Triton backend: KGS C3D at 3.6x fewer MACs against cuDNN dense.

Checks each Triton kernel against cuDNN float32 (TF32 off) on R(2+1)D/C3D-like shapes, then times
full C3D (101 classes, 1x3x16x112x112 and batch 8): dense cuDNN in TF32 and bf16 against the compiled
KGS model (Triton, float32 "ieee" and "tf32").  Writes results JSON to --out.  Run on a GPU machine:

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
from edgeguard.compiler.bench import median_ms
from edgeguard.models import build, count_flops
from edgeguard.sparsity import get_scheme, prune_model


def check_kernels() -> list[dict]:
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
        conv = nn.Conv3d(cin, cout, k, s, p).cuda()
        with torch.no_grad():
            conv.weight *= get_scheme("kgs").mask(conv.weight, 0.72)
        x = torch.randn(2, cin, *size, device="cuda")
        sc = SparseConv(plan_conv(conv.cpu(), mr=8), mode="cuda").cuda()
        conv.cuda()
        with torch.no_grad():
            ref = conv(x)
            y = sc(x)
        err = float((y - ref).abs().max() / ref.abs().max())
        rows.append({"shape": [cin, cout, str(k), str(s), list(size)], "rel_err": err})
        print(f"kernel {cin}->{cout} k={k} s={s} {size}: rel err {err:.2e}", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="runs/bench/gpu")
    ap.add_argument("--repeats", type=int, default=30)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    res: dict = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
    }
    import triton

    res["triton"] = triton.__version__
    print(res, flush=True)
    res["kernels"] = check_kernels()
    torch.backends.cudnn.benchmark = True
    shape1 = (1, 3, 16, 112, 112)
    torch.manual_seed(0)
    dense = build("c3d", num_classes=101).eval()
    model = build("c3d", num_classes=101).eval()
    model.load_state_dict(dense.state_dict())
    prune_model(model, "kgs", flops_reduction=3.6, input_shape=shape1)
    res["flops_reduction"] = count_flops(model, shape1).reduction
    dense = dense.cuda()
    masked = model.cuda()
    timings = {}
    for batch in (1, 8):
        x = torch.randn(batch, *shape1[1:], device="cuda")
        with torch.no_grad():
            torch.backends.cudnn.allow_tf32 = True
            torch.backends.cuda.matmul.allow_tf32 = True
            timings[f"dense_tf32_b{batch}"] = median_ms(lambda x=x: dense(x), args.repeats, 5)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                timings[f"dense_bf16_b{batch}"] = median_ms(lambda x=x: dense(x), args.repeats, 5)
            torch.backends.cudnn.allow_tf32 = False
            torch.backends.cuda.matmul.allow_tf32 = False
            timings[f"dense_fp32_b{batch}"] = median_ms(lambda x=x: dense(x), args.repeats, 5)
            ref = masked(x)
        for prec in ("ieee", "tf32"):
            compiled = compile_model(model.cpu(), "cuda", precision=prec)
            model.cuda()
            with torch.no_grad():
                y = compiled(x)
            err = float((y - ref).abs().max() / ref.abs().max())
            timings[f"kgs_{prec}_b{batch}"] = median_ms(
                lambda c=compiled, x=x: c(x), args.repeats, 5
            )
            timings[f"kgs_{prec}_b{batch}_rel_err"] = err
        print(
            {k: round(v, 4) if isinstance(v, float) else v for k, v in timings.items()}, flush=True
        )
    res["timings_ms"] = timings
    (out / "gpu_results.json").write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
