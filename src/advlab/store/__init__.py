"""The run store: runs, per-sample records, kept examples and summaries in one SQLite file."""

from advlab.store.sink import StoreSink
from advlab.store.sqlite import (
    MIGRATIONS,
    SCHEMA_VERSION,
    STATUSES,
    RunInfo,
    RunStore,
    new_run_id,
)

__all__ = [
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "STATUSES",
    "RunInfo",
    "RunStore",
    "StoreSink",
    "new_run_id",
]
