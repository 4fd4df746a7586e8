"""The TF.js graph-model loader, op by op, against hand-worked and NumPy references of TensorFlow's
semantics (NHWC, SAME padding with the odd pixel after, legacy and half-pixel bilinear resizing,
depthwise channel multipliers), on small graphs written here in the TF.js format."""

from __future__ import annotations

import base64
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from edgeguard.models.detectors.tfjs import (
    TFJSError,
    load_graph_model,
    read_graph_model,
    same_padding,
    tf_resize_bilinear,
)


def _s(text: str) -> dict:
    return {"s": base64.b64encode(text.encode()).decode()}


def _ints(*values: int) -> dict:
    return {"list": {"i": [str(v) for v in values]}}


def write_model(
    folder: Path,
    nodes: list[dict],
    weights: dict[str, np.ndarray],
    input_shape: list[int],
    float16: bool = True,
) -> Path:
    """A TF.js graph model (model.json + one shard) with ``nodes`` after an ``x`` placeholder."""
    folder.mkdir(parents=True, exist_ok=True)
    specs, data = [], b""
    for name, arr in weights.items():
        spec = {"name": name, "shape": list(arr.shape), "dtype": "float32"}
        if arr.dtype.kind == "i":
            spec["dtype"] = "int32"
            data += arr.astype(np.int32).tobytes()
        elif float16:
            spec["quantization"] = {"dtype": "float16", "original_dtype": "float32"}
            data += arr.astype(np.float16).tobytes()
        else:
            data += arr.astype(np.float32).tobytes()
        specs.append(spec)
    placeholder = {
        "name": "x",
        "op": "Placeholder",
        "attr": {
            "shape": {"shape": {"dim": [{"size": str(d)} for d in input_shape]}},
            "dtype": {"type": "DT_FLOAT"},
        },
    }
    consts = [{"name": n, "op": "Const", "attr": {}} for n in weights]
    model = {
        "format": "graph-model",
        "modelTopology": {"node": [placeholder, *consts, *nodes]},
        "weightsManifest": [{"paths": ["w.bin"], "weights": specs}],
    }
    (folder / "w.bin").write_bytes(data)
    path = folder / "model.json"
    path.write_text(json.dumps(model))
    return path


def conv_node(name, x, w, *, op="Conv2D", stride=1, padding="SAME", bias=None, acts=(), dil=1):
    attr = {
        "strides": _ints(1, stride, stride, 1),
        "padding": _s(padding),
        "data_format": _s("NHWC"),
        "dilations": _ints(1, dil, dil, 1),
    }
    inputs = [x, w]
    if bias is not None:
        inputs.append(bias)
        attr["fused_ops"] = {"list": {"s": [_s(a)["s"] for a in ("BiasAdd", *acts)]}}
    return {"name": name, "op": op, "input": inputs, "attr": attr}


def np_conv_nhwc(x, w, stride, padding, dilation=1, depthwise=False):
    """Direct NHWC convolution with TF's padding: x [N, H, W, C], w [kh, kw, C, M]."""
    n, h, wd, c = x.shape
    kh, kw, _, m = w.shape
    if padding == "SAME":
        (pt, pb), (pl, pr) = (
            same_padding(h, kh, stride, dilation),
            same_padding(wd, kw, stride, dilation),
        )
    else:
        pt = pb = pl = pr = 0
    xp = np.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    ho = (h + pt + pb - (kh - 1) * dilation - 1) // stride + 1
    wo = (wd + pl + pr - (kw - 1) * dilation - 1) // stride + 1
    out = np.zeros((n, ho, wo, c * m if depthwise else m))
    for i in range(ho):
        for j in range(wo):
            patch = xp[
                :,
                i * stride : i * stride + (kh - 1) * dilation + 1 : dilation,
                j * stride : j * stride + (kw - 1) * dilation + 1 : dilation,
                :,
            ]
            if depthwise:  # output channel c * m + k
                out[:, i, j] = np.einsum("nhwc,hwck->nck", patch, w).reshape(n, -1)
            else:
                out[:, i, j] = np.einsum("nhwc,hwcm->nm", patch, w)
    return out


def run(path: Path, outputs, x_nchw: np.ndarray):
    gm = load_graph_model(path, outputs, x_nchw.shape)
    with torch.no_grad():
        out = gm(torch.from_numpy(x_nchw.astype(np.float32)))
    return gm, out


def test_same_padding_puts_the_odd_pixel_after():
    # hand-worked: n=6, k=3, s=2 -> out 3, needs (3-1)*2+3-6 = 1 pixel: (0, 1)
    assert same_padding(6, 3, 2) == (0, 1)
    assert same_padding(7, 3, 2) == (1, 1)  # out 4: (4-1)*2+3-7 = 2
    assert same_padding(5, 1, 2) == (0, 0)
    assert same_padding(8, 3, 1) == (1, 1)
    assert same_padding(8, 4, 1) == (1, 2)  # even kernel: 3 pixels, the odd one after
    assert same_padding(8, 3, 1, 2) == (2, 2)  # dilation 2: an effective 5-tap kernel


