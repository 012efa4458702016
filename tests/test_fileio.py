"""Atomic writes: the result replaces the destination whole, a failed write leaves the old file
and no temporary behind, and the file is readable by others as a plain ``open`` would make it."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from advlab import fileio
from advlab.fileio import atomic_write, atomic_write_json, atomic_write_text


def test_replaces_whole_and_creates_parents(tmp_path: Path) -> None:
    dest = tmp_path / "a" / "b" / "report.html"
    atomic_write_text(dest, "one")
    atomic_write_text(dest, "two")
    assert dest.read_text() == "two"
    assert [p.name for p in dest.parent.iterdir()] == ["report.html"]
    atomic_write_json(tmp_path / "x.json", {"k": [1, 2]})
    assert '"k"' in (tmp_path / "x.json").read_text()


def test_a_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    dest = tmp_path / "result.json"
    dest.write_text("old")

    def boom(p: Path) -> None:
        p.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(dest, boom)
    assert dest.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]


def test_mode_follows_the_umask_not_the_temporary_file(tmp_path: Path) -> None:
    dest = atomic_write_text(tmp_path / "report.html", "<html></html>")
    mode = stat.S_IMODE(os.stat(dest).st_mode)
    assert mode == 0o666 & ~fileio._UMASK
    if fileio._UMASK == 0o022:
        assert mode == 0o644  # others can read a shared report
