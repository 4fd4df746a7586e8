"""The backends a model compiles for, behind one protocol.

Each backend says what it lowers (sparse Linear layers, generated max pools, fused ReLUs), its
default filter block, how a :class:`~edgeguard.compiler.SparseConv` runs on it and what happens once
the model is lowered (build the kernels, move to the GPU).  ``compile_model`` and ``SparseConv`` ask
the backend instead of testing its name.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import TYPE_CHECKING

import torch

from ..registry import lookup
from .errors import CompileError

if TYPE_CHECKING:
    from .model import CompiledModel
    from .sparse_conv import SparseConv


class Backend:
    """Base: the standard-operator path (``"torch"``); subclasses override what differs."""

    name = "torch"
    sparse_linear = False  # pruned Linear layers become SparseLinear
    native_pools = False  # max pools get a generated kernel (MaxPoolCpu)
    native_depthwise = False  # depthwise convs get a generated kernel (DepthwiseConvCpu)
    fuses_relu = False  # a ReLU after a sparse conv is applied by its kernel
    fuses_residual = False  # a residual sum (and ReLU) after a sparse conv is added by its kernel
    keeps_unpruned_dense = True  # a layer with nothing pruned stays a dense op at any max_density
    builds_per_shape = False  # kernels are generated and built per input shape

    def register_tile(self) -> tuple[int, int]:
        """Default ``(filters per block, vectors per tile)``."""
        return (4, 3)

    def default_mr(self) -> int:
        return self.register_tile()[0]

    def block_sizes(self) -> tuple[int, ...]:
        """Filters per block the planner may choose per layer, the preferred one first."""
        return (self.default_mr(),)

    def check_mr(self, mr: int) -> None:
        """Refuse a block size the kernels cannot take (one-line CompileError)."""

    def run(
        self, conv: SparseConv, x: torch.Tensor, residual: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Run ``conv`` on ``x`` (5D, checked) with this backend's kernel (``residual``: 5D, the
        output's shape, for backends that fuse residual sums)."""
        return conv.forward_torch(x)

    def finish(self, compiled: CompiledModel, input_shape: tuple[int, ...] | None) -> None:
        """After lowering: build or move what this backend needs (nothing here)."""


class CpuBackend(Backend):
    """Generated C++ (edgeguard.compiler.cpu), built per layer and input size."""

    name = "cpu"
    sparse_linear = True
    native_pools = True
    native_depthwise = True
    fuses_relu = True
    fuses_residual = True
    keeps_unpruned_dense = False
    builds_per_shape = True

    def register_tile(self) -> tuple[int, int]:
        from .cpu import host_target

        return host_target().tile

    def block_sizes(self) -> tuple[int, ...]:
        # half blocks too: a kernel group of 4 (or 3, 5, ...) filters would otherwise share a
        # block of 8 with another group and store the union of their rows
        mr = self.default_mr()
        return (mr, mr // 2) if mr >= 8 else (mr,)

    def check_mr(self, mr: int) -> None:
        if mr not in CPU_BLOCK_SIZES:
            raise CompileError(
                f"mr (filters per block) must be one of {CPU_BLOCK_SIZES} for the cpu backend "
                f"(a vector of mr floats), got {mr}"
            )

    def run(
        self, conv: SparseConv, x: torch.Tensor, residual: torch.Tensor | None = None
    ) -> torch.Tensor:
        # named in torch.profiler traces only while profiling (the record has a per-call cost)
        label = (
            torch.profiler.record_function(f"sparse_conv:{conv.name}")
            if torch._C._autograd._profiler_enabled()
            else contextlib.nullcontext()
        )
        with torch.no_grad(), label:
            return conv.forward_cpu(x, residual)

    def finish(self, compiled: CompiledModel, input_shape: tuple[int, ...] | None) -> None:
        for i, shape in enumerate(compiled.input_shapes):  # pools fuse for the first shape only
            compiled.build_for(shape, fuse=i == 0)


class CudaBackend(Backend):
    """Triton kernels on a CUDA GPU."""

    name = "cuda"
    fuses_relu = True
    keeps_unpruned_dense = False

    def default_mr(self) -> int:
        return 16  # one tensor-core tile (docs/compiler.md, design decisions)

    def run(
        self, conv: SparseConv, x: torch.Tensor, residual: torch.Tensor | None = None
    ) -> torch.Tensor:
        with torch.no_grad():
            return conv.forward_cuda(x)

    def finish(self, compiled: CompiledModel, input_shape: tuple[int, ...] | None) -> None:
        compiled.to("cuda")


BACKENDS_BY_NAME: dict[str, Backend] = {b.name: b for b in (CpuBackend(), CudaBackend(), Backend())}
BACKENDS = ("cpu", "cuda", "auto", "torch")
CPU_BLOCK_SIZES = (1, 2, 4, 8, 16)


def get_backend(name: str) -> Backend:
    """The backend called ``name`` (``"cpu"``, ``"cuda"`` or ``"torch"``; resolve ``"auto"`` first)."""
    return lookup(BACKENDS_BY_NAME, name, "backend", CompileError)


def resolve_backend(backend: str) -> str:
    """``auto`` -> ``cuda`` when a GPU and Triton are available, else ``cpu``; ``cpu`` without a
    working compiler -> ``torch`` with a warning."""
    if backend not in BACKENDS:
        raise CompileError(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    if backend == "auto":
        backend = "cuda" if torch.cuda.is_available() and _has_triton() else "cpu"
    if backend == "cuda":
        if not torch.cuda.is_available():
            raise CompileError("backend 'cuda' needs a CUDA GPU; none is available (use 'cpu')")
        if not _has_triton():
            raise CompileError("backend 'cuda' needs Triton (pip install triton)")
    if backend == "cpu":
        from .cpu import CompilerUnavailable, host_target

        try:
            host_target()
        except CompilerUnavailable as err:
            warnings.warn(
                f"{err}: the compiled model uses the pure-PyTorch fallback (correct, not faster)",
                stacklevel=3,
            )
            backend = "torch"
    return backend


def _has_triton() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True
