"""ONNX export of a compiled model with standard operators only.

Shrunk layers are ordinary ``Conv`` nodes; a sparse layer becomes either, per kernel location that any
filter keeps, ``Slice`` (the shifted window) + ``Gather`` (its kept input channels) + ``MatMul`` (the
kept weights), summed (the "gather" form), or one ``Conv`` with the pruned weights as zeros (the "conv"
form): the same arithmetic as the masked model, in operators every mobile runtime has.  The gather form
only saves time when the channels kept at each location (over all filters) are few (column or channel
pruning); for kernel-group and vanilla sparsity the union covers nearly every channel, so ``"auto"``
exports those layers as ``Conv`` and the file runs at the dense model's speed.  For the speed of the
sparsity itself, run the compiled model (edgeguard's own kernels).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch

from ..errors import EdgeguardError
from .pipeline import CompiledModel
from .sparse_conv import STANDARD_FORMS


class ExportError(EdgeguardError, RuntimeError):
    """The model could not be exported (missing ``onnx``/``onnxscript`` or an exporter failure)."""


def export_onnx(
    compiled: CompiledModel,
    path: str | Path,
    input_shape: tuple[int, ...],
    opset: int = 18,
    form: str = "auto",
) -> Path:
    """Write ``compiled`` to ``path`` as ONNX for inputs of ``input_shape`` (batch dimension
    dynamic); written to a temporary file then renamed, so a failed export leaves nothing behind.
    ``form`` is how sparse layers are written: ``"auto"`` (per layer, see
    :meth:`~edgeguard.compiler.SparseConv.standard_form`), ``"gather"`` or ``"conv"``."""
    if not isinstance(compiled, CompiledModel):
        raise ExportError("export_onnx takes the result of edgeguard.compile(...)")
    if form not in STANDARD_FORMS:
        raise ExportError(f"form must be one of {STANDARD_FORMS}, got {form!r}")
    try:
        import onnx  # noqa: F401
    except ImportError as err:
        raise ExportError(
            "ONNX export needs the onnx package (pip install onnx onnxscript)"
        ) from err
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    example = torch.randn(*input_shape)
    module = compiled.module.eval()
    layers = compiled.sparse_layers().values()
    before = [m.form for m in layers]
    for m in layers:
        m.form = form
        if m.standard_form() == "conv":
            m.conv_weight()  # built here, so the export holds it as a constant
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # The TorchScript exporter is deprecated in favour of torch.export, which does not yet
            # take the fx-transformed module; its notes (strided slices not folded, shape checks
            # traced as constants for this input size) are expected here.
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                (example,),
                str(tmp),
                input_names=["input"],
                output_names=["output"],
                opset_version=opset,
                dynamo=False,
                dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
            )
        os.replace(tmp, path)
    except Exception as err:
        tmp.unlink(missing_ok=True)
        raise ExportError(f"ONNX export failed: {type(err).__name__}: {err}") from err
    finally:
        for m, f in zip(layers, before, strict=True):
            m.form = f
    return path


def onnx_operators(path: str | Path) -> set[str]:
    """The operator types used by an ONNX file."""
    import onnx

    return {n.op_type for n in onnx.load(str(path)).graph.node}