def test_resize_bilinear_legacy_and_half_pixel_by_hand():
    x = torch.tensor([[[[0.0, 10.0]]]])  # 1 x 1 x 1 x 2 -> width 4
    legacy = tf_resize_bilinear(x, (1, 4), half_pixel=False)
    # src = dst * 2 / 4 = 0, 0.5, 1, 1.5 -> 0, 5, 10, 10 (clamped at the last pixel)
    assert legacy.flatten().tolist() == [0.0, 5.0, 10.0, 10.0]
    half = tf_resize_bilinear(x, (1, 4), half_pixel=True)
    # src = (dst + 0.5) / 2 - 0.5 = -0.25, 0.25, 0.75, 1.25 -> 0, 2.5, 7.5, 10
    assert half.flatten().tolist() == [0.0, 2.5, 7.5, 10.0]
    # downsizing 4 -> 3 (legacy): src = 0, 4/3, 8/3 of [0, 1, 2, 3]
    y = tf_resize_bilinear(torch.arange(4.0).view(1, 1, 1, 4), (1, 3), half_pixel=False)
    assert torch.allclose(y.flatten(), torch.tensor([0.0, 4 / 3, 8 / 3]))


def _legacy_resize_reference(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """TF's legacy ResizeBilinear by advanced indexing: src = dst * in / out, clamped above."""

    def axis(n_in: int, n_out: int):
        src = torch.arange(n_out, dtype=torch.float64) * n_in / n_out
        lo = src.floor().long()
        return lo, (lo + 1).clamp(max=n_in - 1), (src - lo).float()

    (y0, y1, ly), (x0, x1, lx) = axis(x.shape[-2], size[0]), axis(x.shape[-1], size[1])
    cols = x[..., x0] + (x[..., x1] - x[..., x0]) * lx
    return cols[..., y0, :] + (cols[..., y1, :] - cols[..., y0, :]) * ly[:, None]


@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (1, 4, 1, 1), (1, 2, 13, 13)])
def test_legacy_resize_by_exactly_two_equals_the_reference_with_its_gradient(shape):
    # the FPN upsampling's fast path (no gathers) against an independent reference, values and
    # gradients (the T-shirt attacks back-propagate through it)
    torch.manual_seed(3)
    x = torch.randn(*shape, requires_grad=True)
    size = (2 * shape[2], 2 * shape[3])
    ours = tf_resize_bilinear(x, size, half_pixel=False)
    ref = _legacy_resize_reference(x, size)
    assert ours.shape == ref.shape and torch.allclose(ours, ref, atol=1e-6)
    up = torch.randn_like(ref)
    (g_ours,) = torch.autograd.grad(ours, x, up)
    (g_ref,) = torch.autograd.grad(ref, x, up)
    assert torch.allclose(g_ours, g_ref, atol=1e-5)


def test_half_pixel_resize_equals_pytorch_bilinear():
    x = torch.rand(2, 3, 7, 9)
    for size in ((14, 18), (5, 4), (7, 9)):
        ours = tf_resize_bilinear(x, size, half_pixel=True)
        ref = torch.nn.functional.interpolate(x, size, mode="bilinear", align_corners=False)
        assert torch.allclose(ours, ref, atol=1e-6)


