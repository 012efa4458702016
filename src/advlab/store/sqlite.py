"""The run store: every audit, training and evaluation run, and its per-sample results, in SQLite.

One file (by default :func:`advlab.paths.store_path`) holds three tables:

* ``runs``: one row per run, with its kind, status, configuration, environment and summary;
* ``evaluations``: one row per (run, attack, norm, eps), with the aggregate numbers;
* ``samples``: one row per (evaluation, dataset index) with the per-sample outcome.

Samples are addressed by their index in the dataset, so a run that was interrupted resumes by
skipping the indices already stored (:meth:`RunStore.done_indices`) and shards of one evaluation
merge by inserting their rows. The database runs in WAL mode so that a reader (``advlab runs
list``) never blocks a writer, and each batch of samples is written in one transaction, so an
interrupt loses at most the batch in flight.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import secrets
import sqlite3
import subprocess
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from advlab import paths
from advlab.errors import CheckpointError, ConfigError, UnknownNameError

log = logging.getLogger(__name__)

#: Version of the table layout written by this code; bumped on incompatible changes.
SCHEMA_VERSION = 1

#: The states a run can be in.
STATUSES: tuple[str, ...] = ("running", "complete", "failed", "interrupted")

#: Columns of one sample row, in the order :meth:`RunStore.add_samples` accepts for sequences.
SAMPLE_COLUMNS: tuple[str, ...] = (
    "idx", "label", "clean_pred", "adv_pred", "success", "norm", "queries",
)  # fmt: skip

#: Aggregate columns of an evaluation row, set by :meth:`RunStore.update_evaluation_summary`.
SUMMARY_COLUMNS: tuple[str, ...] = (
    "n", "robust_accuracy", "ci_low", "ci_high", "success_rate", "mean_norm", "median_norm",
    "wall_time", "queries",
)  # fmt: skip

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    created TEXT NOT NULL,
    finished TEXT,
    status TEXT NOT NULL CHECK (status IN ('running', 'complete', 'failed', 'interrupted')),
    config TEXT NOT NULL,
    environment TEXT NOT NULL,
    summary TEXT
);
CREATE INDEX IF NOT EXISTS runs_kind_status ON runs (kind, status);
CREATE TABLE IF NOT EXISTS evaluations (
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
    UNIQUE (run_id, attack, norm, eps)
);
CREATE TABLE IF NOT EXISTS samples (
    evaluation_id INTEGER NOT NULL REFERENCES evaluations (id) ON DELETE CASCADE,
    idx INTEGER NOT NULL,
    label INTEGER NOT NULL,
    clean_pred INTEGER NOT NULL,
    adv_pred INTEGER NOT NULL,
    success INTEGER NOT NULL,
    norm REAL NOT NULL,
    queries INTEGER NOT NULL,
    PRIMARY KEY (evaluation_id, idx)
) WITHOUT ROWID;
"""


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no spaces, so equal configurations give equal strings.

    NaN and infinities are written as the strings ``"nan"``, ``"inf"`` and ``"-inf"``; tuples
    become lists; anything else that JSON cannot hold raises :class:`ConfigError`.
    """
    try:
        return json.dumps(_plain(obj), sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ConfigError(
            f"cannot store {type(obj).__name__} as JSON ({e}); use numbers, strings, lists and "
            "dicts in configurations and parameters"
        ) from None


def _plain(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return "nan" if obj != obj else ("inf" if obj > 0 else "-inf")
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def new_run_id(now: datetime | None = None) -> str:
    """A short id that sorts by creation time: ``YYYYMMDD-HHMMSS-xxxxxx`` (UTC, 6 random hex)."""
    now = now or datetime.now(timezone.utc)
    return f"{now:%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def git_revision(path: str | os.PathLike[str] | None = None) -> str | None:
    """The git commit of the checkout holding ``path`` (default: advlab's source), if any."""
    where = Path(path) if path is not None else Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=where,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    rev = out.stdout.strip()
    return rev if out.returncode == 0 and rev else None


def environment_info(seed: int | None = None) -> dict[str, Any]:
    """What to record with a run so that it can be reproduced.

    Returns:
        Versions of Python, advlab, torch, numpy; the platform; the git revision of advlab's
        checkout (``None`` for an installed wheel); the device torch sees; and ``seed``.
    """
    import numpy
    import torch

    import advlab

    return {
        "python": platform.python_version(),
        "advlab": advlab.__version__,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "platform": platform.platform(),
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "git_revision": git_revision(),
        "seed": seed,
    }


def _loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


class RunStore:
    """A SQLite file holding runs, evaluations and per-sample results.

    The file and its tables are created on first open. Use it as a context manager, or call
    :meth:`close`.

    Args:
        path: the database file; default :func:`advlab.paths.store_path`.

    Raises:
        CheckpointError: if the file exists but is not an advlab run store (corrupt, another
            program's database, or written by a newer advlab).

    Example:
        >>> with RunStore(tmp_path / "runs.sqlite") as store:
        ...     run = store.create_run("evaluate", {"eps": [0.1]}, environment_info(seed=0))
        ...     ev = store.ensure_evaluation(run, "pgd", "linf", 0.1, {"steps": 10})
        ...     store.add_samples(ev, [{"idx": 0, "label": 3, "clean_pred": 3, "adv_pred": 5,
        ...                             "success": 1, "norm": 0.1, "queries": 11}])
        ...     store.finish_run(run, "complete", {"robust_accuracy": 0.0})
    """

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path).expanduser() if path is not None else paths.store_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._conn = sqlite3.connect(self.path, timeout=30.0)
        except sqlite3.Error as e:
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
        with c:
            c.executescript(_SCHEMA)
            row = c.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            if row is None:
                c.execute(
                    "INSERT INTO meta (key, value) VALUES ('schema_version', ?)",
                    (str(SCHEMA_VERSION),),
                )
                version = SCHEMA_VERSION
            else:
                version = int(row[0])
        if version > SCHEMA_VERSION:
            raise CheckpointError(
                f"the run store {self.path} has schema version {version}, newer than this "
                f"advlab understands ({SCHEMA_VERSION}); upgrade advlab or use another store"
            )

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
        environment: Mapping[str, Any] | None = None,
        *,
        run_id: str | None = None,
    ) -> str:
        """Record a new run with status ``"running"``.

        Args:
            kind: what the run does: ``"audit"``, ``"train"``, ``"evaluate"``, ...
            config: the resolved configuration, as given (stored as canonical JSON; two runs
                with equal configurations store equal strings, see :meth:`find_resumable`).
            environment: versions, git revision, seed (see :func:`environment_info`).
            run_id: an explicit id; default :func:`new_run_id`.

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
                    "INSERT INTO runs (id, kind, created, status, config, environment) "
                    "VALUES (?, ?, ?, 'running', ?, ?)",
                    (
                        rid,
                        kind,
                        now.isoformat(timespec="seconds"),
                        canonical_json(config),
                        canonical_json(environment or {}),
                    ),
                )
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
        """Change a run's status; ``"running"`` also clears ``finished`` (a resumed run)."""
        self._check_status(status)
        self._check_run(run_id)
        with self._tx() as c:
            if status == "running":
                c.execute(
                    "UPDATE runs SET status = ?, finished = NULL WHERE id = ?", (status, run_id)
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
    ) -> None:
        """Mark a run as ended (``"complete"``, ``"failed"`` or ``"interrupted"``) with a summary."""
        self._check_status(status)
        if status == "running":
            raise ConfigError("finish_run needs an end status: complete, failed or interrupted")
        self._check_run(run_id)
        with self._tx() as c:
            c.execute(
                "UPDATE runs SET status = ?, finished = ?, summary = ? WHERE id = ?",
                (
                    status,
                    _now(),
                    canonical_json(summary) if summary is not None else None,
                    run_id,
                ),
            )

    @staticmethod
    def _check_status(status: str) -> None:
        if status not in STATUSES:
            raise ConfigError(f"unknown run status {status!r}; use one of {', '.join(STATUSES)}")

    @staticmethod
    def _run_dict(row: sqlite3.Row) -> dict[str, Any]:
        return {
            "id": row["id"],
            "kind": row["kind"],
            "created": row["created"],
            "finished": row["finished"],
            "status": row["status"],
            "config": _loads(row["config"]),
            "environment": _loads(row["environment"]),
            "summary": _loads(row["summary"]),
        }

    def list_runs(
        self, limit: int | None = 20, *, kind: str | None = None, status: str | None = None
    ) -> list[dict[str, Any]]:
        """The most recently created runs first, as dicts (without their evaluations)."""
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
        return [self._run_dict(r) for r in self._conn.execute(sql, args)]

    def get_run(self, run_id: str) -> dict[str, Any]:
        """One run as a dict, with its evaluations (without samples) under ``"evaluations"``.

        Raises:
            UnknownNameError: if there is no such run.
        """
        row = self._conn.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            raise UnknownNameError(
                f"no run {run_id!r} in {self.path}; `advlab runs list` shows the runs"
            )
        run = self._run_dict(row)
        run["evaluations"] = self.evaluations(run_id)
        return run

    def find_resumable(self, kind: str, config: Mapping[str, Any]) -> str | None:
        """The latest run of ``kind`` with an identical configuration that did not complete.

        An interrupted or failed audit is resumed by passing this id back to the code that
        writes the run; the batches it stored are not computed again.
        """
        row = self._conn.execute(
            "SELECT id FROM runs WHERE kind = ? AND status != 'complete' AND config = ? "
            "ORDER BY rowid DESC LIMIT 1",
            (kind, canonical_json(config)),
        ).fetchone()
        return None if row is None else str(row[0])

    # -- evaluations ----------------------------------------------------------------------------

    def get_evaluation_id(self, run_id: str, attack: str, norm: str, eps: float) -> int | None:
        """The id of the evaluation (run, attack, norm, eps), or ``None`` if it is not stored."""
        row = self._conn.execute(
            "SELECT id FROM evaluations WHERE run_id = ? AND attack = ? AND norm = ? AND eps = ?",
            (run_id, attack, norm, float(eps)),
        ).fetchone()
        return None if row is None else int(row[0])

    def ensure_evaluation(
        self,
        run_id: str,
        attack: str,
        norm: str,
        eps: float,
        params: Mapping[str, Any] | None = None,
    ) -> int:
        """The id of the evaluation (run, attack, norm, eps), created if it does not exist.

        Raises:
            UnknownNameError: if there is no such run.
            ConfigError: if the evaluation exists with other attack parameters (its stored
                samples would not match the new ones).
        """
        self._check_run(run_id)
        text = canonical_json(params or {})
        with self._tx() as c:
            c.execute(
                "INSERT OR IGNORE INTO evaluations (run_id, attack, norm, eps, params) "
                "VALUES (?, ?, ?, ?, ?)",
                (run_id, attack, norm, float(eps), text),
            )
            row = c.execute(
                "SELECT id, params FROM evaluations "
                "WHERE run_id = ? AND attack = ? AND norm = ? AND eps = ?",
                (run_id, attack, norm, float(eps)),
            ).fetchone()
        if row["params"] != text:
            raise ConfigError(
                f"run {run_id!r} already holds {attack} at {norm} eps={eps} with parameters "
                f"{row['params']}, not {text}; start a new run to use other parameters"
            )
        return int(row["id"])

    def evaluations(self, run_id: str) -> list[dict[str, Any]]:
        """The evaluations of a run, as dicts in insertion order (without samples)."""
        self._check_run(run_id)
        rows = self._conn.execute(
            "SELECT * FROM evaluations WHERE run_id = ? ORDER BY id", (run_id,)
        ).fetchall()
        out = []
        for r in rows:
            d = {k: r[k] for k in r.keys()}
            d["params"] = _loads(d["params"])
            out.append(d)
        return out

    def evaluation(self, evaluation_id: int) -> dict[str, Any]:
        """One evaluation row as a dict (without samples).

        Raises:
            UnknownNameError: if there is no such evaluation.
        """
        r = self._conn.execute(
            "SELECT * FROM evaluations WHERE id = ?", (evaluation_id,)
        ).fetchone()
        if r is None:
            raise UnknownNameError(f"no evaluation {evaluation_id} in {self.path}")
        d = {k: r[k] for k in r.keys()}
        d["params"] = _loads(d["params"])
        return d

    def update_evaluation_summary(self, evaluation_id: int, **values: float | int | None) -> None:
        """Set the aggregate columns of an evaluation.

        Args:
            values: any of ``n``, ``robust_accuracy``, ``ci_low``, ``ci_high``,
                ``success_rate``, ``mean_norm``, ``median_norm``, ``wall_time``, ``queries``;
                NaN is stored as NULL.
        """
        unknown = sorted(set(values) - set(SUMMARY_COLUMNS))
        if unknown:
            raise ConfigError(
                f"unknown evaluation columns {', '.join(unknown)}; use {', '.join(SUMMARY_COLUMNS)}"
            )
        if not values:
            return
        cols = list(values)
        args = [None if isinstance(v, float) and math.isnan(v) else v for v in values.values()]
        with self._tx() as c:
            cur = c.execute(
                f"UPDATE evaluations SET {', '.join(f'{k} = ?' for k in cols)} WHERE id = ?",
                (*args, evaluation_id),
            )
            if cur.rowcount == 0:
                raise UnknownNameError(f"no evaluation {evaluation_id} in {self.path}")

    # -- samples -----------------------------------------------------------------------------------

    def add_samples(
        self,
        evaluation_id: int,
        rows: Iterable[Mapping[str, Any] | Sequence[Any]],
        *,
        wall_time: float = 0.0,
    ) -> int:
        """Insert (or replace) per-sample rows in one transaction.

        Args:
            evaluation_id: from :meth:`ensure_evaluation`.
            rows: dicts with the keys of :data:`SAMPLE_COLUMNS`, or sequences in that order.
            wall_time: seconds spent computing these rows, added to the evaluation's total in
                the same transaction.

        Returns:
            The number of rows written.
        """
        data = [
            tuple(r[k] for k in SAMPLE_COLUMNS) if isinstance(r, Mapping) else tuple(r)
            for r in rows
        ]
        for t in data:
            if len(t) != len(SAMPLE_COLUMNS):
                raise ConfigError(
                    f"a sample row needs {len(SAMPLE_COLUMNS)} values {SAMPLE_COLUMNS}"
                )
        with self._tx() as c:
            try:
                c.executemany(
                    f"INSERT OR REPLACE INTO samples (evaluation_id, {', '.join(SAMPLE_COLUMNS)}) "
                    f"VALUES (?, {', '.join('?' * len(SAMPLE_COLUMNS))})",
                    [(evaluation_id, *t) for t in data],
                )
            except sqlite3.IntegrityError:
                raise UnknownNameError(f"no evaluation {evaluation_id} in {self.path}") from None
            if wall_time:
                c.execute(
                    "UPDATE evaluations SET wall_time = wall_time + ? WHERE id = ?",
                    (float(wall_time), evaluation_id),
                )
        return len(data)

    def done_indices(self, evaluation_id: int) -> set[int]:
        """Dataset indices already stored for an evaluation (what a resumed run skips)."""
        rows = self._conn.execute(
            "SELECT idx FROM samples WHERE evaluation_id = ?", (evaluation_id,)
        ).fetchall()
        return {int(r[0]) for r in rows}

    def samples(self, evaluation_id: int) -> list[dict[str, Any]]:
        """The stored per-sample rows of an evaluation, ordered by dataset index."""
        rows = self._conn.execute(
            f"SELECT {', '.join(SAMPLE_COLUMNS)} FROM samples WHERE evaluation_id = ? ORDER BY idx",
            (evaluation_id,),
        ).fetchall()
        return [{k: r[k] for k in SAMPLE_COLUMNS} for r in rows]

    def count_samples(self, evaluation_id: int) -> int:
        """How many sample rows an evaluation holds."""
        row = self._conn.execute(
            "SELECT COUNT(*) FROM samples WHERE evaluation_id = ?", (evaluation_id,)
        ).fetchone()
        return int(row[0])
