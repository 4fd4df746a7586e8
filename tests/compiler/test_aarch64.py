"""The generated C++ also builds for aarch64 (phones) and gives the same outputs under qemu."""

import shutil
import subprocess

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgeguard.compiler import SparseConv, plan_conv
from edgeguard.compiler.cpu import build_standalone, cross_target
from edgeguard.sparsity import get_scheme

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("aarch64-linux-gnu-g++") is None or shutil.which("qemu-aarch64") is None,
        reason="needs Debian's g++-aarch64-linux-gnu and qemu-user (apt install both)",
    ),
]


@pytest.mark.parametrize(
    ("cin", "cout", "k", "s", "p", "size"),
    [(8, 16, 3, 1, 1, (4, 10, 11)), (8, 12, (1, 3, 3), (1, 2, 2), (0, 1, 1), (3, 9, 13))],
)
@pytest.mark.parametrize("scheme", ["kgs", "vanilla"])
def test_generated_kernel_runs_on_aarch64_under_qemu(tmp_path, cin, cout, k, s, p, size, scheme):
    torch.manual_seed(0)
    conv = nn.Conv3d(cin, cout, k, s, p)
    with torch.no_grad():
        conv.weight *= get_scheme(scheme).mask(conv.weight, 0.6)
    x = torch.randn(2, cin, *size)
    ref = F.relu(conv(x)).detach()
    sc = SparseConv(plan_conv(conv), relu=True, mode="cpu")
    target = cross_target()
    src, order = sc.source(x, target.vector_floats, target)
    prog = build_standalone(src, target, tmp_path / "conv")
    xbuf = sc.layout(x).prepare(x, slack=64)
    panel = sc.panel[order].contiguous()
    files = {}
    for name, t in {"x": xbuf, "w": panel, "b": sc.bias}.items():
        files[name] = tmp_path / f"{name}.bin"
        t.numpy().astype(np.float32).tofile(files[name])
    out_path = tmp_path / "out.bin"
    args = [
        str(files["x"]),
        str(xbuf.numel()),
        str(files["w"]),
        str(panel.numel()),
        str(files["b"]),
        str(sc.bias.numel()),
        str(out_path),
        str(ref.numel()),
        "2",
        "2",
    ]
    res = subprocess.run(
        ["qemu-aarch64", str(prog), *args], capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 0, res.stderr
    out = torch.from_numpy(np.fromfile(out_path, dtype=np.float32)).view_as(ref)
    assert (out - ref).abs().max() <= 1e-4 * ref.abs().max()
    header = prog.read_bytes()[:20]
    assert header[:4] == b"\x7fELF" and int.from_bytes(header[18:20], "little") == 183  # EM_AARCH64