@pytest.mark.parametrize("size", [6, 7])
@pytest.mark.parametrize("stride", [1, 2])
def test_conv_same_padding_matches_tensorflow_semantics(tmp_path, size, stride):
    rng = np.random.default_rng(size * 10 + stride)
    w = rng.standard_normal((3, 3, 2, 4)).astype(np.float16).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float16).astype(np.float32)
    nodes = [conv_node("y", "x", "w", op="_FusedConv2D", stride=stride, bias="b", acts=("Relu6",))]
    path = write_model(tmp_path, nodes, {"w": w, "b": b}, [1, size, size, 2])
    x = rng.standard_normal((1, size, size, 2)) * 3
    gm, out = run(path, ["y"], x.transpose(0, 3, 1, 2))
    ref = np.clip(np_conv_nhwc(x, w, stride, "SAME") + b, 0, 6)
    assert out.shape == ref.shape and np.abs(out.numpy() - ref).max() < 1e-4
    convs = [m for m in gm.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 1 and convs[0].weight.requires_grad  # a real conv with parameters


@pytest.mark.parametrize("multiplier", [1, 2])
def test_depthwise_channel_multiplier_order(tmp_path, multiplier):
    rng = np.random.default_rng(multiplier)
    w = rng.standard_normal((3, 3, 3, multiplier)).astype(np.float32)
    nodes = [conv_node("y", "x", "w", op="DepthwiseConv2dNative", stride=2, padding="SAME")]
    path = write_model(tmp_path, nodes, {"w": w}, [1, 8, 8, 3], float16=False)
    x = rng.standard_normal((1, 8, 8, 3))
    _, out = run(path, ["y"], x.transpose(0, 3, 1, 2))
    ref = np_conv_nhwc(x, w, 2, "SAME", depthwise=True)
    assert np.abs(out.numpy() - ref).max() < 1e-4


def test_unfused_bias_adds_fold_into_their_conv_only_when_it_is_the_sole_user(tmp_path):
    rng = np.random.default_rng(3)
    w = rng.standard_normal((1, 1, 2, 3)).astype(np.float32)
    b, c = rng.standard_normal(3).astype(np.float32), rng.standard_normal(3).astype(np.float32)
    nodes = [
        conv_node("y", "x", "w", padding="VALID"),
        {"name": "yb", "op": "Add", "input": ["y", "b"]},  # y's only user: folds
        conv_node("z", "x", "w", padding="VALID"),
        {"name": "zc", "op": "AddV2", "input": ["c", "z"]},  # z also feeds "zz": stays an Add
        {"name": "zz", "op": "Mul", "input": ["z", "z"]},
    ]
    path = write_model(tmp_path, nodes, {"w": w, "b": b, "c": c}, [1, 4, 4, 2], float16=False)
    x = rng.standard_normal((1, 4, 4, 2))
    gm, (yb, zc, zz) = run(path, ["yb", "zc", "zz"], x.transpose(0, 3, 1, 2))
    plain = np_conv_nhwc(x, w, 1, "VALID")
    for got, ref in ((yb, plain + b), (zc, plain + c), (zz, plain * plain)):
        assert np.abs(got.numpy() - ref).max() < 1e-5  # outputs in TF layout (NHWC)
    convs = [m for m in gm.modules() if isinstance(m, nn.Conv2d)]
    assert [m.bias is not None for m in convs] == [True, False]
    assert np.allclose(convs[0].bias.detach().numpy(), b)
    adds = [n for n in gm.graph.nodes if n.op == "call_function" and "add" in str(n.target)]
    assert len(adds) == 1


def test_maxpool_mean_concat_pad_transpose_reshape_split_resize(tmp_path):
    """A small graph through every layout-sensitive op, against NumPy."""
    rng = np.random.default_rng(0)
    weights = {
        "axes": np.array([1, 2], np.int32),
        "cat_axis": np.array(3, np.int32),
        "pads": np.array([[0, 0], [1, 2], [0, 1], [0, 0]], np.int32),
        "perm": np.array([0, 3, 1, 2], np.int32),
        "shape": np.array([1, 4, -1], np.int32),
        "sizes": np.array([1, 3], np.int32),
        "split_dim": np.array(1, np.int32),
        "rsize": np.array([6, 10], np.int32),
        "scale": np.array([0.5, 2.0], np.float32),
    }
    pool = {
        "name": "pool",
        "op": "MaxPool",
        "input": ["x"],
        "attr": {
            "ksize": _ints(1, 3, 3, 1),
            "strides": _ints(1, 2, 2, 1),
            "padding": _s("SAME"),
            "data_format": _s("NHWC"),
        },
    }
    nodes = [
        pool,
        {"name": "scaled", "op": "Mul", "input": ["pool", "scale"]},
        {
            "name": "mean",
            "op": "Mean",
            "input": ["scaled", "axes"],
            "attr": {"keep_dims": {"b": True}},
        },
        {"name": "added", "op": "Add", "input": ["scaled", "mean"]},
        {"name": "cat", "op": "ConcatV2", "input": ["added", "scaled", "cat_axis"]},
        {"name": "padded", "op": "Pad", "input": ["cat", "pads"]},
        {
            "name": "resized",
            "op": "ResizeBilinear",
            "input": ["padded", "rsize"],
            "attr": {"align_corners": {"b": False}, "half_pixel_centers": {"b": False}},
        },
        {"name": "nchw", "op": "Transpose", "input": ["resized", "perm"]},
        {"name": "flat", "op": "Reshape", "input": ["nchw", "shape"]},
        {"name": "parts", "op": "SplitV", "input": ["flat", "sizes", "split_dim"]},
        {"name": "sig", "op": "Sigmoid", "input": ["parts:1"]},
    ]
    path = write_model(tmp_path, nodes, weights, [1, 7, 6, 2], float16=False)
    x = rng.standard_normal((1, 7, 6, 2)).astype(np.float32)
    _, (first, sig) = run(path, ["parts", "sig"], x.transpose(0, 3, 1, 2))
    # NumPy: SAME max pool of a 7 x 6 map, kernel 3 stride 2: pads (1, 1) rows, (0, 1) columns
    xp = np.pad(x, ((0, 0), (1, 1), (0, 1), (0, 0)), constant_values=-np.inf)
    pooled = np.stack(
        [
            np.stack([xp[:, 2 * i : 2 * i + 3, 2 * j : 2 * j + 3].max((1, 2)) for j in range(3)], 1)
            for i in range(4)
        ],
        1,
    )
    scaled = pooled * np.array([0.5, 2.0])
    added = scaled + scaled.mean((1, 2), keepdims=True)
    cat = np.concatenate([added, scaled], 3)
    padded = np.pad(cat, ((0, 0), (1, 2), (0, 1), (0, 0)))
    resized = tf_resize_bilinear(
        torch.from_numpy(padded.transpose(0, 3, 1, 2)).float(), (6, 10), half_pixel=False
    ).numpy()  # checked by hand above
    flat = resized.reshape(1, 4, -1)
    assert np.abs(first.numpy() - flat[:, :1]).max() < 1e-5
    assert np.abs(sig.numpy() - 1 / (1 + np.exp(-flat[:, 1:]))).max() < 1e-5


def test_batches_and_gradients_flow(tmp_path):
    rng = np.random.default_rng(3)
    w = rng.standard_normal((3, 3, 3, 2)).astype(np.float32)
    path = write_model(
        tmp_path, [conv_node("y", "x", "w", stride=2)], {"w": w}, [1, 9, 9, 3], float16=False
    )
    gm = load_graph_model(path, ["y"])
    x = torch.rand(3, 3, 9, 9, requires_grad=True)
    y = gm(x)
    assert y.shape == (3, 5, 5, 2)
    y.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_unsupported_ops_and_broken_files_are_named(tmp_path):
    nodes = [{"name": "y", "op": "Softplus", "input": ["x"]}]
    path = write_model(tmp_path / "a", nodes, {}, [1, 4, 4, 3])
    with pytest.raises(TFJSError, match=r"unsupported op\(s\) Softplus \(at y\)"):
        load_graph_model(path, ["y"])
    path = write_model(
        tmp_path / "b",
        [conv_node("y", "x", "w")],
        {"w": np.ones((3, 3, 3, 2), np.float32)},
        [1, 4, 4, 3],
    )
    (tmp_path / "b" / "w.bin").write_bytes(b"\0" * 10)
    with pytest.raises(TFJSError, match="end before 'w'"):
        read_graph_model(path)
    (tmp_path / "b" / "w.bin").unlink()
    with pytest.raises(TFJSError, match="weight shard 'w.bin'.*missing"):
        read_graph_model(path)
    (tmp_path / "c.json").write_text('{"format": "layers-model"}')
    with pytest.raises(TFJSError, match="not a TF.js graph model"):
        read_graph_model(tmp_path / "c.json")
    with pytest.raises(TFJSError, match="no node named 'nope'"):
        load_graph_model(write_model(tmp_path / "d", [], {}, [1, 4, 4, 3]), ["nope"])
    assert math.isfinite(1.0)


@pytest.mark.skipif(__import__("shutil").which("g++") is None, reason="no C++ compiler (g++) here")
def test_a_loaded_graph_is_pruned_and_compiled_like_any_model(tmp_path):
    from edgeguard.compiler import compile_model
    from edgeguard.sparsity import prune_model

    rng = np.random.default_rng(0)
    weights = {
        "w1": rng.standard_normal((3, 3, 3, 16)),
        "b1": rng.standard_normal(16),
        "w2": rng.standard_normal((3, 3, 16, 16)),
        "b2": rng.standard_normal(16),
    }
    nodes = [
        conv_node("a", "x", "w1", op="_FusedConv2D", stride=2, bias="b1", acts=("Relu",)),
        conv_node("y", "a", "w2", op="_FusedConv2D", bias="b2", acts=("Relu6",)),
    ]
    path = write_model(
        tmp_path,
        nodes,
        {k: v.astype(np.float32) for k, v in weights.items()},
        [1, 15, 15, 3],
        float16=False,
    )
    gm = load_graph_model(path, ["y"])
    prune_model(gm, "kgs", rates=0.5)
    x = torch.rand(2, 3, 15, 15)
    with torch.no_grad():
        ref = gm(x)
    compiled = compile_model(gm, "cpu", input_shape=(2, 3, 15, 15))
    assert [d.action for d in compiled.decisions] == ["sparse", "sparse"]
    assert torch.allclose(compiled(x), ref, atol=1e-4)
