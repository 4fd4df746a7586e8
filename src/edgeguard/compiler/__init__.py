"""Sparse inference compiler: turn a pruned model into generated code that is really faster.

``edgeguard.compile(model, backend)`` (:func:`compile_model`) folds BatchNorm, physically shrinks filter/channel pruning, and
replaces every sparse conv by a kernel generated for its own pattern (C++ on the CPU, Triton on CUDA),
keeping the function of the masked model (float32 relative error <= 1e-4).
"""

from .backends import BACKENDS, Backend, get_backend, resolve_backend
from .build import build_kernels
from .cpu import CompilerUnavailable
from .errors import CompileError
from .model import CompiledModel, LayerDecision
from .pipeline import compile_model
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
