"""What the CPU modules whose kernel is generated and built per input size share (max pooling,
depthwise convolution): the kernel of a shape, built on first use when the compiler has not built
it, and the output buffer kept between calls."""

from __future__ import annotations

import ctypes

import torch
from torch import nn

from .calls import first_use


class GeneratedKernelModule(nn.Module):
    """Subclasses set ``symbol`` (the kernel's C name) and ``argtypes``, write ``source(x,
    vector_floats, target) -> (C++ text, None)`` and call :meth:`kernel_for` and :meth:`output`."""

    symbol = ""
    argtypes: tuple = ()

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self.mode = "cpu"  # "torch": PyTorch's op (while the compiler collects kernel sources)
        self.reuse_buffers = False  # CompiledModel turns it on: calls are then serialised
        self._kernels: dict[tuple, object] = {}
        self._out: dict[tuple, torch.Tensor] = {}

    def load_kernel(self, shape, lib, _extra=None) -> None:
        from .cpu import load_library

        fn = getattr(load_library(lib), self.symbol)
        fn.restype = None
        fn.argtypes = list(self.argtypes)
        self._kernels[tuple(shape)] = fn

    def kernel_for(self, x: torch.Tensor):
        """The kernel for inputs shaped like ``x`` (without the batch), built now if missing."""
        key = tuple(x.shape[1:])
        if key not in self._kernels:
            from .cpu import build_many, host_target

            target = host_target()
            (lib,) = build_many([self.source(x, target.vector_floats)[0]], target)
            self.load_kernel(key, lib)
        return self._kernels[key]

    def output(self, shape: tuple[int, ...]) -> torch.Tensor:
        """An output buffer of ``shape``: the kept one unless this module already ran in this
        compiled call (its output is still in use)."""
        out = self._out.get(shape) if first_use(self) else None
        if out is None:
            out = kernel_output(shape)
            if self.reuse_buffers and shape not in self._out:
                self._out = {shape: out}
        return out


VOID_P = ctypes.c_void_p
INT = ctypes.c_int

# zero floats after every kernel output: a stride-1 unpadded conv reading it can take it as its
# input buffer (its last tile reads up to one tile past the end) instead of copying it
OUTPUT_SLACK = 1024


def kernel_output(shape: tuple[int, ...]) -> torch.Tensor:
    """An uninitialised float32 tensor of ``shape`` followed by :data:`OUTPUT_SLACK` zeros."""
    n = 1
    for d in shape:
        n *= d
    flat = torch.empty(n + OUTPUT_SLACK)
    flat[n:].zero_()
    return flat[:n].view(shape)


def has_slack(x: torch.Tensor, floats: int) -> bool:
    """Whether ``x`` is a whole :func:`kernel_output` buffer (or one updated in place): contiguous
    float32 at the start of a storage that ends with the zero slack, of at least ``floats``."""
    size = (x.numel() + OUTPUT_SLACK) * x.element_size()
    return (
        floats <= OUTPUT_SLACK
        and x.dtype == torch.float32
        and x.storage_offset() == 0
        and x.is_contiguous()
        and x.untyped_storage().nbytes() == size
    )
