"""The run store: every run, its per-sample records, kept examples and summaries, in SQLite.

One file (by default :func:`advlab.paths.store_path`) holds:

* ``runs``: one row per run: kind, status, configuration, provenance (:mod:`advlab.provenance`),
  summary, the reason it failed, and the lease of the process that owns it;
* ``evaluations``: one row per (run, attack, norm, eps): a :class:`~advlab.results.Cell` that
  was run, or a row derived from cells (a minimal attack read at an eps, the worst case), with
  its aggregate :class:`~advlab.results.Summary`;
* ``samples``: one :class:`~advlab.results.SampleRecord` per (evaluation, dataset index);
* ``examples``: the adversarial examples kept for the report's image grid.

Samples are addressed by their dataset index, so an interrupted run resumes by skipping the
indices already stored, and shards of one evaluation merge by inserting their rows. The database
runs in WAL mode (a reader never blocks a writer); each batch of records is written in one
transaction, so an interrupt loses at most the batch in flight.

**Schema versions.** The file records its schema version. Opening a file written by an older
advlab upgrades it in place with the forward migrations in :data:`MIGRATIONS`, one version at a
time, each in one transaction; a file from a newer advlab is refused.
"""

from __future__ import annotations

import json
import logging
import math
import os
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from advlab import paths
from advlab.errors import CheckpointError, ConfigError, LeaseLost, UnknownNameError
from advlab.results import Cell, Example, SampleRecord, Summary
from advlab.serialize import canonical_json, from_plain_float

log = logging.getLogger(__name__)

#: Version of the table layout written by this code.
SCHEMA_VERSION = 3

#: The states a run can be in.
STATUSES: tuple[str, ...] = ("running", "complete", "failed", "interrupted")

_SCHEMA = """
CREATE TABLE meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE runs (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    created TEXT NOT NULL,
    finished TEXT,
    status TEXT NOT NULL CHECK (status IN ('running', 'complete', 'failed', 'interrupted')),
    config TEXT NOT NULL,
    provenance TEXT NOT NULL,
    summary TEXT,
    error TEXT,
    owner TEXT,
    heartbeat REAL
);
CREATE INDEX runs_kind_status ON runs (kind, status);
CREATE TABLE evaluations (
    id INTEGER PRIMARY KEY,
    run_id TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    attack TEXT NOT NULL,
    norm TEXT NOT NULL,
    eps REAL NOT NULL,
    params TEXT NOT NULL,
    n INTEGER,
    robust_accuracy REAL,
    ci_low REAL,
    ci_high REAL,
    success_rate REAL,
    mean_norm REAL,
    median_norm REAL,
    wall_time REAL NOT NULL DEFAULT 0,
    queries INTEGER,
    robust INTEGER,
    stopped INTEGER,
    UNIQUE (run_id, attack, norm, eps)
);
CREATE TABLE samples (
    evaluation_id INTEGER NOT NULL REFERENCES evaluations (id) ON DELETE CASCADE,
    idx INTEGER NOT NULL,
    label INTEGER NOT NULL,
    clean_pred INTEGER NOT NULL,
    adv_pred INTEGER NOT NULL,
    success INTEGER NOT NULL,
    norm REAL NOT NULL,
    queries INTEGER NOT NULL,
    target INTEGER,
    extras TEXT,
    stopped TEXT,
    certified REAL,
    shard INTEGER,
    PRIMARY KEY (evaluation_id, idx)
) WITHOUT ROWID;
CREATE TABLE examples (
    evaluation_id INTEGER NOT NULL REFERENCES evaluations (id) ON DELETE CASCADE,
    idx INTEGER NOT NULL,
    shape TEXT NOT NULL,
    x BLOB NOT NULL,
    x_adv BLOB NOT NULL,
    label INTEGER NOT NULL,
    clean_pred INTEGER NOT NULL,
    adv_pred INTEGER NOT NULL,
    PRIMARY KEY (evaluation_id, idx)
) WITHOUT ROWID;
"""


