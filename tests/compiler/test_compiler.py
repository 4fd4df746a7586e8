"""edgeguard.compile on whole models: same function as the masked model, layers decided as documented."""

import shutil

import pytest
import torch
from torch import nn

import edgeguard
from edgeguard.compiler import CompileError, SparseConv, compile_model
from edgeguard.masks import mask_of
from edgeguard.models import build
from edgeguard.sparsity import prune_model

needs_cxx = pytest.mark.skipif(shutil.which("g++") is None, reason="no C++ compiler (g++) here")
BACKENDS = ["torch", pytest.param("cpu", marks=needs_cxx)]


def randomise_batchnorm(model: nn.Module) -> nn.Module:
    """Non-trivial BatchNorm statistics, so folding and removed-channel constants are exercised."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=g) * 0.6 - 0.3)
    return model.eval()


MODELS = {
    "c3d": (
        lambda: build("c3d", num_classes=12, width=0.125, clip_size=[16, 16, 16], batch_norm=True),
        (2, 3, 16, 16, 16),
    ),
    "c3d_bias": (
        lambda: build("c3d", num_classes=12, width=0.125, clip_size=[16, 16, 16]),
        (1, 3, 16, 16, 16),
    ),
    "r2plus1d": (lambda: build("r2plus1d_18", num_classes=5, width=0.125), (2, 3, 4, 24, 24)),
    "resnet": (lambda: build("resnet18_cifar", num_classes=10, width=0.25), (2, 3, 16, 16)),
    "digits": (lambda: build("digits_cnn"), (2, 1, 8, 8)),  # a 2D max pool
    # depthwise convs, ReLU6, residual sums without a ReLU
    "mobilenet": (lambda: build("mobilenet_v2_cifar", width=0.5), (2, 3, 32, 32)),
}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a - b).abs().max() / b.abs().max()).detach())


SCHEMES = ["kgs", "vanilla", "filter", "channel", "column"]
FAST = {("c3d", s) for s in SCHEMES} | {
    ("c3d_bias", "filter"),
    ("r2plus1d", "kgs"),
    ("r2plus1d", "channel"),
    ("resnet", "kgs"),
    ("digits", "kgs"),
    ("mobilenet", "kgs"),
}
CASES = [
    pytest.param(a, s, marks=() if (a, s) in FAST else pytest.mark.slow)
    for a in MODELS
    for s in SCHEMES
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("arch", "scheme"), CASES)
def test_compiled_model_computes_the_masked_model(arch, scheme, backend):
    torch.manual_seed(0)
    factory, shape = MODELS[arch]
    model = randomise_batchnorm(factory())
    prune_model(model, scheme, 0.6)
    x = torch.randn(*shape)
    with torch.no_grad():
        ref = model(x)
    compiled = compile_model(model, backend, input_shape=shape)
    assert rel_err(compiled(x), ref) <= 1e-4
    assert rel_err(compiled(x), ref) <= 1e-4  # buffers reused on the second call
    actions = {"sparse", "dense", "shrunk", "unsupported", "depthwise"}
    assert {d.action for d in compiled.decisions} <= actions
    if scheme in ("kgs", "vanilla", "column"):
        assert compiled.sparse_layers(), "sparse schemes run generated kernels"


def channels(m: nn.Module) -> tuple[int, int]:
    """(in, out) channels of a conv or of the SparseConv that replaced it."""
    if isinstance(m, SparseConv):
        return m.plan.geometry.in_channels, m.plan.geometry.out_channels
    return m.in_channels, m.out_channels


def test_filter_pruning_physically_shrinks_the_chain_and_keeps_residuals_whole():
    torch.manual_seed(0)
    model = randomise_batchnorm(build("r2plus1d_18", num_classes=5, width=0.125))
    prune_model(model, "filter", 0.5)
    compiled = compile_model(model, "torch")
    get = compiled.module.get_submodule
    # the (2+1)D factorised conv's mid channels live only between its two halves: shrunk
    mid = channels(get("layer1.0.conv1.0.0"))[1]
    assert mid < model.layer1[0].conv1[0][0].out_channels
    assert channels(get("layer1.0.conv1.0.3"))[0] == mid
    # a block output feeds the residual add: its filters stay (the removed ones output their bias)
    assert channels(get("layer1.0.conv2.0.3"))[1] == model.layer1[0].conv2[0][3].out_channels
    x = torch.randn(1, 3, 4, 24, 24)
    with torch.no_grad():
        assert rel_err(compiled(x), model(x)) <= 1e-4


def test_unsupported_and_too_dense_layers_are_left_dense_and_reported():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(4, 8, 3, padding=1)
            self.g = nn.Conv2d(8, 8, 3, padding=1, groups=2)  # grouped: unsupported
            self.b = nn.Conv2d(8, 8, 3, padding=1)
            self.c = nn.Conv2d(8, 8, 3, padding=1)

        def forward(self, x):
            return self.c(self.b(self.g(self.a(x))))

    torch.manual_seed(0)
    net = Net().eval()
    prune_model(net, "kgs", {"a": 0.7, "b": 0.05}, gm=4, gn=2)  # b barely pruned, c not at all
    compiled = compile_model(net, "torch")
    by_name = {d.name: d for d in compiled.decisions}
    assert by_name["a"].action == "sparse"
    assert by_name["g"].action == "unsupported" and "grouped" in by_name["g"].detail
    assert by_name["b"].action == "dense" and "too dense" in by_name["b"].detail
    assert by_name["c"].action == "dense" and "nothing pruned" in by_name["c"].detail
    x = torch.randn(2, 4, 9, 9)
    assert rel_err(compiled(x), net(x)) <= 1e-4


def test_untraceable_model_is_compiled_layer_by_layer():
    class Dynamic(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)

        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
                return self.conv(x)
            return -self.conv(x)

    net = Dynamic().eval()
    prune_model(net, "kgs", {"conv": 0.6}, gm=4, gn=1)
    with pytest.warns(UserWarning, match="not traceable"):
        compiled = compile_model(net, "torch")
    x = torch.randn(1, 3, 8, 8)
    assert rel_err(compiled(x), net(x)) <= 1e-4


def test_without_a_compiler_the_cpu_backend_warns_and_falls_back(monkeypatch):
    monkeypatch.setenv("CXX", "/nonexistent/g++")
    model = build("digits_cnn").eval()
    prune_model(model, "kgs", 0.5)
    with pytest.warns(UserWarning, match="pure-PyTorch fallback"):
        compiled = compile_model(model, "cpu")
    assert compiled.backend == "torch"
    x = torch.randn(2, 1, 8, 8)
    assert rel_err(compiled(x), model(x)) <= 1e-4


def test_bad_arguments_are_rejected_with_what_is_accepted():
    model = build("digits_cnn")
    with pytest.raises(CompileError, match="unknown backend 'tpu'; expected one of cpu, cuda"):
        compile_model(model, "tpu")
    with pytest.raises(CompileError, match=r"max_density must be in \(0, 1\]"):
        compile_model(model, "torch", max_density=0)
    with pytest.raises(CompileError, match="must be an nn.Module"):
        compile_model("model.pt", "torch")
    with pytest.raises(CompileError, match=r"precision must be one of \('ieee', 'tf32', 'bf16'\)"):
        compile_model(model, "torch", precision="fp8")
    if not torch.cuda.is_available():
        with pytest.raises(CompileError, match="needs a CUDA GPU"):
            compile_model(model, "cuda")


def test_package_is_callable_and_does_not_touch_the_input_model():
    model = build("digits_cnn").eval()
    prune_model(model, "filter", 0.5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    compiled = edgeguard.compile(model, backend="torch")
    assert isinstance(compiled, nn.Module)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert mask_of(model.features[0]) is not None


def test_every_conv_of_a_filter_pruned_c3d_with_biases_is_shrunk():
    # a conv whose removed inputs were added back (a field) is itself shrunk through that field
    torch.manual_seed(0)
    model = build("c3d", num_classes=12, width=0.125, clip_size=[16, 16, 16]).eval()
    prune_model(model, "filter", 0.5)
    compiled = compile_model(model, "torch")
    actions = {d.name: d.action for d in compiled.decisions if d.name.startswith("conv")}
    assert set(actions.values()) == {"shrunk"}, actions
    x = torch.randn(1, 3, 16, 16, 16)
    with torch.no_grad():
        assert rel_err(compiled(x), model(x)) <= 1e-4


def test_filter_reading_only_removed_constant_channels_is_kept_when_padding_varies_it():
    # conv2's filter 0 reads only conv1's dead filter, whose constant output (ReLU of its bias) is
    # added back as a field; with zero padding that field differs at the border, so the filter is
    # not constant and must not be removed as dead (it was, giving a 4% error on the digits CNN).
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(2, 2, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(2, 3, 3, padding=1),
        nn.Flatten(),
        nn.Linear(3 * 6 * 6, 4),
    ).eval()
    with torch.no_grad():
        model[0].weight[0] = 0.0
        model[0].bias[0] = 0.7
        model[2].weight[0, 1] = 0.0  # filter 0 of conv2 reads only the dead channel
    compiled = compile_model(model, "torch")
    x = torch.randn(2, 1, 6, 6)
    with torch.no_grad():
        assert rel_err(compiled(x), model(x)) <= 1e-4


class ConvPool(nn.Module):
    """conv -> ReLU -> max pool, twice; the second pool overlaps (stride 1): never fused."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(3, 16, 3, padding=1)
        self.pool1 = nn.MaxPool3d((1, 2, 2))
        self.conv2 = nn.Conv3d(16, 16, 3, padding=1)
        self.pool2 = nn.MaxPool3d(2, stride=1)

    def forward(self, x):
        return self.pool2(torch.relu(self.conv2(self.pool1(torch.relu(self.conv1(x))))))


