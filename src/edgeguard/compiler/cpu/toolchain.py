"""Building kernels: the private on-disk cache, parallel compilation with ninja, cross builds.

Built objects are cached under ``$EDGEGUARD_CACHE`` (default ``~/.cache/edgeguard/kernels``) by a hash
of the source, compiler and flags; the library's own SHA-256 is recorded beside it and checked before
loading, so a corrupted or tampered entry is rebuilt, never trusted.  With GCC the system headers
(``kernels/prelude.h``) are precompiled once per target into the cache, checked the same way, and
forced into every kernel's compile: the libraries are the same bytes, built in less than half the time.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shlex
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from ..errors import CompileError
from .codegen import template
from .runtime import KEY_MARK, KEY_SYMBOL, check_private, load_library
from .target import CompilerUnavailable, Target, _compiler_version

log = logging.getLogger(__name__)

STALE_BUILD_SECONDS = 3600  # a .build-* folder older than this is a crashed build's leftover


def cache_dir() -> Path:
    """The kernel cache (``$EDGEGUARD_CACHE`` or ``~/.cache/edgeguard/kernels``); a path that is
    not a folder is an error."""
    root = Path(
        os.environ.get("EDGEGUARD_CACHE") or Path.home() / ".cache" / "edgeguard" / "kernels"
    )
    if root.exists() and not root.is_dir():
        raise CompileError(
            f"the kernel cache {root} (EDGEGUARD_CACHE) is not a folder; point "
            "EDGEGUARD_CACHE at a folder of your own"
        )
    return root


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _entry_key(source: str, target: Target) -> str:
    return hashlib.sha256((target.key + "\n" + source).encode()).hexdigest()[:24]


def entry_dir(source: str, target: Target) -> Path:
    return cache_dir() / _entry_key(source, target)


def _stamped(source: str, key: str) -> str:
    """The source as compiled: it also holds and returns its cache key, so a library moved or
    copied into another entry is recognised before it is loaded (and checked again after)."""
    return source + (
        f'\nextern "C" const char* {KEY_SYMBOL}(void) {{ return "{KEY_MARK}{key}"; }}\n'
    )


def _valid(entry: Path) -> bool:
    lib, digest = entry / "kernel.so", entry / "kernel.so.sha256"
    if not (lib.exists() and digest.exists()):
        return False
    if _sha256(lib) != digest.read_text().strip():
        log.warning("kernel cache entry %s is corrupted (checksum mismatch): rebuilding", entry)
        return False
    try:
        load_library(lib)
    except OSError as err:
        log.warning("kernel cache entry %s cannot be used (%s): rebuilding", entry, err)
        return False
    return True


def build_many(sources: list[str], target: Target) -> list[Path]:
    """Compile every source not already cached (in parallel, with ninja when it is installed) and
    return the path of each shared library; every returned library has been loaded and checked."""
    root = cache_dir()
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    check_private(root)
    entries = [entry_dir(s, target) for s in sources]
    todo = {}
    for src, entry in zip(sources, entries, strict=True):
        if not _valid(entry):
            todo[entry] = src
    if todo:
        _compile(todo, target)
        for entry in todo:
            load_library(entry / "kernel.so")  # a fresh build that fails its check is a bug
    return [e / "kernel.so" for e in entries]


def _remove_stale_builds(root: Path) -> None:
    now = time.time()
    for old in root.glob(".build-*"):
        with contextlib.suppress(OSError):
            if now - old.stat().st_mtime > STALE_BUILD_SECONDS:
                shutil.rmtree(old)


def _replace_atomically(data_from: Path | str, dest: Path, text: str | None = None) -> None:
    """Write a copy of ``data_from`` (or ``text``) beside ``dest`` under a name unique to this
    process and call, then rename it over ``dest``: readers see the old or the new file."""
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    try:
        if text is None:
            shutil.copyfile(data_from, tmp)
        else:
            Path(tmp).write_text(text)
        os.chmod(tmp, 0o644 if text is not None else 0o755)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _is_gcc(cxx: str) -> bool:
    return "Free Software Foundation" in _compiler_version(cxx)


def prelude_flags(target: Target) -> list[str]:
    """``-include`` flags of the target's precompiled prelude (built on first use, its digest
    checked like a kernel's), or none where it cannot be had (not GCC, or the build failed): the
    kernels then parse the headers themselves, with the same result."""
    if not _is_gcc(target.cxx):
        return []
    text = template("prelude.h")
    root = cache_dir()
    entry = root / f"prelude-{hashlib.sha256((target.key + text).encode()).hexdigest()[:24]}"
    header, pch = entry / "prelude.h", entry / "prelude.h.gch"
    digest = entry / "prelude.h.gch.sha256"
    if not (pch.exists() and digest.exists() and _sha256(pch) == digest.read_text().strip()):
        entry.mkdir(mode=0o755, parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=root, prefix=".build-") as tmp:
            src, out = Path(tmp) / "prelude.h", Path(tmp) / "prelude.h.gch"
            src.write_text(text)
            flags = [f for f in target.flags if f != "-shared"]
            cmd = [target.cxx, *flags, "-x", "c++-header", str(src), "-o", str(out)]
            if subprocess.run(cmd, capture_output=True).returncode != 0:
                log.info("precompiling the kernel prelude failed: kernels parse their headers")
                return []
            _replace_atomically("", header, text=text)
            _replace_atomically(out, pch)
            _replace_atomically("", digest, text=_sha256(pch))
    return ["-include", str(header)]


def _compile(todo: dict[Path, str], target: Target) -> None:
    if shutil.which(target.cxx) is None:
        raise CompilerUnavailable(f"C++ compiler {target.cxx!r} not found")
    root = cache_dir()
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    _remove_stale_builds(root)
    flags = " ".join(shlex.quote(f) for f in [*target.flags, *prelude_flags(target)])
    with tempfile.TemporaryDirectory(dir=root, prefix=".build-") as tmp:
        tmpd = Path(tmp)
        rules = [
            "rule cxx",
            f"  command = {target.cxx} {flags} $in -o $out",
            "  description = CXX $out",
        ]
        for i, (entry, src) in enumerate(todo.items()):
            (tmpd / f"k{i}.cpp").write_text(_stamped(src, entry.name))
            rules.append(f"build k{i}.so: cxx k{i}.cpp")
        (tmpd / "build.ninja").write_text("\n".join(rules) + "\n")
        jobs = str(max(1, os.cpu_count() or 1))
        if shutil.which("ninja"):
            cmd = ["ninja", "-C", str(tmpd), "-j", jobs]
        else:  # still correct without ninja, only serial
            cmd = [
                "sh",
                "-c",
                " && ".join(
                    f"{target.cxx} {flags} {tmpd}/k{i}.cpp -o {tmpd}/k{i}.so"
                    for i in range(len(todo))
                ),
            ]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            raise CompilerUnavailable(
                f"kernel compilation failed ({' '.join(cmd[:2])}):\n"
                f"{res.stdout[-3000:]}{res.stderr[-3000:]}"
            )
        for i, (entry, src) in enumerate(todo.items()):
            entry.mkdir(mode=0o755, parents=True, exist_ok=True)
            _replace_atomically("", entry / "kernel.cpp", text=src)
            _replace_atomically(tmpd / f"k{i}.so", entry / "kernel.so")
            _replace_atomically("", entry / "kernel.so.sha256", text=_sha256(entry / "kernel.so"))


def build_standalone(source: str, target: Target, out: Path) -> Path:
    """Compile ``source`` + the file-in/file-out ``main`` of ``kernels/harness.cpp`` into the
    executable ``out`` (a cross-compiled kernel run under qemu)."""
    out = Path(out)
    src = out.with_suffix(".cpp")
    src.write_text(source + "\n" + template("harness.cpp"))
    res = subprocess.run(
        [target.cxx, *target.flags, str(src), "-o", str(out)], capture_output=True, text=True
    )
    if res.returncode != 0:
        raise CompilerUnavailable(f"cross compilation failed:\n{res.stderr[-3000:]}")
    return out
