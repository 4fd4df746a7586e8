"""Sparse inference compiler: turn a pruned model into generated code that is really faster.

``edgeguard.compile(model, backend)`` folds BatchNorm, physically shrinks filter/channel pruning, and
replaces every sparse conv by a kernel generated for its own pattern (C++ on the CPU, Triton on CUDA),
keeping the function of the masked model (float32 relative error <= 1e-4).
"""

from .backends import BACKENDS, Backend, get_backend, resolve_backend
from .build import build_kernels
from .compiler import compile_model
from .cpu import CompilerUnavailable
from .errors import CompileError
from .model import CompiledModel, LayerDecision
from .plan import ConvGeometry, SparsePlan, make_plan, plan_conv
from .sparse_conv import SparseConv
from .sparse_linear import SparseLinear

__all__ = [
    "BACKENDS",
    "Backend",
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
    "get_backend",
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
