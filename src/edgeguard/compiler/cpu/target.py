"""Code-generation targets: the host CPU (``$CXX``, ``-march=native``, its vector width) or a cross
compiler for phones."""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from ...errors import EdgeguardError
from . import tuning


class CompilerUnavailable(EdgeguardError, RuntimeError):
    """No working C++ compiler (or ninja) on this machine."""


@dataclass(frozen=True)
class Target:
    """A code-generation target: compiler command, flags and SIMD width in floats."""

    cxx: str
    flags: tuple[str, ...]
    vector_floats: int

    @property
    def tile(self) -> tuple[int, int]:
        """Default register tile ``(mr, nv)``: :func:`tuning.register_tile`."""
        return tuning.register_tile(self.vector_floats)

    def nv_for(self, positions: int, mr: int, row_aligned=None, out_positions: int = 0) -> int:
        """Vectors per tile for a layer with ``positions`` output positions per depth plane
        (``row_aligned(nv)``: whether ``nv`` vectors give row-aligned tiles, over
        ``out_positions``): :func:`tuning.vectors_per_tile`."""
        return tuning.vectors_per_tile(
            self.vector_floats, positions, mr, row_aligned, out_positions
        )

    @property
    def key(self) -> str:
        """What a built kernel depends on besides its source (the cache key's other half)."""
        return (
            f"{self.cxx}|{' '.join(self.flags)}|{self.vector_floats}|{_compiler_version(self.cxx)}"
        )


@cache
def _compiler_version(cxx: str) -> str:
    try:
        return subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return "?"


def host_target() -> Target:
    """Target for this machine: ``$CXX`` (default g++ / c++), -O3 -march=native, OpenMP; 16-float
    vectors where the CPU has AVX-512 (``EDGEGUARD_NO_AVX512=1`` keeps 8), else 8 (4 on aarch64)."""
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++") or ""
    if not cxx or shutil.which(cxx) is None:
        raise CompilerUnavailable("no C++ compiler found (set CXX or install g++)")
    machine = platform.machine()
    cpu_flags, flag_set = "", set()
    try:  # -march=native objects are only valid on this CPU: key the cache on its flags
        line = Path("/proc/cpuinfo").read_text().split("flags", 1)[-1].split("\n", 1)[0]
        flag_set = set(line.replace(":", " ").split())
        cpu_flags = hashlib.sha256(line.encode()).hexdigest()[:12]
    except OSError:
        pass
    if machine in ("aarch64", "arm64"):
        vl = 4
    else:  # AVX-512 doubles the work per instruction (docs/compiler.md, design decisions)
        vl = 16 if "avx512f" in flag_set and not os.environ.get("EDGEGUARD_NO_AVX512") else 8
    flags = (
        "-O3",
        "-march=native",
        "-fopenmp",
        "-fPIC",
        "-shared",
        "-std=c++17",
        "-ffp-contract=fast",
        f"-DEG_CPU={cpu_flags or machine}",
    )
    return Target(cxx, flags, vl)


def host_vector_floats() -> int:
    """Floats per vector of this machine's kernels (:func:`host_target`); 8 where no compiler
    is found (nothing is built then)."""
    try:
        return host_target().vector_floats
    except CompilerUnavailable:
        return 8


def cross_target(cxx: str = "aarch64-linux-gnu-g++", vector_floats: int = 4) -> Target:
    """An aarch64 (ARMv8-A NEON, every 64-bit phone) target for Debian's cross compiler; programs are
    linked statically so that ``qemu-aarch64`` runs them without a sysroot."""
    if shutil.which(cxx) is None:
        raise CompilerUnavailable(
            f"cross compiler {cxx!r} not found (apt install g++-aarch64-linux-gnu)"
        )
    flags = ("-O3", "-march=armv8-a", "-fopenmp", "-std=c++17", "-ffp-contract=fast", "-static")
    return Target(cxx, flags, vector_floats)
