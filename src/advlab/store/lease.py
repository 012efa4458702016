"""Leases: which process owns a running run, so that a live run is never taken for a dead one.

A process that starts (or resumes) a run becomes its *owner* (``host:pid:token``) and keeps a
*heartbeat*: a background thread writes the time into the run's row every
:data:`HEARTBEAT_SECONDS`. A run with status ``running`` is **alive** while its heartbeat is
younger than :data:`STALE_SECONDS`, and, when its owner is on this host, while the owner's
process exists. Anything else that did not complete (interrupted, failed, or running with a dead
owner) is **abandoned** and may be resumed.

Limits: the same-host check trusts the host name and process ids, so containers that share a
host name but not a process namespace should use separate stores; across hosts, liveness
relies on the hosts' clocks agreeing to well within :data:`STALE_SECONDS`.

:func:`claim` decides, inside one write transaction (so two processes cannot both decide to
resume the same run), whether a process starts a new run, resumes an abandoned identical one, or
must wait for a live identical one.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import sqlite3
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from advlab.serialize import canonical_json
from advlab.store.sqlite import RunInfo, RunStore, new_run_id

log = logging.getLogger(__name__)

#: How often an owner writes its heartbeat.
HEARTBEAT_SECONDS = 5.0
#: A heartbeat older than this marks the run's owner as gone.
STALE_SECONDS = 30.0

_TOKEN = secrets.token_hex(4)


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def owner_id() -> str:
    """This process's owner id: ``host:pid:token``."""
    return f"{socket.gethostname()}:{os.getpid()}:{_TOKEN}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_alive(run: RunInfo, *, now: float | None = None) -> bool:
    """Whether ``run`` is running under a live owner (module docstring)."""
    if run.status != "running" or not run.owner or run.heartbeat is None:
        return False
    host, _, rest = run.owner.partition(":")
    pid, _, _ = rest.partition(":")
    if host == socket.gethostname() and pid.isdigit() and not _pid_alive(int(pid)):
        return False
    return (now if now is not None else time.time()) - run.heartbeat < STALE_SECONDS


@dataclass(frozen=True)
class Claim:
    """The outcome of :func:`claim`.

    Attributes:
        action: ``"new"`` (a run was created), ``"resume"`` (an abandoned identical run was
            taken over), ``"wait"`` (a live process holds an identical run) or ``"reuse"`` (the
            run waited for has completed, or with ``reuse_complete`` an identical run had).
        run_id: the run created, resumed, or held by the other process.
        owner: for ``"wait"``, the other process's owner id.
    """

    action: str
    run_id: str
    owner: str | None = None


def claim(
    store: RunStore,
    kind: str,
    config: Mapping[str, Any],
    provenance: Mapping[str, Any],
    *,
    waiting_for: str | None = None,
    reuse_complete: bool = False,
) -> Claim:
    """Start, resume or wait for a run of ``kind`` with ``config`` (module docstring).

    Args:
        waiting_for: the live run an earlier claim said to wait for; if it has completed since,
            the claim says ``"reuse"`` (decided in the same transaction, so a run that finishes
            between two looks is never missed).
        reuse_complete: if an identical run has completed, say ``"reuse"`` with the newest
            such run instead of starting a new one (re-running an identical configuration then
            reads its stored cells and computes nothing again).
    """
    me = owner_id()
    text = canonical_json(config)

    def decide(c: sqlite3.Connection) -> Claim:
        if waiting_for is not None:
            row = c.execute("SELECT status FROM runs WHERE id = ?", (waiting_for,)).fetchone()
            if row is not None and row["status"] == "complete":
                return Claim("reuse", waiting_for)
        if reuse_complete:
            done = c.execute(
                "SELECT id FROM runs WHERE kind = ? AND status = 'complete' AND config = ? "
                "ORDER BY rowid DESC LIMIT 1",
                (kind, text),
            ).fetchone()
            if done is not None:
                return Claim("reuse", done["id"])
        rows = c.execute(
            "SELECT * FROM runs WHERE kind = ? AND status != 'complete' AND config = ? "
            "ORDER BY rowid DESC",
            (kind, text),
        ).fetchall()
        now = time.time()
        runs = [RunStore._run(r) for r in rows]
        for run in runs:
            if is_alive(run, now=now):
                return Claim("wait", run.id, run.owner)
        if runs:
            run = runs[0]
            c.execute(
                "UPDATE runs SET status = 'running', finished = NULL, error = NULL, owner = ?, "
                "heartbeat = ? WHERE id = ?",
                (me, now, run.id),
            )
            return Claim("resume", run.id)
        rid = new_run_id()
        c.execute(
            "INSERT INTO runs (id, kind, created, status, config, provenance, owner, heartbeat) "
            "VALUES (?, ?, ?, 'running', ?, ?, ?, ?)",
            (rid, kind, _now_iso(), text, canonical_json(provenance), me, now),
        )
        return Claim("new", rid)

    out: Claim = store.execute_in_transaction(decide)
    return out


class Heartbeat:
    """Keeps a run's lease alive from a background thread while the ``with`` block runs.

    If the lease is found taken over (this process stalled past :data:`STALE_SECONDS` and
    another resumed the run), :attr:`lost` is set and the beat stops; the owner-checked writes
    of :class:`~advlab.store.StoreSink` then raise :class:`~advlab.errors.LeaseLost`, so the old
    owner stops at its next batch, and its ``finish_run(owner=...)`` leaves the run alone.

    Args:
        path: the store file (the thread opens its own connection).
        run_id: the run this process owns.
    """

    def __init__(self, path: str | os.PathLike[str], run_id: str) -> None:
        self.path, self.run_id, self.owner = os.fspath(path), run_id, owner_id()
        self._stop = threading.Event()
        self.lost = False
        self._thread = threading.Thread(target=self._beat, name="advlab-heartbeat", daemon=True)

    def _beat(self) -> None:
        try:
            conn = sqlite3.connect(self.path, timeout=30.0)
        except sqlite3.Error as e:  # pragma: no cover - the store was just opened
            log.warning("heartbeat cannot open %s: %s", self.path, e)
            return
        try:
            while not self._stop.wait(HEARTBEAT_SECONDS):
                try:
                    with conn:
                        cur = conn.execute(
                            "UPDATE runs SET heartbeat = ? WHERE id = ? AND owner = ?",
                            (time.time(), self.run_id, self.owner),
                        )
                except sqlite3.Error as e:
                    log.warning("heartbeat of run %s failed: %s", self.run_id, e)
                    continue
                if cur.rowcount == 0:  # another process took the run over
                    self.lost = True
                    log.error(
                        "lost the lease of run %s to another process (this one stalled for "
                        "over %.0f s); its next write will stop it", self.run_id, STALE_SECONDS,
                    )  # fmt: skip
                    return
        finally:
            conn.close()

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