@needs_cxx
@pytest.mark.parametrize("min_bytes, fused", [(0, ["conv1"]), (1 << 40, [])])
def test_large_conv_outputs_take_their_max_pool(monkeypatch, min_bytes, fused):
    from edgeguard.compiler.passes import pool_fusion

    monkeypatch.setattr(pool_fusion, "FUSE_POOL_MIN_BYTES", min_bytes)
    torch.manual_seed(0)
    model = ConvPool().eval()
    prune_model(model, "kgs", rates=0.6)
    shape = (2, 3, 4, 10, 11)
    comp = compile_model(model, "cpu", input_shape=shape)
    layers = {d.name: d.detail for d in comp.decisions}
    assert [n for n, d in layers.items() if "max pool" in d] == fused
    called = {n.target for n in comp.module.graph.nodes if n.op == "call_module"}
    assert ("pool1" in called) == (not fused) and "pool2" in called
    x = torch.randn(*shape)
    with torch.no_grad():
        assert rel_err(comp(x), model(x)) < 1e-5


@needs_cxx
def test_a_fused_max_pool_exports_to_onnx_as_a_max_pool(tmp_path, monkeypatch):
    from edgeguard.compiler.passes import pool_fusion

    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    from edgeguard.compiler.onnx_export import export_onnx

    monkeypatch.setattr(pool_fusion, "FUSE_POOL_MIN_BYTES", 0)
    torch.manual_seed(0)
    model = ConvPool().eval()
    prune_model(model, "kgs", rates=0.6)
    shape = (1, 3, 4, 10, 11)
    comp = compile_model(model, "cpu", input_shape=shape)
    path = export_onnx(comp, tmp_path / "m.onnx", shape)
    assert [n.op_type for n in onnx.load(str(path)).graph.node].count("MaxPool") == 2
    x = torch.randn(*shape)
    out = ort.InferenceSession(str(path)).run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        assert rel_err(torch.from_numpy(out), model(x)) < 1e-5


