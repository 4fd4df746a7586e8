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
