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
        owner: the lease holder this process is (:func:`advlab.store.lease.owner_id`); every
            write then checks that it still holds the run and raises
            :class:`~advlab.errors.LeaseLost` if another process took it over.
    """

    def __init__(self, store: RunStore, run_id: str, *, owner: str | None = None) -> None:
        store.get_run(run_id)  # UnknownNameError for a wrong id
        self.store = store
        self.run_id = run_id
        self.owner = owner
        self._ids: dict[tuple[str, str, float], int] = {}

    def _id(self, cell: Cell, *, create: bool = True) -> int | None:
        """The cell's evaluation id; reading (``create=False``) never creates the row, but
        does check that a stored cell has the same parameters."""
        key = cell.key
        if key not in self._ids:
            if not create and self.store.find_cell(self.run_id, *key) is None:
                return None
            self._ids[key] = self.store.cell_id(self.run_id, cell)
        return self._ids[key]

    def stored(self, cell: Cell) -> dict[int, SampleRecord]:
        eid = self._id(cell, create=False)
        return {} if eid is None else {r.index: r for r in self.store.records(eid)}

    def write(
        self,
        cell: Cell,
        records: Sequence[SampleRecord],
        *,
        wall_time: float = 0.0,
        examples: Sequence[Example] = (),
    ) -> None:
        eid = self._id(cell)
        assert eid is not None
        self.store.add_records(
            eid, records, wall_time=wall_time, examples=examples, owner=self.owner
        )

    def examples(self, cell: Cell) -> list[Example]:
        eid = self._id(cell, create=False)
        return [] if eid is None else self.store.examples(eid)

    def wall_time(self, cell: Cell) -> float:
        eid = self._id(cell, create=False)
        return 0.0 if eid is None else self.store.wall_time(eid)

    def summarize(self, summaries: Sequence[Summary]) -> None:
        for s in summaries:
            self.store.write_summary(self.run_id, s)
