"""A restricted unpickler for data files that only ever hold plain containers and NumPy arrays.

Unpickling runs whatever callables the file names, so an ordinary :func:`pickle.load` of a
downloaded file can execute arbitrary code. :func:`safe_load` resolves globals only from a short
allow-list: the builtin containers and scalars, and the functions NumPy uses to rebuild an array
(``_reconstruct``, ``ndarray``, ``dtype``, ``_frombuffer``, under both the ``numpy.core`` and the
NumPy 2 ``numpy._core`` module names) plus ``_codecs.encode``, which protocol-2 pickles written by
Python 3 use to store bytes. Anything else is refused before it is looked up, let alone called.
"""

from __future__ import annotations

import builtins
import codecs
import io
import pickle
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from advlab.errors import DataError


@cache
def _allowed() -> dict[tuple[str, str], Any]:
    try:  # NumPy >= 2
        from numpy._core import multiarray, numeric
    except ImportError:  # pragma: no cover - NumPy 1.x
        from numpy.core import multiarray, numeric  # type: ignore[no-redef]

    table: dict[tuple[str, str], Any] = {}
    for mod in ("builtins", "__builtin__"):  # __builtin__: pickles written by Python 2
        for name in ("dict", "list", "bytes", "str", "int"):
            table[mod, name] = getattr(builtins, name)
    for prefix in ("numpy.core", "numpy._core"):
        table[f"{prefix}.multiarray", "_reconstruct"] = multiarray._reconstruct
        table[f"{prefix}.numeric", "_frombuffer"] = vars(numeric)["_frombuffer"]
    table["numpy", "ndarray"] = np.ndarray
    table["numpy", "dtype"] = np.dtype
    table["_codecs", "encode"] = codecs.encode
    return table


class UnsafePickleError(DataError):
    """A pickle that references a global outside the allow-list."""


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: io.BufferedIOBase, path: Path) -> None:
        super().__init__(file, encoding="bytes")  # "bytes": Python 2 str stays bytes, as in CIFAR
        self._path = path

    def find_class(self, module: str, name: str) -> Any:
        obj = _allowed().get((module, name))
        if obj is None:
            raise UnsafePickleError(
                f"refusing to load {self._path}: it references {module}.{name}, which a data file "
                "never needs (only plain containers and NumPy arrays are allowed). The file may be "
                "malicious or not what it claims to be; delete it and download it again from the "
                "official source."
            )
        return obj


def safe_load(path: Path) -> Any:
    """Unpickle ``path`` allowing only builtin containers and NumPy arrays (see module docstring).

    Raises:
        DataError: if the file is missing, corrupt, or references any other global.
    """
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(
            f"cannot read {path}: {e.strerror or e}. Check that it exists and is readable."
        ) from e
    return safe_loads(data, path)


def safe_loads(data: bytes, path: Path) -> Any:
    """Like :func:`safe_load` for bytes already read from ``path`` (used in messages)."""
    try:
        return _RestrictedUnpickler(io.BytesIO(data), path).load()
    except DataError:
        raise
    except Exception as e:  # any failure while parsing untrusted bytes means a bad file
        raise DataError(
            f"{path} is corrupt or truncated ({type(e).__name__}: {e}). Delete it and download it again."
        ) from e
