"""Latency of a compiled model against the dense model, per layer and end to end (same process)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from ..models.flops import count_flops
from ..models.surgery import layer_inputs
from .depthwise import DepthwiseConvCpu
from .passes.graph import CONVS
from .pipeline import CompiledModel
from .pointwise_depthwise import PointwiseDepthwiseCpu
from .sparse_conv import SparseConv
from .sparse_linear import SparseLinear


def steady_allocator() -> bool:
    """Make glibc's malloc keep freed memory for reuse instead of mapping every large block fresh.

    By default glibc serves blocks over a (dynamic, at most 32 MB) threshold with ``mmap`` and
    unmaps them on ``free``, so a dense conv whose output passes it (C3D's conv1: 51 MB; conv2: 26
    MB until the threshold has grown) page-faults its whole output on every call (docs/compiler.md,
    design decisions).  Whether a
    given call pays depends on what the process freed before, so benchmarks that compare against
    dense PyTorch call this first: the baseline is then the faster, stable one.  Process-wide and
    irreversible; returns False where it does not apply (not glibc)."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_max = -1, -4
    # no mmap'ed blocks, and freed memory at the top of the heap is kept (up to 1 GiB)
    return bool(mallopt(m_mmap_max, 0)) and bool(mallopt(m_trim_threshold, 1 << 30))


def interleaved_times(
    fns: list[Callable[[], object]], repeats: int = 10, warmup: int = 2
) -> list[list[float]]:
    """Wall times (ms) of each of ``fns``, called in turn ``repeats`` times after ``warmup``
    rounds, so that a slow spell of a shared machine hits them all (CUDA is synchronised around
    each call)."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    for _ in range(warmup):
        for fn in fns:
            fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, acc in zip(fns, times, strict=True):
            sync()
            t = time.perf_counter()
            fn()
            sync()
            acc.append(1e3 * (time.perf_counter() - t))
    return times


def interleaved_ms(
    fns: list[Callable[[], object]], repeats: int = 10, warmup: int = 2
) -> list[float]:
    """Median wall time (ms) of each of ``fns``, timed in turn within every repeat
    (:func:`interleaved_times`)."""
    return [statistics.median(t) for t in interleaved_times(fns, repeats, warmup)]


def median_ms(fn: Callable[[], object], repeats: int = 10, warmup: int = 2) -> float:
    """Median wall time of ``fn()`` in milliseconds."""
    return interleaved_ms([fn], repeats, warmup)[0]


def paired_ms(
    fa: Callable[[], object], fb: Callable[[], object], repeats: int = 10, warmup: int = 2
) -> tuple[float, float]:
    """Medians (ms) of ``fa`` and ``fb`` timed alternately: the ratio is what benchmarks report."""
    ma, mb = interleaved_ms([fa, fb], repeats, warmup)
    return ma, mb


@dataclass
class LayerTiming:
    """One compiled layer against the dense layer(s) it replaces; ``covers``: the dense layers a
    fused kernel stands for (a 1x1 conv and its depthwise conv), timed one after the other."""

    name: str
    action: str
    density: float
    dense_ms: float
    compiled_ms: float
    covers: tuple[str, ...] = ()

    @property
    def speedup(self) -> float:
        return self.dense_ms / self.compiled_ms if self.compiled_ms > 0 else float("nan")


@dataclass
class BenchResult:
    """End-to-end and per-layer latency; ``flops_reduction`` = dense MACs / kept MACs."""

    dense_ms: float
    compiled_ms: float
    flops_reduction: float
    layers: list[LayerTiming] = field(default_factory=list)

    @property
    def speedup(self) -> float:
        return self.dense_ms / self.compiled_ms

    def table(self) -> str:
        rows = [
            f"{'layer':28s} {'action':8s} {'density':>7s} {'dense ms':>9s} {'compiled ms':>11s} "
            f"{'speedup':>7s}"
        ]
        for t in self.layers:
            rows.append(
                f"{t.name:28s} {t.action:8s} {t.density:7.3f} {t.dense_ms:9.2f} "
                f"{t.compiled_ms:11.2f} {t.speedup:7.2f}"
            )
        rows.append(
            f"end to end: dense {self.dense_ms:.1f} ms, compiled {self.compiled_ms:.1f} ms, "
            f"speedup {self.speedup:.2f}x at {self.flops_reduction:.2f}x fewer MACs"
        )
        return "\n".join(rows)


def benchmark(
    model: nn.Module,
    compiled: CompiledModel,
    input_shape: tuple[int, ...],
    repeats: int = 10,
    per_layer: bool = True,
) -> BenchResult:
    """Time ``model`` with dense weights (what PyTorch runs without a compiler: masks do not make
    it faster) against ``compiled`` on one random input of ``input_shape``."""
    device = next(compiled.parameters(), next(compiled.buffers(), torch.zeros(0))).device
    x = torch.randn(*input_shape, device=device)
    dense = model.to(device).eval()
    with torch.no_grad():
        dense_ms, compiled_ms = paired_ms(lambda: dense(x), lambda: compiled(x), repeats)
    reduction = count_flops(model.cpu(), tuple(input_shape)).reduction
    dense.to(device)
    result = BenchResult(dense_ms, compiled_ms, reduction)
    if not per_layer:
        return result
    dense_in = layer_inputs(dense, x, (*CONVS, nn.Linear))
    kinds = (*CONVS, nn.Linear, SparseConv, SparseLinear, DepthwiseConvCpu, PointwiseDepthwiseCpu)
    comp_in = layer_inputs(compiled.module, x, kinds)
    by_name = {d.name: d for d in compiled.decisions}
    dense_mods = dict(dense.named_modules())
    comp_mods = dict(compiled.module.named_modules())
    # fused 1x1 + depthwise kernels by their 1x1 conv's name
    pairs = {m.fused_from[0]: m for m in comp_mods.values() if isinstance(m, PointwiseDepthwiseCpu)}
    with torch.no_grad():
        for name, xin in dense_in.items():
            if name not in by_name or isinstance(comp_mods.get(name), PointwiseDepthwiseCpu):
                continue  # a fused depthwise conv is timed with its 1x1 conv
            pair = pairs.get(name)
            if pair is not None and pair.fused_from[1] in dense_in:
                pw, dw = pair.fused_from
                d_ms, c_ms = paired_ms(
                    lambda a=dense_mods[pw], b=dense_mods[dw], u=xin, v=dense_in[dw]: (a(u), b(v)),
                    lambda m=pair, v=comp_in[dw]: m(v),
                    repeats,
                )
                dec = by_name[name]
                result.layers.append(
                    LayerTiming(name, dec.action, dec.density, d_ms, c_ms, (pw, dw))
                )
                continue
            if name not in comp_in:
                continue
            d_ms, c_ms = paired_ms(
                lambda m=dense_mods[name], v=xin: m(v),
                lambda m=comp_mods[name], v=comp_in[name]: m(v),
                repeats,
            )
            dec = by_name[name]
            result.layers.append(LayerTiming(name, dec.action, dec.density, d_ms, c_ms))
    return result
