"""The Triton (CUDA) kernel, run by Triton's interpreter on the CPU (as CI does; on a GPU machine the
benchmark runs it for real)."""

import importlib.util
import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("triton") is None, reason="Triton is not installed here"
)

SCRIPT = textwrap.dedent(
    """
    import torch
    from torch import nn
    from edgeguard.compiler import SparseConv, compile_model, plan_conv
    from edgeguard.models import build
    from edgeguard.sparsity import get_scheme, prune_model

    torch.manual_seed(0)
    cases = [(8, 16, 3, 1, 1, 1, (4, 10, 11)), (8, 12, (1, 3, 3), (1, 2, 2), (0, 1, 1), 1, (3, 9, 13)),
             (6, 10, (3, 1, 1), (2, 1, 1), (1, 0, 0), 1, (5, 7, 7)), (5, 7, 3, 2, 0, (1, 2, 2), (6, 12, 12)),
             # depth padding past the kernel's reach: planes that read padding only (their bias)
             (8, 8, 3, 1, (5, 1, 1), (2, 1, 1), (3, 6, 5))]
    for scheme in ["kgs", "vanilla", "column"]:
        for cin, cout, k, s, p, d, size in cases:
            conv = nn.Conv3d(cin, cout, k, s, p, d)
            with torch.no_grad():
                conv.weight *= get_scheme(scheme).mask(conv.weight, 0.6)
            x = torch.randn(2, cin, *size)
            for relu in (False, True) if scheme == "kgs" else (True,):  # the epilogue once per case
                y = SparseConv(plan_conv(conv, mr=8), relu=relu, mode="cuda")(x)
                ref = conv(x).relu() if relu else conv(x)
                err = float((y - ref).abs().max() / ref.abs().max())
                assert err <= 1e-4, (scheme, cin, cout, relu, err)
    # a whole pruned C3D with the CUDA path's kernels (tables built on the input's device)
    model = build("c3d", num_classes=12, width=0.0625, clip_size=[16, 16, 16]).eval()
    prune_model(model, "kgs", 0.7)
    compiled = compile_model(model, "torch", mr=8)
    for m in compiled.sparse_layers().values():
        m.mode = "cuda"
    x = torch.randn(1, 3, 16, 16, 16)
    err = float((compiled(x) - model(x)).abs().max() / model(x).abs().max())
    assert err <= 1e-4, err
    # bfloat16 operands (float32 accumulation) and every launch configuration give the same result
    from edgeguard.compiler.triton_backend import DEFAULT_CONFIGS, LaunchConfig, sparse_conv_triton, tune_model
    conv = nn.Conv3d(8, 20, 3, 1, 1)
    with torch.no_grad():
        conv.weight *= get_scheme("kgs").mask(conv.weight, 0.6)
    x = torch.randn(2, 8, 4, 10, 11)
    sc = SparseConv(plan_conv(conv, mr=16), mode="cuda")
    ref = conv(x).detach()
    y = sparse_conv_triton(sc, x, "bf16")
    err = float((y - ref).abs().max() / ref.abs().max())
    assert 1e-5 < err <= 2e-2, err  # rounded, yet close
    base = sparse_conv_triton(sc, x)
    for cfg in (LaunchConfig(16, 16, 4, 2, True), LaunchConfig(128, 32, 8, 4, False)):
        # (rows per step change the summation order only)
        assert float((sparse_conv_triton(sc, x, config=cfg) - base).abs().max()) <= 1e-5, cfg
    for bad in (dict(bp=48), dict(bk=8), dict(stages=0)):
        try:
            LaunchConfig(**bad)
        except Exception as e:
            assert "LaunchConfig" in str(e), e
        else:
            raise AssertionError(bad)
    want = compiled(torch.ones(1, 3, 16, 16, 16))
    report = tune_model(compiled, torch.ones(1, 3, 16, 16, 16), DEFAULT_CONFIGS[:2], 1, 0)
    assert set(report) == set(compiled.sparse_layers()), report.keys()
    assert all(m.triton_config in DEFAULT_CONFIGS[:2] for m in compiled.sparse_layers().values())
    assert torch.equal(compiled(torch.ones(1, 3, 16, 16, 16)), want)
    print("OK")
    """
)


def test_triton_kernel_matches_dense_conv_in_the_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1")
    res = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip().endswith("OK")
