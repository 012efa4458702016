"""The run store: runs, evaluations and per-sample results in one SQLite file."""

from advlab.store.sqlite import (
    SAMPLE_COLUMNS,
    SCHEMA_VERSION,
    STATUSES,
    RunStore,
    canonical_json,
    environment_info,
    git_revision,
    new_run_id,
)

__all__ = [
    "SAMPLE_COLUMNS",
    "SCHEMA_VERSION",
    "STATUSES",
    "RunStore",
    "canonical_json",
    "environment_info",
    "git_revision",
    "new_run_id",
]
