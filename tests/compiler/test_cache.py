"""Kernel cache trust: a library is used only for the entry it was built for, never from a folder
other users can write, and a broken or foreign entry is rebuilt instead of failing."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from edgeguard.compiler import SparseConv, plan_conv
from edgeguard.compiler.cpu import entry_dir, host_target
from edgeguard.compiler.errors import CompileError

from .test_kernels import masked_conv, needs_cxx

pytestmark = needs_cxx


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("EDGEGUARD_CACHE", str(root))
    return root


def _run(conv, x):
    return SparseConv(plan_conv(conv), mode="cpu")(x)


SWAPPED_CHECK = """
import logging, sys, torch
sys.path.insert(0, ".")
logging.basicConfig(level=logging.WARNING)
from tests.compiler.test_kernels import masked_conv
from edgeguard.compiler import SparseConv, plan_conv
x = torch.randn(1, 4, 3, 6, 6)
for seed in (0, 1):
    conv = masked_conv(4, 8, 3, 1, 1, 1, seed=seed)
    y = SparseConv(plan_conv(conv), mode="cpu")(x)
    print(float((y - conv(x)).abs().max()))
"""


def test_swapped_entries_are_detected_and_rebuilt(cache):
    """Each entry holds the other's library (with a matching checksum file): a new process must
    not run either in the other's place (a process keeps what it loaded, so this needs a new one)."""
    x = torch.randn(1, 4, 3, 6, 6)
    for seed in (0, 1):
        _run(masked_conv(4, 8, 3, 1, 1, 1, seed=seed), x)
    ea, eb = sorted(p.parent for p in cache.glob("*/kernel.so"))
    for name in ("kernel.so", "kernel.so.sha256"):
        os.replace(ea / name, cache / "tmp")
        os.replace(eb / name, ea / name)
        os.replace(cache / "tmp", eb / name)
    res = subprocess.run(
        [sys.executable, "-c", SWAPPED_CHECK],
        capture_output=True,
        text=True,
        env={**os.environ, "EDGEGUARD_CACHE": str(cache)},
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert all(float(v) < 1e-5 for v in res.stdout.split()), res.stdout
    assert res.stderr.count("was built for cache entry") == 2, res.stderr


def _planted_library(tmp_path: Path, sentinel: Path) -> Path:
    src = tmp_path / "evil.cpp"
    src.write_text(
        "#include <cstdio>\n"
        f'__attribute__((constructor)) static void run() {{ std::fopen("{sentinel}", "w"); }}\n'
        'extern "C" void edgeguard_conv() {}\n'
    )
    out = tmp_path / "evil.so"
    subprocess.run(["g++", "-shared", "-fPIC", str(src), "-o", str(out)], check=True)
    return out


def _plant(cache: Path, conv, x, lib: Path) -> Path:
    target = host_target()
    src, _ = SparseConv(plan_conv(conv), mode="cpu").source(x, target.vector_floats)
    entry = entry_dir(src, target)
    entry.mkdir(parents=True)
    shutil.copyfile(lib, entry / "kernel.so")
    digest = __import__("hashlib").sha256((entry / "kernel.so").read_bytes()).hexdigest()
    (entry / "kernel.so.sha256").write_text(digest)
    return entry


def test_a_cache_writable_by_others_is_refused_before_anything_loads(cache, tmp_path):
    conv, x = masked_conv(4, 8, 3, 1, 1, 1), torch.randn(1, 4, 3, 6, 6)
    sentinel = tmp_path / "pwned"
    _plant(cache, conv, x, _planted_library(tmp_path, sentinel))
    cache.chmod(0o777)
    with pytest.raises(CompileError, match=r"writable by other users \(mode 777\)"):
        _run(conv, x)
    assert not sentinel.exists()


def test_a_library_without_the_entry_key_is_rebuilt(cache, tmp_path):
    """An entry of an older edgeguard, or a library copied in by hand, is rebuilt, not loaded."""
    conv, x = masked_conv(4, 8, 3, 1, 1, 1), torch.randn(1, 4, 3, 6, 6)
    entry = _plant(cache, conv, x, _planted_library(tmp_path, tmp_path / "ran"))
    assert torch.allclose(_run(conv, x), conv(x), atol=1e-5)
    assert b"edgeguard-kernel-key:" + entry.name.encode() in (entry / "kernel.so").read_bytes()
    assert not (tmp_path / "ran").exists()  # recognised from its bytes: never loaded


def test_cache_path_that_is_a_file_and_stale_build_folders(cache, tmp_path, monkeypatch):
    conv, x = masked_conv(4, 8, 3, 1, 1, 1), torch.randn(1, 4, 3, 6, 6)
    cache.mkdir()
    stale, fresh = cache / ".build-crashed", cache / ".build-running"
    stale.mkdir(), fresh.mkdir()
    old = time.time() - 7200
    os.utime(stale, (old, old))
    _run(conv, x)
    assert not stale.exists() and fresh.exists()  # another process may still be building there
    afile = tmp_path / "afile"
    afile.write_text("")
    monkeypatch.setenv("EDGEGUARD_CACHE", str(afile))
    with pytest.raises(CompileError, match="is not a folder"):
        _run(masked_conv(4, 8, 3, 1, 1, 1, seed=5), x)


def test_the_precompiled_prelude_changes_no_byte_and_a_tampered_one_is_rebuilt(cache, monkeypatch):
    from edgeguard.compiler.cpu import toolchain

    if not toolchain.prelude_flags(host_target()):
        pytest.skip("the compiler is not GCC: kernels parse their headers (no prelude)")
    conv, x = masked_conv(4, 8, 3, 1, 1, 1), torch.randn(1, 4, 3, 6, 6)
    _run(conv, x)
    (entry,) = (p.parent for p in cache.glob("*/kernel.so"))
    with_prelude = (entry / "kernel.so").read_bytes()
    shutil.rmtree(entry)
    monkeypatch.setattr(toolchain, "prelude_flags", lambda target: [])
    assert torch.allclose(_run(conv, x), conv(x), atol=1e-5)
    assert (entry / "kernel.so").read_bytes() == with_prelude
    monkeypatch.undo()
    monkeypatch.setenv("EDGEGUARD_CACHE", str(cache))
    (pch,) = cache.glob("prelude-*/prelude.h.gch")
    pch.write_bytes(b"not a precompiled header")
    other = masked_conv(4, 8, 3, 1, 1, 1, seed=3)
    assert torch.allclose(_run(other, x), other(x), atol=1e-5)
    assert pch.read_bytes() != b"not a precompiled header"  # rebuilt before any kernel used it
