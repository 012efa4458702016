"""The reproduction catalog: each headline experiment of the papers, run by one command.

``advlab reproduce list`` shows the entries; ``advlab reproduce NAME [--quick]`` runs one and
writes ``reproduction.json`` and ``reproduction.html`` (the paper's figures beside the measured
ones, each marked against its target) into its output folder, where trained models and finished
evaluation stages are also kept, so an interrupted run resumes with the same command.

Entries live in :mod:`advlab.reproduce.defenses`, :mod:`~advlab.reproduce.whitebox`,
:mod:`~advlab.reproduce.blackbox` and :mod:`~advlab.reproduce.certification`; each registers
itself in :data:`advlab.registry.REPRODUCTIONS` with :func:`reproduction`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from advlab.fileio import atomic_write_json, atomic_write_text, check_writable_folder
from advlab.provenance import capture
from advlab.registry import REPRODUCTIONS
from advlab.reproduce.base import (
    Context,
    Figure,
    Outcome,
    Progress,
    Reproduction,
    Table,
    Target,
    at_least,
    at_most,
    bench_config,
    between,
    format_value,
    reproduction,
    training_seconds,
    within,
)

__all__ = [
    "REPRODUCTIONS",
    "Context",
    "Figure",
    "Outcome",
    "Reproduction",
    "ReproductionRun",
    "Table",
    "Target",
    "at_least",
    "at_most",
    "bench_config",
    "between",
    "default_out",
    "format_value",
    "reproduction",
    "run_reproduction",
    "training_seconds",
    "within",
]


def _load_entries() -> None:
    # Importing the entry modules registers their entries.
    for mod in ("defenses", "whitebox", "blackbox", "transferability", "certification"):
        __import__(f"advlab.reproduce.{mod}")


_load_entries()


@dataclass
class ReproductionRun:
    """A finished reproduction: the entry, its outcome, the resolved parameters, the JSON
    payload written, and the files (``json``, ``html``)."""

    entry: Reproduction
    outcome: Outcome
    params: dict[str, Any]
    payload: dict[str, Any]
    files: dict[str, Path]

    @property
    def passed(self) -> bool | None:
        return self.outcome.passed


def default_out(name: str, quick: bool) -> Path:
    """``advlab-out/reproduce/<name>[-quick]`` under the working directory."""
    return Path("advlab-out") / "reproduce" / f"{name}{'-quick' if quick else ''}"


def run_reproduction(
    name: str, *, quick: bool = False, overrides: Mapping[str, Any] | None = None,
    out: str | Path | None = None, data_dir: str | None = None, device: str = "cpu",
    fresh: bool = False, progress: Progress | None = None,
) -> ReproductionRun:  # fmt: skip
    """Run catalog entry ``name`` and write its report.

    Args:
        name: a name in :data:`REPRODUCTIONS` (``advlab reproduce list``).
        quick: the entry's quick mode (mnist5k, small budgets: minutes on a CPU).
        overrides: parameters to change (``--set key=value``); unknown keys raise.
        out: the output folder (default :func:`default_out`); models and evaluation stages
            kept there are reused, so the same call resumes an interrupted run.
        data_dir: the folder holding standard datasets (full MNIST for the full runs).
        device: ``"cpu"`` or ``"cuda"``.
        fresh: recompute stored evaluation stages (trained models are kept).
        progress: called with progress events.

    Returns:
        The :class:`ReproductionRun`; ``reproduction.json`` and ``reproduction.html`` are in
        ``out``.
    """
    from advlab.report.reproduction import render_reproduction

    entry: Reproduction = REPRODUCTIONS.get(name)
    params = entry.resolve(quick=quick, overrides=overrides)
    folder = Path(out) if out is not None else default_out(name, quick)
    check_writable_folder(folder, f"--out {folder}")
    provenance = capture(seed=params.get("seed"),
                         config={"reproduction": name, "quick": quick, "params": params})  # fmt: skip
    ctx = Context(entry, params, quick=quick, out=folder, data_dir=data_dir, device=device,
                  fresh=fresh, progress=progress)  # fmt: skip
    tick = time.perf_counter()
    outcome = entry.run(ctx)
    seconds = time.perf_counter() - tick
    payload: dict[str, Any] = {
        "name": name, "title": entry.title, "paper": entry.paper, "claim": entry.claim,
        "budget": entry.budget, "quick": quick, "params": params, "out": str(folder),
        "passed": outcome.passed, "seconds": seconds,
        "figures": [f.to_dict() for f in outcome.figures],
        "tables": [{"title": t.title, "columns": t.columns, "rows": t.rows}
                   for t in outcome.tables],
        "notes": list(outcome.notes), "data": outcome.data, "provenance": provenance,
    }  # fmt: skip
    files = {
        "json": atomic_write_json(folder / "reproduction.json", payload),
        "html": atomic_write_text(folder / "reproduction.html",
                                  render_reproduction(payload, outcome.plots)),
    }  # fmt: skip
    return ReproductionRun(entry, outcome, params, payload, files)