def _v1_to_v2(c: sqlite3.Connection) -> None:
    """Version 2: typed per-sample records (target, extras, certified bound, shard), kept
    examples, run provenance (renamed from environment), failure reasons and run leases."""
    c.execute("ALTER TABLE runs RENAME COLUMN environment TO provenance")
    for col in ("error TEXT", "owner TEXT", "heartbeat REAL"):
        c.execute(f"ALTER TABLE runs ADD COLUMN {col}")
    c.execute("ALTER TABLE evaluations ADD COLUMN robust INTEGER")
    c.execute(
        "UPDATE evaluations SET robust = CAST(ROUND(robust_accuracy * n) AS INTEGER) "
        "WHERE robust_accuracy IS NOT NULL AND n IS NOT NULL"
    )
    for col in ("target INTEGER", "extras TEXT", "certified REAL", "shard INTEGER"):
        c.execute(f"ALTER TABLE samples ADD COLUMN {col}")
    _script(c, _SCHEMA[_SCHEMA.index("CREATE TABLE examples") :])


def _v2_to_v3(c: sqlite3.Connection) -> None:
    """Version 3: which samples a query budget stopped (per record, and counted per row)."""
    c.execute("ALTER TABLE evaluations ADD COLUMN stopped INTEGER")
    c.execute("ALTER TABLE samples ADD COLUMN stopped TEXT")


def _script(c: sqlite3.Connection, sql: str) -> None:
    """Run ``;``-separated statements inside the open transaction (``executescript`` would
    commit it first)."""
    for stmt in sql.split(";"):
        if stmt.strip():
            c.execute(stmt)


#: ``MIGRATIONS[v]`` upgrades a version-``v`` file to version ``v + 1``.
MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {1: _v1_to_v2, 2: _v2_to_v3}


def new_run_id(now: datetime | None = None) -> str:
    """A short id that sorts by creation time: ``YYYYMMDD-HHMMSS-xxxxxx`` (UTC, 6 random hex)."""
    now = now or datetime.now(timezone.utc)
    return f"{now:%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def _num(v: float | None) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else v


def _nan(v: float | None) -> float:
    return math.nan if v is None else float(v)


