"""Loading built kernels: the checks before a cached library is trusted, and the callable layer
kernel around it."""

from __future__ import annotations

import ctypes
import os
import re
from pathlib import Path

import torch

from .. import calls
from ..errors import CompileError

KEY_SYMBOL = "edgeguard_kernel_key"
KEY_MARK = "edgeguard-kernel-key:"


def check_private(path: Path) -> None:
    """Refuse a cache folder or file that another user owns or may write: a library planted there
    would run its code when loaded."""
    st = path.stat()
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        raise CompileError(
            f"refusing to use the kernel cache {path}: it belongs to another user "
            f"(uid {st.st_uid}); set EDGEGUARD_CACHE to a folder of your own"
        )
    if st.st_mode & 0o022:
        raise CompileError(
            f"refusing to use the kernel cache {path}: it is writable by other users "
            f"(mode {st.st_mode & 0o777:o}); run chmod go-w on it or set "
            "EDGEGUARD_CACHE to a private folder"
        )


def _keys_in(lib: Path) -> set[str]:
    """The cache keys compiled into ``lib``, read from its bytes without loading it."""
    return {
        m.decode() for m in re.findall(KEY_MARK.encode() + rb"([0-9a-f]{24})", lib.read_bytes())
    }


def load_library(lib: Path) -> ctypes.CDLL:
    """Load a cached kernel library after checking that its folder and file are private and that
    the key compiled into it is its entry's key (the folder name), first in its bytes (nothing
    foreign is ever loaded) and then through its key function.  Raises :class:`CompileError` when
    the cache is not private and ``OSError`` when the library is not the entry's."""
    lib = Path(lib)
    for path in (lib.parent.parent, lib.parent, lib):
        check_private(path)
    keys = _keys_in(lib)
    if keys != {lib.parent.name}:
        found = ", ".join(sorted(keys)) or "no key (not an edgeguard kernel of this version)"
        raise OSError(f"{lib} was built for cache entry {found}, not {lib.parent.name}")
    handle = ctypes.CDLL(str(lib))
    fn = getattr(handle, KEY_SYMBOL)
    fn.restype = ctypes.c_char_p
    if fn().decode() != KEY_MARK + lib.parent.name:
        raise OSError(f"{lib} does not return its cache entry's key")
    return handle


class CppKernel:
    """A loaded layer kernel with its weight panel in kernel order:
    ``kernel(xbuf, bias, out, batch, xin=None, residual=None)``."""

    def __init__(self, lib: Path, panel: torch.Tensor) -> None:
        self.panel = panel.contiguous()
        self._lib = load_library(lib)
        self._fn = self._lib.edgeguard_conv
        self._fn.restype = None
        self._fn.argtypes = [ctypes.c_void_p] * 8 + [ctypes.c_int, ctypes.c_int]
        self._floats_at: dict[tuple[int, int], int] = {}
        self._buffer = self._lib.edgeguard_conv_buffer
        self._buffer.restype = ctypes.c_int64
        self._buffer.argtypes = [ctypes.c_int, ctypes.c_int]
        self._schedule = self._lib.edgeguard_conv_schedule
        self._schedule.restype = ctypes.c_int
        self._schedule.argtypes = [ctypes.c_int, ctypes.c_int]

    def buffer_floats(self, batch: int) -> int:
        """The floats ``x`` must hold for a call that fills its own input (``xin`` given) at this
        batch, on the threads PyTorch uses now (the kernel's own answer, asked once per batch
        and thread count): 0 where each thread fills whole samples into a buffer of its own
        (``x`` is not touched); ``batch + threads - 1`` slots where each thread fills the rows
        its tasks read into slots of its own; else ``batch`` samples."""
        key = (batch, torch.get_num_threads())
        found = self._floats_at.get(key)
        if found is None:
            found = self._floats_at[key] = int(self._buffer(*key))
        return found

    def schedule(self, batch: int, threads: int) -> dict[str, int | bool]:
        """How the kernel runs a call of ``batch`` samples on ``threads`` threads (the kernel's
        own predicates): ``per_sample`` (each thread fills whole samples into its own buffer),
        ``row_fills`` (each thread fills the padded rows its run of tasks reads into its own
        slots of ``x``) and ``parts`` (the filter blocks of each task split into this many
        tasks)."""
        code = int(self._schedule(batch, threads))
        return {"per_sample": bool(code & 1), "row_fills": bool(code & 2), "parts": code >> 2}

    def __call__(
        self,
        x: torch.Tensor,
        bias: torch.Tensor,
        out: torch.Tensor,
        batch: int,
        xin: torch.Tensor | None = None,
        residual: torch.Tensor | None = None,
        tout: torch.Tensor | None = None,
        tres: torch.Tensor | None = None,
    ) -> None:
        """``x``: the padded input buffer; ``xin``: the raw contiguous input ``[N, C, D, H, W]``,
        which a stride-1 kernel copies into ``x`` itself first (``None``: ``x`` is already filled);
        ``residual``: a contiguous tensor of ``out``'s shape that a kernel generated with a
        residual adds before its ReLU (required there, ignored elsewhere).  A batch-last kernel
        writes ``out`` ``[1, M, H, W, N]`` and then its transpose into ``tout`` ``[N, M, 1, H, W]``,
        adding ``tres`` (that shape) where it was generated with one."""
        args = (
            xin.data_ptr() if xin is not None else None,
            x.data_ptr(),
            self.panel.data_ptr(),
            bias.data_ptr(),
            out.data_ptr(),
            residual.data_ptr() if residual is not None else None,
            tout.data_ptr() if tout is not None else None,
            tres.data_ptr() if tres is not None else None,
            batch,
            torch.get_num_threads(),
        )
        rec = calls.STATE.recorder
        if rec is not None:
            rec.kernel(self._fn, args, (self,))
        self._fn(*args)
