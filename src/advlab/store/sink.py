"""The run store as a :class:`~advlab.evaluate.sinks.ResultSink`: the evaluation engine writes
each finished batch of records to it, and reads back what a previous process stored."""

from __future__ import annotations

from collections.abc import Sequence

from advlab.results import Cell, Example, SampleRecord, Summary
from advlab.store.sqlite import RunStore


class StoreSink:
    """Records, examples and summaries of one run in a :class:`RunStore`.

    Args:
        store: the open store.
        run_id: the run to write into (it must exist).
    """

    def __init__(self, store: RunStore, run_id: str) -> None:
        store.get_run(run_id)  # UnknownNameError for a wrong id
        self.store = store
        self.run_id = run_id
        self._ids: dict[tuple[str, str, float], int] = {}

    def _id(self, cell: Cell) -> int:
        key = cell.key
        if key not in self._ids:
            self._ids[key] = self.store.cell_id(self.run_id, cell)
        return self._ids[key]

    def stored(self, cell: Cell) -> dict[int, SampleRecord]:
        return {r.index: r for r in self.store.records(self._id(cell))}

    def write(
        self,
        cell: Cell,
        records: Sequence[SampleRecord],
        *,
        wall_time: float = 0.0,
        examples: Sequence[Example] = (),
    ) -> None:
        eid = self._id(cell)
        if examples:
            self.store.add_examples(eid, examples)
        self.store.add_records(eid, records, wall_time=wall_time)

    def examples(self, cell: Cell) -> list[Example]:
        return self.store.examples(self._id(cell))

    def wall_time(self, cell: Cell) -> float:
        return self.store.wall_time(self._id(cell))

    def summarize(self, summaries: Sequence[Summary]) -> None:
        for s in summaries:
            self.store.write_summary(self.run_id, s)
