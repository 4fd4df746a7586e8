"""The kernel templates are real C++ files: a generated layer compiles warning-free, and the one
definition of the last-tile shapes (Python's tile_kind) is what the kernel's table holds."""

import re
import shutil
import subprocess

import pytest
import torch

from edgeguard.compiler.cpu import generate_source, tile_kind
from edgeguard.compiler.cpu.codegen import INCLUDE, template
from edgeguard.compiler.layout import InputLayout
from edgeguard.compiler.plan import ConvGeometry, make_plan
from edgeguard.compiler.pool import MaxPoolCpu


def _layer(vl: int, nv: int, relu: bool = True):
    torch.manual_seed(0)
    conv = torch.nn.Conv3d(8, 16, 3, padding=1)
    w = conv.weight.detach().clone()
    w[:, :4] = 0
    plan = make_plan(w, conv.bias, ConvGeometry.of(conv), 8)
    return generate_source(plan, InputLayout(plan.geometry, (4, 10, 10)), nv, vl, relu)


@pytest.mark.parametrize("name", ["conv.cpp", "pool.cpp"])
def test_templates_include_the_generated_header_once(name):
    assert template(name).count(INCLUDE) == 1
    assert "{{" not in template(name)  # not a str.format template


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++")
@pytest.mark.parametrize(("vl", "nv"), [(16, 2), (16, 3), (8, 3)])
def test_generated_conv_compiles_without_warnings(vl, nv, tmp_path):
    src, _ = _layer(vl, nv)
    (tmp_path / "k.cpp").write_text(src)
    arch = {16: ["-mavx512f"], 8: ["-mavx2", "-mfma"]}.get(vl, []) if _x86() else []
    res = subprocess.run(
        [
            "g++",
            "-std=c++17",
            "-fopenmp",
            "-O1",
            "-Wall",
            "-Wextra",
            "-Werror",
            *arch,
            "-fsyntax-only",
            str(tmp_path / "k.cpp"),
        ],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr[-3000:]


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++")
def test_generated_pool_compiles_without_warnings(tmp_path):
    pool = MaxPoolCpu(torch.nn.MaxPool3d((1, 2, 2), padding=(0, 1, 1)))
    src, _ = pool.source(torch.empty(1, 4, 3, 9, 9, device="meta"), 8)
    (tmp_path / "p.cpp").write_text(src)
    res = subprocess.run(
        [
            "g++",
            "-std=c++17",
            "-fopenmp",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-fsyntax-only",
            str(tmp_path / "p.cpp"),
        ],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr[-3000:]


@pytest.mark.parametrize(("vl", "nv"), [(16, 2), (16, 3), (8, 3)])
def test_tile_kind_table_is_the_python_definition(vl, nv):
    src, _ = _layer(vl, nv)
    body = re.search(r"TILE_KIND\[(\d+)\] = \{([^}]*)\}", src)
    table = [int(v) for v in body.group(2).replace("\n", " ").split(",")]
    nxm = int(re.search(r"NXM = (\d+)", src).group(1))
    assert int(body.group(1)) == len(table) == nv * vl + nxm + 1
    for rem, kind in enumerate(table):
        nvt, nx = tile_kind(rem, nv, vl, nxm)
        assert kind == nvt * 8 + nx


def _x86() -> bool:
    import platform

    return platform.machine() in ("x86_64", "AMD64")


def test_tile_footprint_counts_the_lines_a_tile_reads():
    from edgeguard.compiler.cpu.codegen import tile_footprint

    # 16 positions from p0 = 0: rows at 0 and 16 read one line each; a row at 8 straddles both
    assert tile_footprint(torch.tensor([0, 16]), 16, 16) == 2 * 64
    assert tile_footprint(torch.tensor([0, 8, 16]), 16, 16) == 2 * 64
    # a tile in the middle of a 64-position plane starts at 24: lines 1, 2 (24-39) and 3 (+16)
    assert tile_footprint(torch.tensor([0, 16]), 64, 16) == 3 * 64
    assert tile_footprint(torch.tensor([], dtype=torch.int64), 64, 16) == 0


def test_prefetch_only_where_a_tiles_input_outgrows_l1():
    from edgeguard.compiler.cpu.tuning import PF_L1_BYTES, default_prefetch

    assert default_prefetch(16, 2048) == 16  # no footprint known: by the slice length
    assert default_prefetch(16, 2048, footprint=PF_L1_BYTES) == 0
    assert default_prefetch(16, 2048, footprint=PF_L1_BYTES + 64) == 16
    assert default_prefetch(16, 512, footprint=PF_L1_BYTES + 64) == 0  # a slice within L1
    assert default_prefetch(8, 2048, temporal=True, footprint=0) == 8  # AVX2: unchanged


def _pf(src: str) -> int:
    return int(re.search(r"PF = (\d+)", src).group(1))


@pytest.mark.parametrize(("cin", "size", "pf"), [(64, 32, 0), (256, 32, 16)])
def test_generated_kernels_prefetch_by_their_tiles_input(cin, size, pf):
    # a 3 x 3 conv over 32 x 32 planes: a row tile reads 3 input rows of 33 floats a channel,
    # 25 KB for 64 channels (L1: no prefetch), 101 KB for 256 (prefetched)
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(cin, 16, 3, padding=1)
    w = conv.weight.detach().clone().unsqueeze(2)
    w[:, :, :, 0] = 0  # one third of the kernel locations
    geom = ConvGeometry.of(torch.nn.Conv3d(cin, 16, (1, 3, 3), padding=(0, 1, 1)))
    plan = make_plan(w, conv.bias, geom, 8)
    src, _ = generate_source(plan, InputLayout(geom, (1, size, size)), 2, 16, True)
    assert _pf(src) == pf


def test_temporal_kernels_keep_prefetching_small_inputs():
    from edgeguard.compiler.cpu.tuning import default_prefetch

    assert default_prefetch(16, 2048, temporal=True, footprint=64) == 16
