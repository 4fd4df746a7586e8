"""TensorFlow.js graph models (``model.json`` + weight shards) as differentiable PyTorch modules.

(Over 400 lines on purpose: one converter method per TF op in one builder, next to the table of
supported ops and the TF numerics they share, so an op is added in one place.)

:func:`load_graph_model` turns the part of a TF.js graph that computes the requested outputs into a
``torch.fx.GraphModule``.  Its convolutions are real ``nn.Conv2d`` modules with their weights as
parameters (depthwise convolutions are grouped ones), so pruning, ``edgeguard.compile`` and ONNX export
take a loaded model like any other.  Only the ops in :data:`SUPPORTED` are translated, with
TensorFlow's semantics:

- ``SAME`` padding is TF's: the total padding ``max((ceil(n / s) - 1) * s + (k - 1) * d + 1 - n, 0)``,
  with the odd pixel at the end (bottom/right); symmetric cases stay in the conv, asymmetric ones get
  an explicit ``F.pad`` before it;
- ``ResizeBilinear``: the legacy mapping (``src = dst * in / out``) or half-pixel centres, both as in
  TF's kernel (horizontal interpolation first);
- weights quantised to float16 in the shards are widened to float32 (integers stay int32).

Layout: TF tensors are NHWC.  A 4-D NHWC tensor is kept as NCHW inside the module, and ``Transpose``
ops that only switch between the two layouts cost nothing.  The module's input is NCHW for an NHWC
placeholder (``[B, 3, H, W]``), as given otherwise.  Outputs come back in TF's layout.  The build
runs every op once on zeros of the placeholder's shape, so static shapes (SAME padding, resize sizes,
reshape targets) are known.  Reshape targets keep the batch dimension of the input.  Sub-graphs that
only compute shapes from constants are folded at build time.

Nothing here executes code from the files: the JSON is data and the shards are raw numbers.
"""

from __future__ import annotations

import base64
import json
import math
import operator
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from .base import DetectorError


class TFJSError(DetectorError):
    """A TF.js model that cannot be read or translated (the message names the file, node or op)."""


SUPPORTED = (
    "Placeholder",
    "Const",
    "Identity",
    "_FusedConv2D",
    "Conv2D",
    "DepthwiseConv2dNative",
    "FusedDepthwiseConv2dNative",
    "MaxPool",
    "Relu",
    "Relu6",
    "LeakyRelu",
    "Sigmoid",
    "Add",
    "AddV2",
    "Sub",
    "Mul",
    "Mean",
    "ConcatV2",
    "ResizeBilinear",
    "Pad",
    "PadV2",
    "Transpose",
    "Reshape",
    "SplitV",
    "SparseToDense",
    "Cast",
)

_DTYPES = {"float32": np.float32, "int32": np.int32, "bool": np.bool_}
_NHWC_TO_NCHW_AXIS = {0: 0, 1: 2, 2: 3, 3: 1}


