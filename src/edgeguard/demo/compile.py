"""Demo section: compile the pruned C3D models to sparse code and time them against dense."""

from __future__ import annotations

from pathlib import Path

import torch

from ..engine import evaluate
from ..report import Report, plots
from .settings import DemoContext, DemoSettings


def compile_section(
    s: DemoSettings, out: Path, rep: Report, outcomes: dict, val, shape, quick: bool
) -> None:
    """Compile the pruned demo models and measure speedup against MAC reduction."""
    from torch import nn

    from ..compiler import compile_model
    from ..compiler.bench import paired_ms
    from ..sparsity import get_scheme

    rep.heading("Sparse inference: compiled models")
    threads = torch.get_num_threads()
    rows = []
    backend = "torch" if quick else "auto"  # quick (smoke-test) runs skip the C++ builds
    for name, res in outcomes.items():
        compiled = compile_model(res.model, backend, input_shape=shape)
        x = torch.randn(*shape)
        with torch.no_grad():
            ref = res.model.eval()(x)
            err = float((compiled(x) - ref).abs().max() / ref.abs().max())
            dense_ms, comp_ms = paired_ms(
                lambda m=res.model, x=x: m(x), lambda c=compiled, x=x: c(x), 5 if quick else 20
            )
        acc = evaluate(compiled, val)["accuracy"]
        kinds = {d.action for d in compiled.decisions}
        rows.append(
            (
                name,
                f"{res.flops.reduction:.2f}x",
                compiled.backend,
                ", ".join(sorted(kinds)),
                f"{err:.1e}",
                res.accuracy_finetuned,
                acc,
                dense_ms,
                comp_ms,
                f"{dense_ms / comp_ms:.2f}x",
            )
        )
    rep.table(
        [
            "model",
            "MAC reduction",
            "backend",
            "layers",
            "max rel. error",
            "acc. masked",
            "acc. compiled",
            "dense ms",
            "compiled ms",
            "speedup",
        ],
        rows,
    )
    # One full-size C3D layer (conv3b: 256 -> 256 channels at 8x28x28), KGS at several rates: the
    # demo model itself is too small for kernel timings to mean much.
    cin, size, reductions = (256, (8, 28, 28), (2, 3, 4)) if not quick else (32, (4, 8, 8), (4,))
    torch.manual_seed(s.seed)
    conv = nn.Sequential(nn.Conv3d(cin, cin, 3, padding=1)).eval()
    x = torch.randn(1, cin, *size)
    points = []
    for red in reductions:
        sparse = nn.Sequential(nn.Conv3d(cin, cin, 3, padding=1)).eval()
        sparse.load_state_dict(conv.state_dict())
        mask = get_scheme("kgs").mask(sparse[0].weight, 1 - 1 / red)
        with torch.no_grad():
            sparse[0].weight *= mask
        comp = compile_model(sparse, "auto", input_shape=tuple(x.shape), max_density=1.0)
        with torch.no_grad():  # dense and compiled timed alternately: the ratio survives drift
            dense_ms, ms = paired_ms(lambda: conv(x), lambda c=comp: c(x), 5)
        points.append((mask.numel() / mask.sum().item(), dense_ms / ms))
    plots.speedup_vs_flops(
        {f"C3D conv3b shape ({cin}->{cin}, {'x'.join(map(str, size))}), KGS": points},
        out / "speedup_vs_flops.png",
        f"generated kernels vs dense PyTorch, batch 1, {threads} threads",
    )
    rep.figure("speedup_vs_flops.png", "Speedup of the generated kernel against MAC reduction.")


def section(ctx: DemoContext) -> None:
    compile_section(
        ctx.settings,
        ctx.out,
        ctx.report,
        ctx.made["outcomes"],
        ctx.made["val"],
        ctx.made["shape"],
        ctx.quick,
    )