@dataclass(frozen=True)
class RunInfo:
    """One row of the ``runs`` table.

    Attributes:
        id, kind, created, finished, status: what and when; ``status`` is one of
            :data:`STATUSES`.
        config: the resolved configuration the run was started with.
        provenance: what produced it (:func:`advlab.provenance.capture`).
        summary: the short result stored at the end, if any.
        error: why it failed, for ``status == "failed"``.
        owner, heartbeat: the process holding the run and its last sign of life (unix time).
    """

    id: str
    kind: str
    created: str
    finished: str | None
    status: str
    config: dict[str, Any]
    provenance: dict[str, Any]
    summary: dict[str, Any] | None
    error: str | None
    owner: str | None
    heartbeat: float | None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class RunStore:
    """A SQLite file holding runs, their records, examples and summaries.

    The file and its tables are created on first open; an older file is migrated. Use it as a
    context manager, or call :meth:`close`.

    Args:
        path: the database file; default :func:`advlab.paths.store_path`.

    Raises:
        CheckpointError: if the file exists but is not an advlab run store (corrupt, another
            program's database, or written by a newer advlab).
    """

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path).expanduser() if path is not None else paths.store_path()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(self.path, timeout=30.0)
        except (OSError, sqlite3.Error) as e:
            raise CheckpointError(
                f"cannot open the run store {self.path} ({e}); check that it is a writable file, "
                "or set ADVLAB_HOME to use another folder"
            ) from None
        self._conn.row_factory = sqlite3.Row
        try:
            self._setup()
        except sqlite3.DatabaseError as e:
            self._conn.close()
            raise CheckpointError(
                f"the run store {self.path} is not a readable advlab database ({e}); move the "
                "file aside (or delete it) to start a new store, or set ADVLAB_HOME to use "
                "another folder"
            ) from None
        except BaseException:
            self._conn.close()
            raise

    def _setup(self) -> None:
        c = self._conn
        mode = c.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            log.warning("could not switch %s to WAL mode (journal_mode=%s)", self.path, mode)
        c.execute("PRAGMA synchronous=NORMAL")
        c.execute("PRAGMA foreign_keys=ON")
        c.execute("BEGIN IMMEDIATE")  # one process creates or migrates at a time
        try:
            tables = {r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if "meta" not in tables:
                if tables:
                    raise sqlite3.DatabaseError("it has tables but no advlab 'meta' table")
                _script(c, _SCHEMA)
                c.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
                version = SCHEMA_VERSION
            else:
                row = c.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
                version = int(row[0]) if row is not None else 0
            if version > SCHEMA_VERSION:
                raise CheckpointError(
                    f"the run store {self.path} has schema version {version}, newer than this "
                    f"advlab understands ({SCHEMA_VERSION}); upgrade advlab or use another store"
                )
            while version < SCHEMA_VERSION:
                if version not in MIGRATIONS:
                    raise CheckpointError(
                        f"the run store {self.path} has schema version {version}, which this "
                        "advlab cannot upgrade; start a new store"
                    )
                log.info("migrating %s from schema %d to %d", self.path, version, version + 1)
                MIGRATIONS[version](c)
                version += 1
                c.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(version),))
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise

    # -- lifecycle -------------------------------------------------------------------------

    def close(self) -> None:
        """Close the connection (idempotent)."""
        self._conn.close()

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RunStore({str(self.path)!r})"

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._conn:
            yield self._conn

    @property
    def schema_version(self) -> int:
        """The schema version recorded in the file."""
        row = self._conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        return int(row[0])

    @property
    def journal_mode(self) -> str:
        """SQLite's journal mode for this connection (``"wal"`` normally)."""
        return str(self._conn.execute("PRAGMA journal_mode").fetchone()[0]).lower()

    # -- runs --------------------------------------------------------------------------------

    def create_run(
        self,
        kind: str,
        config: Mapping[str, Any],
        provenance: Mapping[str, Any] | None = None,
        *,
        run_id: str | None = None,
        owner: str | None = None,
    ) -> str:
        """Record a new run with status ``"running"``.

        Args:
            kind: what the run does: ``"audit"``, ``"train"``, ``"evaluate"``, ...
            config: the resolved configuration (canonical JSON: equal configurations store
                equal strings, see :func:`advlab.store.lease.claim`).
            provenance: what produced it (:func:`advlab.provenance.capture`).
            run_id: an explicit id; default :func:`new_run_id`.
            owner: the lease holder (see :mod:`advlab.store.lease`), with a heartbeat of now.

        Returns:
            The run id.
        """
        if not kind or not isinstance(kind, str):
            raise ConfigError(f"a run needs a kind such as 'evaluate', got {kind!r}")
        now = datetime.now(timezone.utc)
        rid = run_id or new_run_id(now)
        with self._tx() as c:
            try:
                c.execute(
                    "INSERT INTO runs (id, kind, created, status, config, provenance, owner, "
                    "heartbeat) VALUES (?, ?, ?, 'running', ?, ?, ?, ?)",
                    (
                        rid, kind, now.isoformat(timespec="seconds"), canonical_json(config),
                        canonical_json(provenance or {}), owner,
                        time.time() if owner else None,
                    ),
                )  # fmt: skip
            except sqlite3.IntegrityError:
                raise ConfigError(
                    f"a run with id {rid!r} already exists in {self.path}; pick another id"
                ) from None
        return rid

    def _check_run(self, run_id: str) -> None:
        row = self._conn.execute("SELECT 1 FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            raise UnknownNameError(
                f"no run {run_id!r} in {self.path}; `advlab runs list` shows the runs"
            )

    def set_status(self, run_id: str, status: str) -> None:
        """Change a run's status; ``"running"`` also clears ``finished`` and ``error``."""
        self._check_status(status)
        self._check_run(run_id)
        with self._tx() as c:
            if status == "running":
                c.execute(
                    "UPDATE runs SET status = ?, finished = NULL, error = NULL WHERE id = ?",
                    (status, run_id),
                )
            else:
                c.execute(
                    "UPDATE runs SET status = ?, finished = ? WHERE id = ?",
                    (status, _now(), run_id),
                )

    def finish_run(
        self,
        run_id: str,
        status: str = "complete",
        summary: Mapping[str, Any] | None = None,
        *,
        error: str | None = None,
        owner: str | None = None,
    ) -> bool:
        """Mark a run as ended (``"complete"``, ``"failed"`` or ``"interrupted"``), release its
        lease, and record a summary and, for a failure, the reason.

        Args:
            owner: finish only if this process still holds the run's lease (another process
                may have taken over an abandoned run); ``None``: unconditionally.

        Returns:
            False if ``owner`` no longer holds the run (nothing was changed).
        """
        self._check_status(status)
        if status == "running":
            raise ConfigError("finish_run needs an end status: complete, failed or interrupted")
        self._check_run(run_id)
        with self._tx() as c:
            cur = c.execute(
                "UPDATE runs SET status = ?, finished = ?, summary = ?, error = ?, owner = NULL, "
                "heartbeat = NULL WHERE id = ? AND (? IS NULL OR owner = ?)",
                (
                    status, _now(), canonical_json(summary) if summary is not None else None,
                    error, run_id, owner, owner,
                ),
            )  # fmt: skip
        if cur.rowcount == 0:
            log.error("run %s is now owned by another process; its status was left alone", run_id)
            return False
        return True

    @staticmethod
    def _check_status(status: str) -> None:
        if status not in STATUSES:
            raise ConfigError(f"unknown run status {status!r}; use one of {', '.join(STATUSES)}")

    @staticmethod
    def _run(row: sqlite3.Row) -> RunInfo:
        return RunInfo(
            id=row["id"], kind=row["kind"], created=row["created"], finished=row["finished"],
            status=row["status"], config=_loads(row["config"]),
            provenance=_loads(row["provenance"]), summary=_loads(row["summary"]),
            error=row["error"], owner=row["owner"], heartbeat=row["heartbeat"],
        )  # fmt: skip

    def list_runs(
        self, limit: int | None = 20, *, kind: str | None = None, status: str | None = None
    ) -> list[RunInfo]:
        """The most recently created runs first."""
        sql = "SELECT * FROM runs"
        where: list[str] = []
        args: list[Any] = []
        if kind is not None:
            where.append("kind = ?")
            args.append(kind)
        if status is not None:
            self._check_status(status)
            where.append("status = ?")
            args.append(status)
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY rowid DESC"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(int(limit))
        return [self._run(r) for r in self._conn.execute(sql, args)]

    def get_run(self, run_id: str) -> RunInfo:
        """One run.

        Raises:
            UnknownNameError: if there is no such run.
        """
        row = self._conn.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            raise UnknownNameError(
                f"no run {run_id!r} in {self.path}; `advlab runs list` shows the runs"
            )
        return self._run(row)

    def execute_in_transaction(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        """Run ``fn(connection)`` inside one ``BEGIN IMMEDIATE`` transaction (a write lock held
        from the start, so that a read-then-write decision cannot race another process)."""
        c = self._conn
        c.execute("BEGIN IMMEDIATE")
        try:
            out = fn(c)
            c.execute("COMMIT")
            return out
        except BaseException:
            c.execute("ROLLBACK")
            raise

    # -- cells (evaluations) ------------------------------------------------------------------

    def find_cell(self, run_id: str, attack: str, norm: str, eps: float) -> int | None:
        """The id of the evaluation row (run, attack, norm, eps), or ``None``."""
        row = self._conn.execute(
            "SELECT id FROM evaluations WHERE run_id = ? AND attack = ? AND norm = ? AND eps = ?",
            (run_id, attack, norm, float(eps)),
        ).fetchone()
        return None if row is None else int(row[0])

    def cell_id(self, run_id: str, cell: Cell) -> int:
        """The id of ``cell``'s evaluation row in the run, created if it does not exist.

        Raises:
            UnknownNameError: if there is no such run.
            ConfigError: if the row exists with other parameters (its stored records would not
                match the new ones).
        """
        self._check_run(run_id)
        text = canonical_json(cell.params)
        with self._tx() as c:
            c.execute(
                "INSERT OR IGNORE INTO evaluations (run_id, attack, norm, eps, params) "
                "VALUES (?, ?, ?, ?, ?)",
                (run_id, cell.attack, cell.norm, float(cell.eps), text),
            )
            row = c.execute(
                "SELECT id, params FROM evaluations "
                "WHERE run_id = ? AND attack = ? AND norm = ? AND eps = ?",
                (run_id, cell.attack, cell.norm, float(cell.eps)),
            ).fetchone()
        if row["params"] != text:
            raise ConfigError(
                f"run {run_id!r} already holds {cell} with parameters {row['params']}, not "
                f"{text}; start a new run to use other parameters"
            )
        return int(row["id"])

    def cells(self, run_id: str) -> list[tuple[int, Cell]]:
        """Every evaluation row of a run that holds per-sample records: ``(id, cell)``, in the
        order the rows were created (the clean pass, attack cells, certification cells)."""
        self._check_run(run_id)
        rows = self._conn.execute(
            "SELECT e.id, e.attack, e.norm, e.eps, e.params FROM evaluations e WHERE e.run_id = ? "
            "AND EXISTS (SELECT 1 FROM samples s WHERE s.evaluation_id = e.id) ORDER BY e.id",
            (run_id,),
        ).fetchall()
        return [(int(r[0]), Cell(r[1], r[2], float(r[3]), _loads(r[4]))) for r in rows]

    def run_ids(self) -> list[str]:
        """Every run id in the store, newest first."""
        return [r[0] for r in self._conn.execute("SELECT id FROM runs ORDER BY rowid DESC")]

    def write_summary(self, run_id: str, summary: Summary) -> None:
        """Store the aggregate numbers of one row (created if it is not stored yet)."""
        cell = Cell(summary.attack, summary.norm, summary.eps, summary.params)
        eid = self.cell_id(run_id, cell)
        with self._tx() as c:
            c.execute(
                "UPDATE evaluations SET n = ?, robust = ?, robust_accuracy = ?, ci_low = ?, "
                "ci_high = ?, success_rate = ?, mean_norm = ?, median_norm = ?, queries = ?, "
                "wall_time = ?, stopped = ? WHERE id = ?",
                (
                    summary.n, summary.robust, summary.robust_accuracy, summary.ci_low,
                    summary.ci_high, _num(summary.success_rate), _num(summary.mean_norm),
                    _num(summary.median_norm), summary.queries, summary.wall_time,
                    summary.stopped, eid,
                ),
            )  # fmt: skip

    def summaries(self, run_id: str) -> list[Summary]:
        """The stored summaries of a run, in the order they were first written."""
        self._check_run(run_id)
        rows = self._conn.execute(
            "SELECT * FROM evaluations WHERE run_id = ? AND n IS NOT NULL ORDER BY id", (run_id,)
        ).fetchall()
        return [
            Summary(
                attack=r["attack"],
                norm=r["norm"],
                eps=r["eps"],
                params=_loads(r["params"]),
                n=r["n"],
                robust=r["robust"]
                if r["robust"] is not None
                else round(r["robust_accuracy"] * r["n"]),
                robust_accuracy=r["robust_accuracy"],
                ci_low=r["ci_low"],
                ci_high=r["ci_high"],
                success_rate=_nan(r["success_rate"]),
                mean_norm=_nan(r["mean_norm"]),
                median_norm=_nan(r["median_norm"]),
                queries=r["queries"] or 0,
                wall_time=r["wall_time"] or 0.0,
                stopped=r["stopped"] or 0,
            )
            for r in rows
        ]

    def wall_time(self, evaluation_id: int) -> float:
        """Seconds spent computing an evaluation's stored records."""
        row = self._conn.execute(
            "SELECT wall_time FROM evaluations WHERE id = ?", (evaluation_id,)
        ).fetchone()
        return float(row[0]) if row is not None else 0.0

    # -- records -------------------------------------------------------------------------------

    def add_records(
        self,
        evaluation_id: int,
        records: Iterable[SampleRecord],
        *,
        wall_time: float = 0.0,
        examples: Sequence[Example] = (),
        owner: str | None = None,
    ) -> int:
        """Insert (or replace) per-sample records, and any examples kept with them, in one
        transaction, adding ``wall_time`` (the seconds they took) to the evaluation's total.
        Returns the number of records written.

        Args:
            owner: write only if this process still holds the run's lease.

        Raises:
            LeaseLost: another process owns the run now (nothing was written).
        """
        data = [
            (
                evaluation_id, r.index, r.label, r.clean_pred, r.adv_pred, int(r.success),
                float(r.norm), r.queries, r.target,
                canonical_json(r.extras) if r.extras else None, r.stopped, r.certified, r.shard,
            )
            for r in records
        ]  # fmt: skip
        with self._tx() as c:
            if owner is not None:
                self._check_owner(c, evaluation_id, owner)
            try:
                c.executemany(
                    "INSERT OR REPLACE INTO samples (evaluation_id, idx, label, clean_pred, "
                    "adv_pred, success, norm, queries, target, extras, stopped, certified, shard) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    data,
                )
            except sqlite3.IntegrityError:
                raise UnknownNameError(f"no evaluation {evaluation_id} in {self.path}") from None
            if examples:
                c.executemany(
                    "INSERT OR REPLACE INTO examples VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    _example_rows(evaluation_id, examples),
                )
            if wall_time:
                c.execute(
                    "UPDATE evaluations SET wall_time = wall_time + ? WHERE id = ?",
                    (float(wall_time), evaluation_id),
                )
        return len(data)

    def _check_owner(self, c: sqlite3.Connection, evaluation_id: int, owner: str) -> None:
        row = c.execute(
            "SELECT r.id, r.owner FROM runs r JOIN evaluations e ON e.run_id = r.id WHERE e.id = ?",
            (evaluation_id,),
        ).fetchone()
        if row is not None and row["owner"] != owner:
            raise LeaseLost(
                f"run {row['id']} is now owned by another process ({row['owner']}): this one "
                "stalled past its lease and stopped; the run and its results are the other's"
            )

    def records(self, evaluation_id: int) -> list[SampleRecord]:
        """The stored records of an evaluation, ordered by dataset index."""
        rows = self._conn.execute(
            "SELECT * FROM samples WHERE evaluation_id = ? ORDER BY idx", (evaluation_id,)
        ).fetchall()
        return [
            SampleRecord(
                index=r["idx"],
                label=r["label"],
                clean_pred=r["clean_pred"],
                adv_pred=r["adv_pred"],
                success=bool(r["success"]),
                norm=float(r["norm"]),
                queries=r["queries"],
                target=r["target"],
                extras={k: from_plain_float(v) for k, v in (_loads(r["extras"]) or {}).items()},
                stopped=r["stopped"],
                certified=r["certified"],
                shard=r["shard"],
            )
            for r in rows
        ]

    def count_records(self, evaluation_id: int) -> int:
        """How many records an evaluation holds."""
        row = self._conn.execute(
            "SELECT COUNT(*) FROM samples WHERE evaluation_id = ?", (evaluation_id,)
        ).fetchone()
        return int(row[0])

    # -- examples ------------------------------------------------------------------------------

    def add_examples(self, evaluation_id: int, examples: Sequence[Example]) -> None:
        """Keep adversarial examples (images stored as float32 bytes)."""
        with self._tx() as c:
            c.executemany(
                "INSERT OR REPLACE INTO examples VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                _example_rows(evaluation_id, examples),
            )

    def examples(self, evaluation_id: int) -> list[Example]:
        """The examples kept for an evaluation, ordered by dataset index."""
        cell = self._conn.execute(
            "SELECT attack, norm, eps FROM evaluations WHERE id = ?", (evaluation_id,)
        ).fetchone()
        rows = self._conn.execute(
            "SELECT * FROM examples WHERE evaluation_id = ? ORDER BY idx", (evaluation_id,)
        ).fetchall()
        out = []
        for r in rows:
            shape = tuple(json.loads(r["shape"]))
            out.append(
                Example(
                    index=r["idx"],
                    attack=cell["attack"],
                    norm=cell["norm"],
                    eps=cell["eps"],
                    x=_tensor(r["x"], shape),
                    x_adv=_tensor(r["x_adv"], shape),
                    label=r["label"],
                    clean_pred=r["clean_pred"],
                    adv_pred=r["adv_pred"],
                )
            )
        return out


def _example_rows(evaluation_id: int, examples: Sequence[Example]) -> list[tuple[Any, ...]]:
    return [
        (
            evaluation_id, e.index, json.dumps(list(e.x.shape)), _blob(e.x), _blob(e.x_adv),
            e.label, e.clean_pred, e.adv_pred,
        )
        for e in examples
    ]  # fmt: skip


def _blob(t: torch.Tensor) -> bytes:
    return t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()


def _tensor(b: bytes, shape: tuple[int, ...]) -> torch.Tensor:
    import numpy as np

    return torch.from_numpy(np.frombuffer(b, dtype="<f4").copy()).view(shape)
