"""Reading pickled data files without running code from them.

Pickles can call any importable function while they load, so a planted data file could run arbitrary
code.  :func:`restricted_load` allows only the globals a data format really needs: NumPy's array
reconstruction and plain containers, plus (for the Planetoid files) inert stand-ins for SciPy's CSR
matrix and ``collections.defaultdict`` that only record their state; nothing else can be named."""

from __future__ import annotations

import io
import pickle
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DatasetError

# None: resolved by pickle's own lookup (array reconstruction and dtypes have no side effects)
NUMPY_GLOBALS: dict[tuple[str, str], Any] = {
    (module, name): None
    for module in ("numpy.core.multiarray", "numpy._core.multiarray")
    for name in ("_reconstruct", "scalar")
} | {("numpy", "ndarray"): None, ("numpy", "dtype"): None, ("_codecs", "encode"): None}


class CSRState:
    """What a pickled ``scipy.sparse.csr_matrix`` holds, recorded without building SciPy objects:
    ``data``, ``indices``, ``indptr`` and ``shape`` are validated by :meth:`to_dense`."""

    def __init__(self, *args: Any) -> None:
        self.state: dict[str, Any] = {}

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, dict):
            raise pickle.UnpicklingError("a CSR matrix's state must be a dictionary")
        self.state = state

    def to_dense(self) -> np.ndarray:
        """The matrix as a dense ``float32`` array ``[rows, cols]``; malformed parts are refused."""
        s = self.state
        shape = s.get("_shape", s.get("shape"))
        arrays = [s.get(k) for k in ("data", "indices", "indptr")]
        if not (
            isinstance(shape, tuple)
            and len(shape) == 2
            and all(isinstance(v, int) and v >= 0 for v in shape)
            and all(isinstance(a, np.ndarray) and a.ndim == 1 for a in arrays)
        ):
            raise pickle.UnpicklingError("malformed CSR matrix (data, indices, indptr, shape)")
        data, indices, indptr = arrays
        rows, cols = shape
        if (
            len(indptr) != rows + 1
            or indptr[0] != 0
            or np.any(np.diff(indptr) < 0)
            or indptr[-1] != len(indices)
            or len(indices) != len(data)
            or (len(indices) and (indices.min() < 0 or indices.max() >= cols))
        ):
            raise pickle.UnpicklingError("inconsistent CSR matrix index arrays")
        out = np.zeros(shape, dtype=np.float32)
        row_of = np.repeat(np.arange(rows), np.diff(indptr))
        np.add.at(out, (row_of, indices.astype(np.int64)), data.astype(np.float32))
        return out


class _DefaultDict(dict):
    """Stand-in for ``collections.defaultdict``: a plain dict that ignores its factory."""

    def __init__(self, *args: Any) -> None:
        super().__init__()


PLANETOID_GLOBALS: dict[tuple[str, str], Any] = {
    ("scipy.sparse.csr", "csr_matrix"): CSRState,
    ("scipy.sparse._csr", "csr_matrix"): CSRState,
    ("collections", "defaultdict"): _DefaultDict,
    ("__builtin__", "list"): list,
    ("builtins", "list"): list,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: Any, allowed: dict[tuple[str, str], Any]) -> None:
        super().__init__(file, encoding="latin1")
        self.allowed = allowed

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.allowed:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}")
        obj = self.allowed[(module, name)]
        if obj is not None:
            return obj
        with warnings.catch_warnings():  # numpy.core was renamed numpy._core in NumPy 2
            warnings.simplefilter("ignore", DeprecationWarning)
            return super().find_class(module, name)


def restricted_load(path: str | Path, extra: dict[tuple[str, str], Any] | None = None) -> Any:
    """Unpickle ``path`` allowing NumPy arrays, plain containers and the stand-ins in ``extra``.

    Raises :class:`DatasetError` naming the file and the refused global for anything else (a
    function call planted in the file is never run) and for truncated or corrupt files."""
    path = Path(path)
    allowed = NUMPY_GLOBALS | (extra or {})
    try:
        return _RestrictedUnpickler(io.BytesIO(path.read_bytes()), allowed).load()
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        TypeError,
        AttributeError,
        IndexError,
        KeyError,
        ImportError,
    ) as err:
        raise DatasetError(f"refusing to read {path}: not a plain data pickle ({err})") from None