def read_graph_model(path: str | Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """``(model.json as a dict, {weight name: array})``; float16-quantised weights become float32.

    Raises :class:`TFJSError` for a file that is not a TF.js graph model, missing or short shards, or a
    quantisation other than float16."""
    path = Path(path)
    try:
        model = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise TFJSError(f"cannot read the TF.js model {path}: {err}") from None
    if not isinstance(model, dict) or model.get("format") != "graph-model":
        raise TFJSError(f"{path} is not a TF.js graph model (format 'graph-model')")
    weights: dict[str, np.ndarray] = {}
    for group in model.get("weightsManifest", []):
        data = b""
        for shard in group["paths"]:
            file = path.parent / shard
            if Path(shard).name != shard or not file.is_file():
                raise TFJSError(f"weight shard {shard!r} of {path} is missing (expected beside it)")
            data += file.read_bytes()
        offset = 0
        for spec in group["weights"]:
            shape = [int(v) for v in spec["shape"]]
            count = math.prod(shape)
            quant = spec.get("quantization")
            if quant is not None and quant.get("dtype") != "float16":
                raise TFJSError(
                    f"{path}: weight {spec['name']!r} uses {quant.get('dtype')} "
                    "quantisation; only float16 is supported"
                )
            stored = np.float16 if quant is not None else _DTYPES.get(spec["dtype"])
            if stored is None:
                raise TFJSError(f"{path}: weight {spec['name']!r} has dtype {spec['dtype']!r}")
            size = count * np.dtype(stored).itemsize
            if offset + size > len(data):
                raise TFJSError(f"{path}: the weight shards end before {spec['name']!r}")
            arr = np.frombuffer(data, dtype=stored, count=count, offset=offset).reshape(shape)
            weights[spec["name"]] = arr.astype(np.float32) if quant is not None else arr.copy()
            offset += size
    return model, weights


def tf_resize_bilinear(x: torch.Tensor, size: tuple[int, int], half_pixel: bool) -> torch.Tensor:
    """TF's ``ResizeBilinear`` (``align_corners=False``) of an NCHW tensor to ``size`` (h, w): the
    legacy mapping ``src = dst * in / out`` or half-pixel centres ``src = (dst + 0.5) * in / out - 0.5``;
    differentiable in ``x``."""
    (ih, iw), (oh, ow) = x.shape[-2:], size
    if not half_pixel and (oh, ow) == (2 * ih, 2 * iw):  # FPN upsampling: no gathers needed
        return _double(_double(x, -1), -2)

    def axis(n_in: int, n_out: int):
        scale = n_in / n_out
        dst = torch.arange(n_out, dtype=torch.float64)
        src = (dst + 0.5) * scale - 0.5 if half_pixel else dst * scale
        low = torch.floor(src)
        lerp = (src - low).to(x.dtype)
        lo = low.clamp(min=0).long()
        hi = torch.ceil(src).clamp(max=n_in - 1).long()
        return lo.to(x.device), hi.to(x.device), lerp.to(x.device)

    y0, y1, ly = axis(ih, oh)
    x0, x1, lx = axis(iw, ow)
    # columns first on the smaller input; gather and index_select run several times faster than
    # advanced indexing, and the arithmetic is the same as rows first (bitwise equal outputs); the
    # lerps run in place on the fresh gathered tensors (no full-size temporaries; autograd-safe)
    shape = (*x.shape[:-1], ow)
    left, right = torch.gather(x, -1, x0.expand(shape)), torch.gather(x, -1, x1.expand(shape))
    cols = right.sub_(left).mul_(lx).add_(left)
    top, bottom = cols.index_select(-2, y0), cols.index_select(-2, y1)
    return bottom.sub_(top).mul_(ly[:, None]).add_(top)


def _double(x: torch.Tensor, dim: int) -> torch.Tensor:
    """The legacy mapping's exact 2x along ``dim`` (-1 or -2): output ``2k`` is input ``k``, output
    ``2k + 1`` is ``x[k] + (x[k + 1] - x[k]) * 0.5`` (the last index repeated at the end), the
    same arithmetic as the gathered lerp, interleaved by a stack (bitwise equal, 1.6-2.2x faster)."""
    n = x.shape[dim]
    nxt = torch.cat([x.narrow(dim, 1, n - 1), x.narrow(dim, n - 1, 1)], dim)
    half = (nxt - x).mul_(0.5).add_(x)
    return torch.stack([x, half], dim).flatten(dim - 1, dim)


class TFResizeBilinear(nn.Module):
    """``ResizeBilinear`` to a fixed ``size`` (h, w) of NCHW tensors (see :func:`tf_resize_bilinear`)."""

    channelwise = True  # channel i in, channel i out: channel pruning follows it

    def __init__(self, size: tuple[int, int], half_pixel: bool) -> None:
        super().__init__()
        self.size, self.half_pixel = (int(size[0]), int(size[1])), bool(half_pixel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return tf_resize_bilinear(x, self.size, self.half_pixel)

    def extra_repr(self) -> str:
        return f"size={self.size}, half_pixel={self.half_pixel}"


def same_padding(n: int, k: int, s: int, d: int = 1) -> tuple[int, int]:
    """TF's SAME padding (before, after) of one axis of size ``n`` for kernel ``k``, stride ``s``,
    dilation ``d``: the odd pixel goes after."""
    total = max((math.ceil(n / s) - 1) * s + (k - 1) * d + 1 - n, 0)
    return total // 2, total - total // 2


def _reshape_batch(x: torch.Tensor, rest: tuple[int, ...]) -> torch.Tensor:
    """Reshape keeping the batch dimension (TF.js graphs bake batch 1 into their shape constants)."""
    return x.reshape(x.shape[0], *rest)


@dataclass
class _Value:
    node: fx.Node | None  # None: a constant folded at build time
    value: Any  # example tensor (graph values) or numpy array (constants)
    nhwc: bool = False  # a 4-D NHWC TF tensor stored as NCHW

    @property
    def const(self) -> bool:
        return self.node is None


def _attr(node: dict, key: str, default: Any = None) -> Any:
    a = node.get("attr", {}).get(key)
    if a is None:
        return default
    if "s" in a:
        return base64.b64decode(a["s"]).decode()
    if "list" in a:
        lst = a["list"]
        if "i" in lst:
            return [int(v) for v in lst["i"]]
        if "s" in lst:
            return [base64.b64decode(v).decode() for v in lst["s"]]
        return []
    for k in ("i", "f", "b"):
        if k in a:
            return int(a[k]) if k == "i" else a[k]
    return default


def fold_bias_adds(gm: fx.GraphModule) -> int:
    """Fold ``conv(x) + b`` (``b`` a per-channel constant [1, C, 1, 1], the conv's only user) into
    the conv's bias, in place; returns how many.  Graphs exported with an unfused ``Add`` after each
    ``Conv2D`` (NanoDet) then hold their whole layer in one ``nn.Conv2d``, which pruners'
    dependency graphs, BatchNorm folding and the compiler's shrinking follow."""
    mods = dict(gm.named_modules())
    folded = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target is not operator.add or len(node.args) != 2:
            continue
        conv_node, const = node.args
        if getattr(const, "op", None) == "call_module":
            conv_node, const = const, conv_node
        conv = (
            mods.get(conv_node.target) if getattr(conv_node, "op", None) == "call_module" else None
        )
        if not isinstance(conv, nn.Conv2d) or len(conv_node.users) != 1:
            continue
        if getattr(const, "op", None) != "get_attr" or len(const.users) != 1:
            continue
        b = getattr(gm, const.target)
        if tuple(b.shape) != (1, conv.out_channels, 1, 1):
            continue
        with torch.no_grad():
            bias = b.reshape(-1).to(conv.weight.dtype)
            if conv.bias is None:
                conv.bias = nn.Parameter(bias.clone(), requires_grad=conv.weight.requires_grad)
            else:
                conv.bias.add_(bias)
        node.replace_all_uses_with(conv_node)
        gm.graph.erase_node(node)
        gm.graph.erase_node(const)
        delattr(gm, const.target)
        folded += 1
    if folded:
        gm.graph.lint()
        gm.recompile()
    return folded


class _Builder:
    def __init__(
        self,
        model: dict,
        weights: dict[str, np.ndarray],
        source: str,
        input_layout: str | None = None,
    ) -> None:
        self.input_layout = input_layout
        self.nodes = {n["name"]: n for n in model["modelTopology"]["node"]}
        self.weights = weights
        self.source = source
        self.graph = fx.Graph()
        self.root = nn.Module()
        self.env: dict[str, _Value] = {}
        self.names: set[str] = set()

    # -- emitting ---------------------------------------------------------------------------------
    def _unique(self, name: str) -> str:
        base = re.sub(r"\W", "_", name).strip("_") or "op"
        base = base if not base[0].isdigit() else "n" + base
        out, i = base, 1
        while out in self.names:
            out, i = f"{base}_{i}", i + 1
        self.names.add(out)
        return out

    def _arg(self, a: Any) -> Any:
        if isinstance(a, list | tuple):
            return type(a)(self._arg(v) for v in a)
        return a.node if isinstance(a, _Value) else a

    def _example(self, a: Any) -> Any:
        if isinstance(a, list | tuple):
            return type(a)(self._example(v) for v in a)
        return a.value if isinstance(a, _Value) else a

    def call(self, fn: Callable, *args: Any, nhwc: bool = False, **kwargs: Any) -> _Value:
        node = self.graph.call_function(
            fn, tuple(self._arg(a) for a in args), {k: self._arg(v) for k, v in kwargs.items()}
        )
        value = fn(
            *(self._example(a) for a in args), **{k: self._example(v) for k, v in kwargs.items()}
        )
        return _Value(node, value, nhwc)

    def module(self, name: str, mod: nn.Module, x: _Value, nhwc: bool = True) -> _Value:
        target = self._unique(name)
        self.root.add_module(target, mod)
        node = self.graph.call_module(target, (x.node,))
        with torch.no_grad():
            value = mod(x.value)
        return _Value(node, value, nhwc)

    def buffer(self, name: str, array: np.ndarray) -> _Value:
        target = self._unique(name)
        tensor = torch.from_numpy(np.ascontiguousarray(array))
        self.root.register_buffer(target, tensor)
        return _Value(self.graph.get_attr(target), tensor, False)

    # -- layouts ----------------------------------------------------------------------------------
    def stored_nchw(self, v: _Value) -> _Value:
        """``v`` as a 4-D NHWC TF tensor stored NCHW (``v`` is a plain NHWC one or already so)."""
        if v.nhwc:
            return v
        if v.const or v.value.dim() != 4:
            raise TFJSError(
                f"{self.source}: expected a 4-D NHWC tensor, got {tuple(v.value.shape)}"
            )
        return self.call(torch.permute, v, (0, 3, 1, 2), nhwc=True)

    def plain(self, v: _Value) -> _Value:
        """``v`` stored exactly in TF's layout."""
        return self.call(torch.permute, v, (0, 2, 3, 1)) if v.nhwc else v

    def const_like(self, c: np.ndarray, other: _Value, name: str) -> Any:
        """A constant operand of an elementwise op with ``other``, in ``other``'s storage layout."""
        if c.size == 1:
            return float(c.reshape(())) if c.dtype.kind == "f" else int(c.reshape(()))
        arr = c.astype(np.float32) if c.dtype.kind == "f" else c
        if other.nhwc:
            arr = arr.reshape((1,) * (4 - arr.ndim) + arr.shape).transpose(0, 3, 1, 2)
        return self.buffer(name, arr)

    # -- translation ------------------------------------------------------------------------------
    def inputs(self, node: dict) -> list[_Value]:
        return [self.value(i) for i in node.get("input", []) if not i.startswith("^")]

    def value(self, ref: str) -> _Value:
        name, _, index = ref.partition(":")
        key = name if index in ("", "0") else f"{name}:{index}"
        if key not in self.env:
            raise TFJSError(f"{self.source}: tensor {ref!r} is used before it is computed")
        return self.env[key]

    def order(self, outputs: Sequence[str]) -> list[str]:
        """Names of the nodes ``outputs`` depend on, inputs first."""
        done: set[str] = set()
        out: list[str] = []
        for start in outputs:
            stack = [(start.partition(":")[0], False)]
            while stack:
                name, expanded = stack.pop()
                if name in done:
                    continue
                if name not in self.nodes:
                    raise TFJSError(f"{self.source}: no node named {name!r}")
                if expanded:
                    done.add(name)
                    out.append(name)
                    continue
                stack.append((name, True))
                for i in self.nodes[name].get("input", []):
                    dep = i.lstrip("^").partition(":")[0]
                    if dep not in done:
                        stack.append((dep, False))
        return out

    def build(self, outputs: Sequence[str], input_shape: tuple[int, ...] | None) -> fx.GraphModule:
        order = self.order(outputs)
        unsupported = sorted({self.nodes[n]["op"] for n in order} - set(SUPPORTED))
        if unsupported:
            users = [n for n in order if self.nodes[n]["op"] in unsupported][:3]
            raise TFJSError(
                f"{self.source}: unsupported op(s) {', '.join(unsupported)} (at "
                f"{', '.join(users)}); supported: {', '.join(SUPPORTED)}"
            )
        for name in order:
            node = self.nodes[name]
            try:
                result = getattr(self, "op_" + node["op"].lstrip("_"))(node, input_shape)
            except TFJSError:
                raise
            except (RuntimeError, ValueError, IndexError, KeyError, TypeError) as err:
                raise TFJSError(
                    f"{self.source}: cannot translate {node['op']} node {name!r} ({err})"
                ) from None
            results = result if isinstance(result, list) else [result]
            for i, v in enumerate(results):
                self.env[name if i == 0 else f"{name}:{i}"] = v
        outs = []
        for o in outputs:
            v = self.value(o)
            if v.const:
                raise TFJSError(f"{self.source}: output {o!r} is a constant")
            outs.append(self.plain(v).node)
        self.graph.output(tuple(outs) if len(outs) > 1 else outs[0])
        gm = fx.GraphModule(self.root, self.graph, class_name="TFJSGraph")
        fold_bias_adds(gm)
        return gm

    # ops ---------------------------------------------------------------------------------------
    def op_Placeholder(self, node, input_shape):
        dims = [int(d.get("size", -1)) for d in node["attr"]["shape"]["shape"].get("dim", [])]
        if self.input_layout is not None:
            nhwc = len(dims) == 4 and self.input_layout == "NHWC"
        else:  # TF's default is NHWC; a channels-first image placeholder says so by its shape
            nhwc = len(dims) == 4 and not (dims[1] in (1, 3) and dims[3] not in (1, 3))
        default = [max(d, 1) for d in dims]
        if nhwc:
            default = [default[0], default[3], default[1], default[2]]
        shape = list(input_shape) if input_shape is not None else default
        example = torch.zeros(shape)  # given NCHW for an NHWC placeholder
        node_fx = self.graph.placeholder(self._unique(node["name"]))
        return _Value(node_fx, example, nhwc)

    def op_Const(self, node, _):
        name = node["name"]
        if name in self.weights:
            return _Value(None, self.weights[name])
        tensor = node.get("attr", {}).get("value", {}).get("tensor", {})
        if tensor.get("tensorShape", {}).get("dim") or "intVal" in tensor or "floatVal" in tensor:
            raise TFJSError(f"{self.source}: constant {name!r} has no weights entry")
        return _Value(None, np.zeros((0,), np.float32))

    def op_Identity(self, node, _):
        return self.inputs(node)[0]

    def op_Cast(self, node, _):
        (x,) = self.inputs(node)
        if not x.const:
            return x
        dst = {"DT_FLOAT": np.float32, "DT_INT32": np.int32, "DT_INT64": np.int64}
        return _Value(None, x.value.astype(dst[node["attr"]["DstT"]["type"]]))

    def _conv(self, node, depthwise: bool):
        ins = self.inputs(node)
        x, w = self.stored_nchw(ins[0]), ins[1]
        if _attr(node, "data_format", "NHWC") != "NHWC":
            raise TFJSError(f"{self.source}: {node['name']}: only NHWC convolutions are supported")
        fused = _attr(node, "fused_ops", []) or []
        if fused and fused[0] != "BiasAdd":
            raise TFJSError(f"{self.source}: {node['name']}: fused ops {fused} are not supported")
        bias = ins[2].value if fused else None
        sh, sw = _attr(node, "strides", [1, 1, 1, 1])[1:3]
        dh, dw = _attr(node, "dilations", [1, 1, 1, 1])[1:3]
        kernel = np.asarray(w.value, np.float32)
        kh, kw, cin, mult = kernel.shape
        if depthwise:  # [kh, kw, C, m] -> [C * m, 1, kh, kw]: output channel c * m + j
            weight, groups, cout = (
                kernel.transpose(2, 3, 0, 1).reshape(cin * mult, 1, kh, kw),
                cin,
                cin * mult,
            )
        else:
            weight, groups, cout = kernel.transpose(3, 2, 0, 1), 1, mult
        h, wd = x.value.shape[-2:]
        padding = _attr(node, "padding", "VALID")
        if padding == "SAME":
            (pt, pb), (pl, pr) = same_padding(h, kh, sh, dh), same_padding(wd, kw, sw, dw)
        elif padding == "VALID":
            pt = pb = pl = pr = 0
        else:
            raise TFJSError(f"{self.source}: {node['name']}: padding {padding!r} is not supported")
        symmetric = pt == pb and pl == pr
        if not symmetric:
            x = self.call(F.pad, x, (pl, pr, pt, pb), nhwc=True)
        conv = nn.Conv2d(
            x.value.shape[1],
            cout,
            (kh, kw),
            (sh, sw),
            padding=(pt, pl) if symmetric else 0,
            dilation=(dh, dw),
            groups=groups,
            bias=bias is not None,
        )
        with torch.no_grad():
            conv.weight.copy_(torch.from_numpy(np.ascontiguousarray(weight)))
            if bias is not None:
                conv.bias.copy_(torch.from_numpy(np.asarray(bias, np.float32)))
        out = self.module(node["name"], conv, x)
        for act in fused[1:]:
            out = self._activation(act, out, node)
        return out

    def _activation(self, act: str, x: _Value, node) -> _Value:
        if act == "Relu":
            return self.call(F.relu, x, nhwc=x.nhwc)
        if act == "Relu6":
            return self.call(F.relu6, x, nhwc=x.nhwc)
        if act == "LeakyRelu":
            return self.call(F.leaky_relu, x, _attr(node, "leakyrelu_alpha", 0.2), nhwc=x.nhwc)
        raise TFJSError(f"{self.source}: {node['name']}: fused activation {act!r} is not supported")

    def op_FusedConv2D(self, node, _):
        return self._conv(node, depthwise=False)

    def op_Conv2D(self, node, _):
        return self._conv(node, depthwise=False)

    def op_DepthwiseConv2dNative(self, node, _):
        return self._conv(node, depthwise=True)

    def op_FusedDepthwiseConv2dNative(self, node, _):
        return self._conv(node, depthwise=True)

    def op_MaxPool(self, node, _):
        x = self.stored_nchw(self.inputs(node)[0])
        kh, kw = _attr(node, "ksize")[1:3]
        sh, sw = _attr(node, "strides")[1:3]
        h, w = x.value.shape[-2:]
        if _attr(node, "padding") == "SAME":
            (pt, pb), (pl, pr) = same_padding(h, kh, sh), same_padding(w, kw, sw)
        else:
            pt = pb = pl = pr = 0
        if (pt, pl) != (pb, pr):  # TF's SAME max pool ignores padded pixels: pad with -inf
            x = self.call(F.pad, x, (pl, pr, pt, pb), value=-math.inf, nhwc=True)
            pt = pl = 0
        return self.module(node["name"], nn.MaxPool2d((kh, kw), (sh, sw), (pt, pl)), x)

    def op_Relu(self, node, _):
        return self._activation("Relu", self.inputs(node)[0], node)

    def op_Relu6(self, node, _):
        return self._activation("Relu6", self.inputs(node)[0], node)

    def op_LeakyRelu(self, node, _):
        x = self.inputs(node)[0]
        return self.call(F.leaky_relu, x, float(_attr(node, "alpha", 0.2)), nhwc=x.nhwc)

    def op_Sigmoid(self, node, _):
        x = self.inputs(node)[0]
        return self.call(torch.sigmoid, x, nhwc=x.nhwc)

    def _binary(self, node, fn: Callable, fold: Callable) -> _Value:
        a, b = self.inputs(node)
        if a.const and b.const:
            return _Value(None, fold(a.value, b.value))
        if a.const or b.const:
            t, c = (b, a) if a.const else (a, b)
            cv = self.const_like(np.asarray(c.value), t, node["name"] + "_const")
            args = (cv, t) if a.const else (t, cv)
            return self.call(fn, *args, nhwc=t.nhwc)
        if a.nhwc != b.nhwc:  # bring both to one layout
            if a.value.dim() == 4 and b.value.dim() == 4:
                a, b = self.stored_nchw(a), self.stored_nchw(b)
            else:
                a, b = self.plain(a), self.plain(b)
        return self.call(fn, a, b, nhwc=a.nhwc)

    def op_Add(self, node, _):
        return self._binary(node, operator.add, np.add)

    def op_AddV2(self, node, _):
        return self._binary(node, operator.add, np.add)

    def op_Sub(self, node, _):
        return self._binary(node, operator.sub, np.subtract)

    def op_Mul(self, node, _):
        return self._binary(node, operator.mul, np.multiply)

    def op_Mean(self, node, _):
        x, axes = self.inputs(node)
        keep = bool(_attr(node, "keep_dims", False))
        dims = [int(a) % x.value.dim() for a in np.atleast_1d(axes.value)]
        if x.nhwc and keep:
            return self.call(
                torch.mean, x, [_NHWC_TO_NCHW_AXIS[d] for d in dims], keepdim=True, nhwc=True
            )
        return self.call(torch.mean, self.plain(x), dims, keepdim=keep)

    def op_ConcatV2(self, node, _):
        *parts, axis = self.inputs(node)
        ax = int(axis.value)
        if any(p.const for p in parts):
            raise TFJSError(
                f"{self.source}: {node['name']}: concatenating constants is not supported"
            )
        if all(p.nhwc for p in parts):
            return self.call(torch.cat, parts, _NHWC_TO_NCHW_AXIS[ax % 4], nhwc=True)
        plain = [self.plain(p) for p in parts]
        return self.call(torch.cat, plain, ax)

    def op_ResizeBilinear(self, node, _):
        x, size = self.inputs(node)
        if _attr(node, "align_corners", False):
            raise TFJSError(f"{self.source}: {node['name']}: align_corners=True is not supported")
        oh, ow = (int(v) for v in np.asarray(size.value).reshape(-1))
        mod = TFResizeBilinear((oh, ow), bool(_attr(node, "half_pixel_centers", False)))
        return self.module(node["name"], mod, self.stored_nchw(x))

    def _pad(self, node, value: float):
        x, pads = self.inputs(node)[:2]
        p = np.asarray(pads.value, np.int64).reshape(-1, 2)
        if x.nhwc:
            p = p[[0, 3, 1, 2]]  # NHWC rows -> the stored NCHW order
        flat = tuple(int(v) for row in p[::-1] for v in row)  # F.pad: last dimension first
        return self.call(F.pad, x, flat, value=value, nhwc=x.nhwc)

    def op_Pad(self, node, _):
        return self._pad(node, 0.0)

    def op_PadV2(self, node, _):
        value = self.inputs(node)[2]
        return self._pad(node, float(np.asarray(value.value).reshape(())))

    def op_Transpose(self, node, _):
        x, perm = self.inputs(node)
        p = [int(v) for v in np.asarray(perm.value).reshape(-1)]
        if x.nhwc and p == [0, 3, 1, 2]:  # NHWC -> NCHW: the stored tensor already is
            return _Value(x.node, x.value, False)
        if not x.nhwc and x.value.dim() == 4 and p == [0, 2, 3, 1]:
            return _Value(x.node, x.value, True)
        return self.call(torch.permute, self.plain(x), tuple(p))

    def op_Reshape(self, node, _):
        x, shape = self.inputs(node)
        target = [int(v) for v in np.asarray(shape.value).reshape(-1)]
        x = self.plain(x)
        if target and target[0] == x.value.shape[0]:
            return self.call(_reshape_batch, x, tuple(target[1:]))
        return self.call(torch.reshape, x, tuple(target))

    def op_SplitV(self, node, _):
        x, sizes, dim = self.inputs(node)
        x = self.plain(x)
        parts = self.call(
            torch.split,
            x,
            [int(v) for v in np.asarray(sizes.value).reshape(-1)],
            int(np.asarray(dim.value).reshape(())),
        )
        return [self.call(operator.getitem, parts, i) for i in range(len(parts.value))]

    def op_SparseToDense(self, node, _):
        idx, shape, values, default = self.inputs(node)
        if not all(v.const for v in (idx, shape, values, default)):
            raise TFJSError(f"{self.source}: {node['name']}: SparseToDense needs constant inputs")
        out = np.full(np.asarray(shape.value).reshape(-1), np.asarray(default.value).reshape(()))
        ind = np.asarray(idx.value)
        ind = ind[:, None] if ind.ndim == 1 else ind
        vals = np.broadcast_to(np.asarray(values.value), (len(ind),))
        for i, v in zip(ind, vals, strict=True):
            out[tuple(i)] = v
        return _Value(None, out)


def load_graph_model(
    path: str | Path,
    outputs: Sequence[str],
    input_shape: tuple[int, ...] | None = None,
    input_layout: str | None = None,
) -> fx.GraphModule:
    """The sub-graph of the TF.js graph model at ``path`` that computes ``outputs`` (node names; a
    ``:0`` suffix is accepted), as an ``fx.GraphModule`` in eval mode taking one input: NCHW
    ``[B, C, H, W]`` for an NHWC image placeholder, otherwise the placeholder's own layout.
    ``input_layout``: the 4-D placeholder's TF layout, ``"NHWC"`` or ``"NCHW"`` (default: NHWC,
    TF's own, unless its shape is ``[N, 1 or 3, H, W]`` with a last size other than 1 or 3).
    ``input_shape`` (in the module's layout; default: the placeholder's, batch 1) fixes the spatial
    size.  Raises :class:`TFJSError` naming any unsupported op."""
    if input_layout not in (None, "NHWC", "NCHW"):
        raise TFJSError(f"input_layout must be 'NHWC', 'NCHW' or None, got {input_layout!r}")
    model, weights = read_graph_model(path)
    builder = _Builder(model, weights, str(path), input_layout)
    outs = [o[:-2] if o.endswith(":0") else o for o in outputs]
    gm = builder.build(outs, tuple(input_shape) if input_shape is not None else None)
    return gm.eval()


def fixed_graph_model(
    path: str | Path, outputs: Sequence[str], size: int, input_layout: str
) -> fx.GraphModule:
    """A pretrained detector's graph for ``size`` x ``size`` RGB inputs with frozen weights: attacks
    take gradients with respect to the pixels only."""
    gm = load_graph_model(path, outputs, (1, 3, size, size), input_layout)
    for p in gm.parameters():
        p.requires_grad_(False)
    return gm
