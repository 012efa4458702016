"""A strict reader for the IDX files that MNIST and Fashion-MNIST ship in.

The format (LeCun et al., http://yann.lecun.com/exdb/mnist/): a 4-byte big-endian magic number
``0x0000TTDD`` (``TT`` the element type, ``0x08`` for unsigned bytes; ``DD`` the number of
dimensions), then one big-endian uint32 per dimension, then the elements in row-major order.
Image files have magic 2051 (``0x00000803``, three dimensions ``N, rows, cols``) and label files
magic 2049 (``0x00000801``, one dimension ``N``). Files may be gzip-compressed.

Every check failure raises :class:`~advlab.errors.DataError` naming the file and telling the
user to download it again.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np

from advlab.errors import DataError

IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049
_UBYTE = 0x08
_GZIP_MAGIC = b"\x1f\x8b"


def _corrupt(path: Path, what: str) -> DataError:
    return DataError(f"{path} is corrupt or truncated: {what}. Delete it and download it again.")


def read_bytes(path: Path) -> bytes:
    """The contents of ``path``, gunzipped when it is gzip-compressed (by suffix or by content).

    Raises:
        DataError: if the file cannot be read or is not valid gzip.
    """
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(
            f"cannot read {path}: {e.strerror or e}. Check that it exists and is readable."
        ) from e
    if path.suffix == ".gz" or raw[:2] == _GZIP_MAGIC:
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise _corrupt(path, f"not a valid gzip file ({e or type(e).__name__})") from e
    return raw


def parse_idx(data: bytes, path: Path, *, magic: int) -> np.ndarray:
    """Parse the bytes of an IDX file of unsigned bytes.

    Args:
        data: the (decompressed) file contents.
        path: the file, for error messages.
        magic: the expected magic number, :data:`IMAGES_MAGIC` or :data:`LABELS_MAGIC`.

    Returns:
        A read-only uint8 array with the file's dimensions.

    Raises:
        DataError: on a wrong magic number, element type or dimension count, or a length that
            does not match the header.
    """
    if len(data) < 4:
        raise _corrupt(path, f"only {len(data)} bytes, too short for an IDX header")
    (found,) = struct.unpack(">I", data[:4])
    if found != magic:
        kind, other = ("an image", "a label") if magic == IMAGES_MAGIC else ("a label", "an image")
        if found in (IMAGES_MAGIC, LABELS_MAGIC):
            raise DataError(
                f"{path} is {other} IDX file where {kind} file was expected "
                f"(magic number {found}, not {magic}); check that the files were not renamed or swapped, "
                "or download them again"
            )
        raise _corrupt(path, f"magic number {found} where {kind} IDX file has {magic}")
    ndim = magic & 0xFF
    if (magic >> 8) & 0xFF != _UBYTE:  # pragma: no cover - both magics encode 0x08
        raise _corrupt(path, "element type is not unsigned byte")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise _corrupt(path, f"only {len(data)} bytes, too short for a {ndim}-D IDX header")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    expected = header + int(np.prod(dims, dtype=np.int64))
    if len(data) != expected:
        shape = " x ".join(map(str, dims))
        raise _corrupt(
            path,
            f"the header announces {shape} bytes of data ({expected} in all) but the file has {len(data)}",
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def read_idx_images(path: Path) -> np.ndarray:
    """Read an IDX image file (magic 2051). Returns uint8 ``(N, rows, cols)``."""
    return parse_idx(read_bytes(path), path, magic=IMAGES_MAGIC)


def read_idx_labels(path: Path, *, num_classes: int = 10) -> np.ndarray:
    """Read an IDX label file (magic 2049). Returns uint8 ``(N,)`` with values below ``num_classes``."""
    labels = parse_idx(read_bytes(path), path, magic=LABELS_MAGIC)
    if labels.size and int(labels.max()) >= num_classes:
        raise _corrupt(path, f"label {int(labels.max())} is outside 0..{num_classes - 1}")
    return labels
