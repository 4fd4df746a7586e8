"""Sparse inference compiler: turn a pruned model into generated code that is really faster.

``edgeguard.compile(model, backend)`` folds BatchNorm, physically shrinks filter/channel pruning, and
replaces every sparse conv by a kernel generated for its own pattern (C++ on the CPU, Triton on CUDA),
keeping the function of the masked model (float32 relative error <= 1e-4).
"""

from .compiler import (
    BACKENDS,
    CompiledModel,
    CompileError,
    LayerDecision,
    build_kernels,
    compile_model,
    resolve_backend,
)
from .cpu import CompilerUnavailable
from .plan import ConvGeometry, SparsePlan, make_plan, plan_conv
from .sparse_conv import SparseConv
from .sparse_linear import SparseLinear

__all__ = [
    "BACKENDS",
    "CompileError",
    "CompiledModel",
    "CompilerUnavailable",
    "ConvGeometry",
    "LayerDecision",
    "SparseConv",
    "SparseLinear",
    "SparsePlan",
    "build_kernels",
    "compile_model",
    "make_plan",
    "plan_conv",
    "resolve_backend",
]


class _CallableModule(__import__("types").ModuleType):
    """Makes ``edgeguard.compile(model, backend=...)`` work while ``edgeguard.compile`` stays the
    package that holds the compiler's pieces."""

    def __call__(self, model, backend: str = "auto", **kwargs) -> CompiledModel:
        return compile_model(model, backend, **kwargs)


__import__("sys").modules[__name__].__class__ = _CallableModule
