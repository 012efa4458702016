"""Provenance: what produced a run, captured when the work starts.

:func:`capture` records the software (Python, advlab, torch, NumPy and their build), the machine
(platform, CPU threads, accelerator), the git revision of advlab's checkout, the command line,
the seed and the resolved configuration. Runs store it when they start; reports render it from
the store, so a report shows the machine that did the work, not the one that draws the page.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from advlab.serialize import plain


def git_revision(path: str | os.PathLike[str] | None = None) -> str | None:
    """The git commit of the checkout holding ``path`` (default: advlab's source), with
    ``"+dirty"`` appended when the checkout has uncommitted changes; ``None`` outside git."""
    where = Path(path) if path is not None else Path(__file__).resolve().parent
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=5,
            check=False,
        )  # fmt: skip
        if rev.returncode != 0 or not rev.stdout.strip():
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", "."], cwd=where,
            capture_output=True, text=True, timeout=5, check=False,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def environment() -> dict[str, Any]:
    """Versions of the software and a description of the machine."""
    import numpy
    import torch

    import advlab

    cuda = torch.cuda.is_available()
    return {
        "python": platform.python_version(),
        "advlab": advlab.__version__,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.version.cuda if cuda else None,
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "git_revision": git_revision(),
    }


def capture(
    *,
    seed: int | None = None,
    config: Mapping[str, Any] | None = None,
    argv: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Everything needed to say what produced a run, captured now.

    Args:
        seed: the run's root seed.
        config: its resolved configuration.
        argv: the command line (default ``sys.argv``).

    Returns:
        A JSON-plain dict with ``started`` (UTC, ISO 8601), ``command``, ``cwd``, ``seed``,
        ``config`` and the :func:`environment` keys.
    """
    return {
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": list(sys.argv if argv is None else argv),
        "cwd": os.getcwd(),
        "seed": seed,
        "config": plain(dict(config or {})),
        **environment(),
    }