@pytest.mark.parametrize("gm,gn,want", [(8, 4, 8), (4, 8, 4), (3, 5, 4)])
def test_each_layer_gets_the_block_size_that_fits_its_kernel_groups(monkeypatch, gm, gn, want):
    # 8-filter blocks over kernel groups of 4 (or 3) filters store the union of two groups' rows;
    # the planner takes 4-filter blocks there, and keeps 8 where the groups fit
    from edgeguard.compiler import backends, make_plan
    from edgeguard.compiler.passes.lowering import SMALLER_BLOCK_COST, choose_plan
    from edgeguard.compiler.plan import ConvGeometry, conv_weight
    from edgeguard.sparsity import get_scheme

    monkeypatch.setattr(backends.CpuBackend, "register_tile", lambda self: (8, 2))  # AVX-512
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3))
    prune_model(model, get_scheme("kgs", gm=gm, gn=gn), rates=0.6)
    conv = model[2]
    w, geo = conv_weight(conv), ConvGeometry.of(conv)
    stored = {r: min(make_plan(w, conv.bias, geo, r, by).density for by in (0, 1)) for r in (8, 4)}
    sizes = backends.get_backend("cpu").block_sizes()
    assert sizes == (8, 4)
    plan = choose_plan(conv_weight(conv), conv.bias, ConvGeometry.of(conv), sizes)
    assert plan.mr == want and plan.density == stored[want]
    assert (stored[8] > SMALLER_BLOCK_COST * stored[4]) == (want == 4), stored
    with pytest.raises(CompileError, match=r"mr \(filters per block\) must be one of \(1, 2, 4, 8"):
        compile_model(model, "cpu", mr=3)


def test_kept_channel_counts_are_rounded_up_to_a_multiple_of_8():
    from edgeguard.compiler.passes.shrink import align_kept

    def mask(n, idx):
        m = torch.zeros(n, dtype=torch.bool)
        m[list(idx)] = True
        return m

    # 64 channels, 11 removed: 53 kept -> 3 go back, the preferred ones (4, 7) first
    got = align_kept(mask(64, range(11)), mask(64, [4, 7]))
    assert torch.equal(got, mask(64, [1, 2, 3, 5, 6, 8, 9, 10])), torch.nonzero(got).flatten()
    # already a multiple; rounding up would restore every channel; a small or odd-sized layer
    for remove, n in ((range(16), 64), ((0, 5, 9), 64), (range(5), 24), (range(3), 36)):
        assert torch.equal(align_kept(mask(n, remove), mask(n, [])), mask(n, remove))
    # in a model: 64 filters of which 11 are dead shrink to 56, and the result equals the masked model
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 32, 3)).eval()
    with torch.no_grad():
        model[0].weight[:11] = 0
    comp = compile_model(model, "torch")
    assert comp.module.get_submodule("0").out_channels == 56
    x = torch.randn(2, 3, 9, 9)
    with torch.no_grad():
        assert rel_err(comp(x), model(x)) <= 1e-5
