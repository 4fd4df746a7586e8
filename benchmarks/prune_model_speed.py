"""Time of one-shot structured pruning of a full-size C3D (78M parameters) to a global 2.5x FLOPs
target, per scheme, and the FLOPs reduction reached.  Prints a markdown table.

    .venv/bin/python benchmarks/prune_model_speed.py
"""

from __future__ import annotations

import platform
import time

import torch

from edgeguard.models import build, count_flops
from edgeguard.sparsity import prune_model

SHAPE = (1, 3, 16, 112, 112)


def main() -> None:
    torch.manual_seed(0)
    model = build("c3d")
    t0 = time.perf_counter()
    count_flops(model, SHAPE)
    forward = time.perf_counter() - t0
    print(
        f"# C3D one-shot pruning to 2.5x fewer MACs ({platform.machine()}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__})"
    )
    print(f"one dense forward pass for MAC counting: {forward:.2f} s\n")
    print("| scheme | seconds | FLOPs reduction | uniform rate |")
    print("|---|---|---|---|")
    for scheme in ("filter", "channel", "column", "vanilla", "kgs"):
        net = build("c3d")
        net.load_state_dict(model.state_dict())
        t0 = time.perf_counter()
        res = prune_model(net, scheme, flops_reduction=2.5, input_shape=SHAPE)
        dt = time.perf_counter() - t0
        red = count_flops(net, SHAPE).reduction
        print(f"| {scheme} | {dt:.2f} | {red:.3f} | {next(iter(res.rates.values())):.4f} |")


if __name__ == "__main__":
    main()
