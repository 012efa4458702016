"""Where an evaluation writes its records as each batch completes.

A :class:`ResultSink` keeps, per :class:`~advlab.results.Cell`, the
:class:`~advlab.results.SampleRecord` s computed so far, the seconds they took and the examples
kept for the report, and at the end the summaries of the rows. It also answers what it already
holds, which is how an interrupted evaluation resumes and how shards merge.

Three sinks: :class:`MemorySink` (a dict, for tests and notebooks), :class:`JsonlSink` (an
append-only JSON-lines file) and :class:`advlab.store.StoreSink` (the SQLite run store).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch

from advlab.errors import CheckpointError, ConfigError
from advlab.results import Cell, Example, SampleRecord, Summary
from advlab.serialize import canonical_json, from_plain_float, plain

CellKey = tuple[str, str, float]


@runtime_checkable
class ResultSink(Protocol):
    """What the evaluation engine writes to (see the module docstring)."""

    def stored(self, cell: Cell) -> dict[int, SampleRecord]:
        """The records held for ``cell``, by dataset index."""
        ...

    def write(
        self,
        cell: Cell,
        records: Sequence[SampleRecord],
        *,
        wall_time: float = 0.0,
        examples: Sequence[Example] = (),
    ) -> None:
        """Keep one batch of records (and the seconds it took, and any examples)."""
        ...

    def examples(self, cell: Cell) -> list[Example]:
        """The examples kept for ``cell``, by dataset index."""
        ...

    def wall_time(self, cell: Cell) -> float:
        """Seconds spent on ``cell``'s records so far."""
        ...

    def summarize(self, summaries: Sequence[Summary]) -> None:
        """Keep the aggregate rows of the finished evaluation."""
        ...


@dataclass
class _CellData:
    records: dict[int, SampleRecord] = field(default_factory=dict)
    examples: dict[int, Example] = field(default_factory=dict)
    wall_time: float = 0.0


class MemorySink:
    """A sink that keeps everything in memory."""

    def __init__(self) -> None:
        self.cells: dict[CellKey, _CellData] = {}
        self.params: dict[CellKey, str] = {}
        self.summaries: list[Summary] = []

    def _data(self, cell: Cell, *, create: bool = False) -> _CellData:
        text = canonical_json(cell.params)
        held = self.params.get(cell.key)
        if held is not None and held != text:
            raise ConfigError(
                f"this sink holds {cell} with other parameters; use a new sink for new ones"
            )
        if cell.key not in self.cells:
            if not create:
                return _CellData()  # reading does not create the cell
            self.params[cell.key] = text
            self.cells[cell.key] = _CellData()
        return self.cells[cell.key]

    def stored(self, cell: Cell) -> dict[int, SampleRecord]:
        return dict(self._data(cell).records)

    def write(
        self,
        cell: Cell,
        records: Sequence[SampleRecord],
        *,
        wall_time: float = 0.0,
        examples: Sequence[Example] = (),
    ) -> None:
        d = self._data(cell, create=True)
        d.records.update((r.index, r) for r in records)
        d.examples.update((e.index, e) for e in examples)
        d.wall_time += wall_time

    def examples(self, cell: Cell) -> list[Example]:
        ex = self._data(cell).examples
        return [ex[i] for i in sorted(ex)]

    def wall_time(self, cell: Cell) -> float:
        return self._data(cell).wall_time

    def summarize(self, summaries: Sequence[Summary]) -> None:
        self.summaries = list(summaries)


class JsonlSink(MemorySink):
    """A sink that appends one JSON line per batch to a file and reads it back on open.

    Each line is ``{"cell": {...}, "records": [...], "wall_time": s, "examples": [...]}`` or
    ``{"summaries": [...]}``. A last line cut short by a crash is ignored (its batch is
    recomputed) and removed before this sink's first write; opening a file only to read it
    never changes it.

    Args:
        path: the file; created with its folder if missing.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__()
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._torn_at: int | None = None
        if self.path.exists():
            self._load()

    def _load(self) -> None:
        data = self.path.read_bytes()
        complete = data[: data.rfind(b"\n") + 1]
        if len(complete) < len(data):  # a line torn by a crash: cut before the next write
            self._torn_at = len(complete)
        lines = complete.decode("utf-8").splitlines()
        for n, line in enumerate(lines, 1):
            try:
                item = json.loads(line)
            except json.JSONDecodeError:
                raise CheckpointError(
                    f"{self.path} line {n} is not JSON; it is not an advlab JSON-lines sink"
                ) from None
            if "cell" in item:
                c = item["cell"]
                cell = Cell(c["attack"], c["norm"], from_plain_float(c["eps"]), c["params"])
                recs = [_record(r) for r in item["records"]]
                exs = [_example(e, cell) for e in item.get("examples", [])]
                super().write(cell, recs, wall_time=item.get("wall_time", 0.0), examples=exs)

    def _append(self, item: dict[str, Any]) -> None:
        if self._torn_at is not None:  # writing: the torn line goes (reading left it alone)
            with open(self.path, "r+b") as fh:
                fh.truncate(self._torn_at)
            self._torn_at = None
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(plain(item), allow_nan=False) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def write(
        self,
        cell: Cell,
        records: Sequence[SampleRecord],
        *,
        wall_time: float = 0.0,
        examples: Sequence[Example] = (),
    ) -> None:
        super().write(cell, records, wall_time=wall_time, examples=examples)
        self._append({
            "cell": {"attack": cell.attack, "norm": cell.norm, "eps": cell.eps,
                     "params": dict(cell.params)},
            "records": [r.to_dict() for r in records],
            "wall_time": wall_time,
            "examples": [_example_dict(e) for e in examples],
        })  # fmt: skip

    def summarize(self, summaries: Sequence[Summary]) -> None:
        super().summarize(summaries)
        self._append({"summaries": [s.to_dict() for s in summaries]})


def _record(d: dict[str, Any]) -> SampleRecord:
    extras = {k: from_plain_float(v) for k, v in d.get("extras", {}).items()}
    return SampleRecord(
        index=d["index"], label=d["label"], clean_pred=d["clean_pred"], adv_pred=d["adv_pred"],
        success=d["success"], norm=from_plain_float(d["norm"]), queries=d["queries"],
        target=d.get("target"), extras=extras, stopped=d.get("stopped"),
        certified=d.get("certified"), shard=d.get("shard"),
    )  # fmt: skip


def _example_dict(e: Example) -> dict[str, Any]:
    return {
        "index": e.index, "shape": list(e.x.shape), "x": e.x.flatten().tolist(),
        "x_adv": e.x_adv.flatten().tolist(), "label": e.label, "clean_pred": e.clean_pred,
        "adv_pred": e.adv_pred,
    }  # fmt: skip


def _example(d: dict[str, Any], cell: Cell) -> Example:
    shape = tuple(d["shape"])
    return Example(
        index=d["index"], attack=cell.attack, norm=cell.norm, eps=cell.eps,
        x=torch.tensor(d["x"], dtype=torch.float32).view(shape),
        x_adv=torch.tensor(d["x_adv"], dtype=torch.float32).view(shape),
        label=d["label"], clean_pred=d["clean_pred"], adv_pred=d["adv_pred"],
    )  # fmt: skip
