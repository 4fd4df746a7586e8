"""Generated CPU elementwise sums: a residual sum no kernel took in (``a + b``, a ReLU after it
fused) and the field that shrinking adds back for removed constant channels
(:class:`~.passes.shrink.ConstantChannelField`).  Left as PyTorch ops they split the forward, which
then runs its Python between the kernels (``replay.py``): a filter-pruned ResNet with BatchNorm
shifts has both in every block."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .generated import INT, VOID_P, GeneratedKernelModule
from .passes.shrink import ConstantChannelField


class _Sum(GeneratedKernelModule):
    two_d = False  # build_kernels: the first input's shape is used as it is
    symbol = "edgeguard_eltwise"
    argtypes = (VOID_P,) * 4 + (INT, INT)
    broadcast = False  # the second operand: one sample for the whole batch

    def __init__(self, name: str, relu: bool = False) -> None:
        super().__init__(name)
        self.relu = relu

    def source(self, x: torch.Tensor, vector_floats: int, target=None) -> tuple[str, None]:
        n = math.prod(x.shape[1:])
        return self.render(
            "eltwise.cpp",
            f"elementwise sum {self.name}",
            {"N": n, "BB": not self.broadcast, "RELU": self.relu},
        )

    def _act(self, y: torch.Tensor) -> torch.Tensor:
        return F.relu(y) if self.relu else y

    def _sum(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        b = b.contiguous()
        return self.run_kernel(a, tuple(a.shape), b, b)

    def extra_repr(self) -> str:
        return f"relu={self.relu}"


class AddCpu(_Sum):
    """``relu?(a + b)`` for two float32 CPU tensors of one shape ``[N, ...]`` (at least 2-D), in a
    generated kernel; any other operands (broadcasting, scalars, other dtypes) and the torch mode
    run PyTorch's ops."""

    def forward_torch(self, a: torch.Tensor, b: object) -> torch.Tensor:
        return self._act(a + b)

    def forward(self, a: torch.Tensor, b: object) -> torch.Tensor:
        if (
            not isinstance(a, torch.Tensor)
            or a.dim() < 2  # a scalar, a vector: no batch of samples
            or a.numel() == 0
            or self.standard_path(a)
            or not isinstance(b, torch.Tensor)
            or self.standard_path(b)  # (float32 on the CPU, no gradient)
            or b.shape != a.shape
        ):
            return self.forward_torch(a, b)
        return self._sum(a, b)


class FieldAddCpu(_Sum):
    """``relu?(out + field)``: the contribution of a conv's removed constant input channels
    (``field``, computed once per input size) added to its output ``out``, in a generated kernel
    (the field one sample, for the whole batch).  Called as ``(out, consumer_input)``."""

    broadcast = True

    def __init__(self, field: ConstantChannelField, name: str, relu: bool = False) -> None:
        super().__init__(name, relu)
        self.field_module = field

    def forward_torch(self, out: torch.Tensor, consumer_input: torch.Tensor) -> torch.Tensor:
        return self._act(self.field_module(consumer_input, out))

    def forward(self, out: torch.Tensor, consumer_input: torch.Tensor) -> torch.Tensor:
        if self.standard_path(out):
            return self.forward_torch(out, consumer_input)
        field = self.field_module.field(tuple(consumer_input.shape[2:]))
        if field.dtype != torch.float32 or tuple(field.shape[1:]) != tuple(out.shape[1:]):
            return self.forward_torch(out, consumer_input)
        return self._sum(out, field)
