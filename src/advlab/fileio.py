"""Atomic file writes: a crash never leaves a half-written result or checkpoint behind."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from advlab.serialize import pretty_json


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


#: the process's umask, read once at import (reading it means setting it)
_UMASK = _umask()


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp_path)`` and then rename the temporary file onto ``path``.

    The temporary file lives in the destination folder, so the rename is atomic on POSIX and
    Windows. Parent folders are created. The file gets the mode a plain ``open`` would give
    it (``0o666`` less the umask), not the private ``0o600`` of a temporary file.
    """
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_UMASK)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dest


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    return atomic_write(path, lambda p: p.write_bytes(data))


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically (:func:`advlab.serialize.plain`)."""
    return atomic_write_text(path, pretty_json(obj))


def check_writable_folder(folder: str | os.PathLike[str], what: str) -> Path:
    """Create ``folder`` if needed and check that files can be written in it, before any work.

    Args:
        what: how the user named it, for the message (e.g. ``"--out advlab-out"``).

    Raises:
        ConfigError: naming the folder, the problem and the fix.
    """
    from advlab.errors import ConfigError

    out = Path(folder).expanduser()
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{what}: {out} is a file, not a folder; pass a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".advlab-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ConfigError(
            f"{what}: cannot write to {out} ({e.strerror or e}); pass a writable folder"
        ) from None
    return out
