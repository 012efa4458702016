"""The run store: schema, migrations, runs, records, examples, summaries and leases."""

from __future__ import annotations

import math
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from advlab.errors import CheckpointError, ConfigError, UnknownNameError
from advlab.results import Cell, Example, SampleRecord, Summary
from advlab.serialize import canonical_json, from_plain_float, plain, pretty_json
from advlab.store import SCHEMA_VERSION, RunStore
from advlab.store import lease as lease_mod
from advlab.store.lease import Heartbeat, claim, is_alive

V1_DUMP = Path(__file__).parent / "data" / "store_v1.sql"


@pytest.fixture
def store(tmp_path: Path) -> RunStore:
    s = RunStore(tmp_path / "runs.sqlite")
    yield s  # type: ignore[misc]
    s.close()


def rec(i: int, **kw: object) -> SampleRecord:
    base = {"index": i, "label": i % 3, "clean_pred": i % 3, "adv_pred": (i + 1) % 3,
            "success": True, "norm": 0.1 * i, "queries": 10 + i}  # fmt: skip
    return SampleRecord(**{**base, **kw})  # type: ignore[arg-type]


def columns(path: Path) -> dict[str, list[tuple[str, str]]]:
    c = sqlite3.connect(path)
    try:
        tables = [r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        return {
            t: sorted((r[1], r[2]) for r in c.execute(f"PRAGMA table_info({t})")) for t in tables
        }
    finally:
        c.close()


def test_file_is_created_in_wal_mode_with_schema_version(tmp_path: Path) -> None:
    with RunStore(tmp_path / "a" / "runs.sqlite") as s:
        assert s.journal_mode == "wal"
        assert s.schema_version == SCHEMA_VERSION == 3
    with RunStore(tmp_path / "a" / "runs.sqlite") as s:  # reopening keeps it
        assert s.schema_version == SCHEMA_VERSION


def test_default_path_follows_advlab_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ADVLAB_HOME", str(tmp_path / "h"))
    with RunStore() as s:
        assert s.path == tmp_path / "h" / "runs.sqlite"


def test_a_version_1_file_is_migrated_in_place(tmp_path: Path) -> None:
    old = tmp_path / "old.sqlite"
    c = sqlite3.connect(old)
    c.executescript(V1_DUMP.read_text())  # a store written by advlab 0.1.0's schema
    c.close()
    with RunStore(old) as s:
        assert s.schema_version == 3
        run = s.get_run("20261130-120000-abcdef")
        assert run.status == "complete" and run.kind == "audit"
        assert run.provenance["git_revision"] == "456c155"  # the v1 "environment" column
        assert run.error is None and run.owner is None
        eid = s.find_cell(run.id, "pgd", "linf", 0.1)
        assert eid is not None
        recs = s.records(eid)
        assert [r.index for r in recs] == list(range(6))
        assert recs[0] == SampleRecord(0, 0, 0, 1, True, 0.1, 41)  # new fields take defaults
        (pgd,) = [x for x in s.summaries(run.id) if x.attack == "pgd"]
        assert pgd.robust == 3 and pgd.queries == 205 and pgd.robust_accuracy == 0.5
        assert s.get_run("20261130-120100-123456").status == "interrupted"
        s.add_examples(
            eid, [Example(0, "pgd", "linf", 0.1, torch.zeros(2), torch.ones(2), 0, 0, 1)]
        )
        assert len(s.examples(eid)) == 1
    fresh = tmp_path / "fresh.sqlite"
    RunStore(fresh).close()
    assert columns(old) == columns(fresh)  # the migration yields exactly the current layout


def test_a_failed_migration_leaves_the_file_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from advlab.store import sqlite as store_sqlite

    old = tmp_path / "old.sqlite"
    c = sqlite3.connect(old)
    c.executescript(V1_DUMP.read_text())
    c.close()

    def broken(conn: sqlite3.Connection) -> None:
        conn.execute("ALTER TABLE runs ADD COLUMN half_done TEXT")
        raise sqlite3.OperationalError("disk on fire")

    monkeypatch.setitem(store_sqlite.MIGRATIONS, 1, broken)
    with pytest.raises(CheckpointError, match="disk on fire"):
        RunStore(old)
    assert ("half_done", "TEXT") not in columns(old)["runs"]
    assert sqlite3.connect(old).execute("SELECT value FROM meta").fetchone()[0] == "1"


def test_run_roundtrip(store: RunStore) -> None:
    rid = store.create_run("evaluate", {"eps": [0.1, math.inf]}, {"seed": 3})
    run = store.get_run(rid)
    assert run.status == "running" and run.finished is None
    assert run.config == {"eps": [0.1, "inf"]} and run.provenance == {"seed": 3}
    store.finish_run(rid, "failed", error="ValueError: boom")
    run = store.get_run(rid)
    assert run.status == "failed" and run.error == "ValueError: boom" and run.finished
    store.set_status(rid, "running")
    assert store.get_run(rid).error is None


def test_records_roundtrip_and_replace(store: RunStore) -> None:
    rid = store.create_run("evaluate", {})
    eid = store.cell_id(rid, Cell("pgd", "linf", 0.1, {"steps": 3}))
    assert store.cell_id(rid, Cell("pgd", "linf", 0.1, {"steps": 3})) == eid
    recs = [
        rec(i, target=2, extras={"features_changed": 4.0}, certified=0.05, shard=1)
        for i in range(4)
    ]
    assert store.add_records(eid, recs, wall_time=1.5) == 4
    store.add_records(eid, [rec(2, success=False, norm=math.inf)], wall_time=0.5)
    got = store.records(eid)
    assert got[:2] == recs[:2] and got[3] == recs[3]
    assert got[2] == rec(2, success=False, norm=math.inf)
    assert store.count_records(eid) == 4 and store.wall_time(eid) == 2.0
    with pytest.raises(ConfigError, match="other parameters"):
        store.cell_id(rid, Cell("pgd", "linf", 0.1, {"steps": 4}))


def test_examples_roundtrip(store: RunStore) -> None:
    rid = store.create_run("evaluate", {})
    eid = store.cell_id(rid, Cell("fgsm", "linf", 0.1))
    x = torch.rand(1, 3, 4)
    ex = Example(7, "fgsm", "linf", 0.1, x, x.clamp(0.2, 0.8), 1, 1, 4)
    store.add_examples(eid, [ex])
    (got,) = store.examples(eid)
    assert torch.equal(got.x, x) and torch.equal(got.x_adv, ex.x_adv)
    assert (got.index, got.label, got.clean_pred, got.adv_pred, got.attack) == (7, 1, 1, 4, "fgsm")


def test_summaries_roundtrip_keep_nan(store: RunStore) -> None:
    rid = store.create_run("evaluate", {})
    s = Summary("worst-case", "l2", 0.5, {"attacks": ["a"]}, 10, 3, 0.3, 0.1, 0.6, math.nan,
                math.nan, math.nan, 12, 0.25)  # fmt: skip
    store.write_summary(rid, s)
    (got,) = store.summaries(rid)
    assert got.to_dict().keys() == s.to_dict().keys()
    for k, v in s.to_dict().items():
        w = got.to_dict()[k]
        assert (
            (math.isnan(v) and math.isnan(w)) if isinstance(v, float) and math.isnan(v) else v == w
        )


def test_runs_are_listed_newest_first_and_filtered(store: RunStore) -> None:
    a = store.create_run("audit", {"a": 1})
    b = store.create_run("train", {"b": 1})
    store.finish_run(a, "complete")
    assert [r.id for r in store.list_runs()] == [b, a]
    assert [r.id for r in store.list_runs(kind="audit")] == [a]
    assert [r.id for r in store.list_runs(status="running")] == [b]


@pytest.mark.parametrize(
    "call",
    [
        lambda s: s.get_run("nope"),
        lambda s: s.finish_run("nope"),
        lambda s: s.set_status("nope", "running"),
        lambda s: s.cell_id("nope", Cell("a", "linf", 0.1)),
        lambda s: s.summaries("nope"),
    ],
)
def test_unknown_run_id_is_a_clear_error(store: RunStore, call) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(UnknownNameError, match="advlab runs list"):
        call(store)


def test_bad_status_is_a_config_error(store: RunStore) -> None:
    rid = store.create_run("evaluate", {})
    with pytest.raises(ConfigError, match="status"):
        store.finish_run(rid, "exploded")
    with pytest.raises(ConfigError, match="end status"):
        store.finish_run(rid, "running")
    with pytest.raises(ConfigError, match="already exists"):
        store.create_run("evaluate", {}, run_id=rid)


def test_corrupt_file_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "runs.sqlite"
    bad.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(CheckpointError, match="not a readable advlab database"):
        RunStore(bad)
    other = tmp_path / "other.sqlite"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.commit()
    with pytest.raises(CheckpointError, match="not a readable advlab database"):
        RunStore(other)


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "runs.sqlite"
    RunStore(path).close()
    c = sqlite3.connect(path)
    c.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    c.commit()
    c.close()
    with pytest.raises(CheckpointError, match="newer"):
        RunStore(path)


# -- the JSON normalizer ----------------------------------------------------------------------------


def test_one_json_rule_for_non_finite_numbers() -> None:
    obj = {"b": [1.0, math.inf, -math.inf, math.nan], "a": (torch.tensor([1, 2]), Path("p"))}
    assert plain(obj) == {"b": [1.0, "inf", "-inf", None], "a": [[1, 2], "p"]}
    assert canonical_json({"y": 1, "x": 2}) == canonical_json({"x": 2, "y": 1}) == '{"x":2,"y":1}'
    assert [from_plain_float(v) for v in ("inf", "-inf", 2.5)] == [math.inf, -math.inf, 2.5]
    assert math.isnan(from_plain_float(None))
    with pytest.raises(ConfigError, match="JSON"):
        canonical_json({"f": object()})
    assert "object" in pretty_json({"f": object()})  # display-only files never fail


# -- leases ----------------------------------------------------------------------------------------


def test_claim_creates_resumes_and_waits(store: RunStore, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = {"model": "m", "eps": [0.1]}
    first = claim(store, "audit", cfg, {"p": 1})
    assert first.action == "new"
    run = store.get_run(first.run_id)
    assert run.owner == lease_mod.owner_id() and is_alive(run)
    assert claim(store, "audit", cfg, {}).action == "wait"  # our own live lease counts too
    assert claim(store, "audit", {"other": 1}, {}).action == "new"  # another config is unrelated
    # the owner stops beating: after the stale time the run is abandoned and resumed
    assert not is_alive(run, now=time.time() + lease_mod.STALE_SECONDS + 1)
    store.finish_run(first.run_id, "interrupted")
    again = claim(store, "audit", cfg, {})
    assert (again.action, again.run_id) == ("resume", first.run_id)
    store.finish_run(first.run_id, "complete")
    assert claim(store, "audit", cfg, {}).action == "new"  # complete runs are never resumed


def test_a_run_whose_owner_process_is_gone_is_abandoned(store: RunStore) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    rid = store.create_run(
        "audit", {"x": 1}, owner=f"{os.uname().nodename}:{dead.stdout.strip()}:t"
    )
    run = store.get_run(rid)
    assert run.heartbeat is not None and time.time() - run.heartbeat < 5  # fresh, yet...
    assert not is_alive(run)  # ...its process is gone
    assert claim(store, "audit", {"x": 1}, {}).action == "resume"


def test_heartbeat_keeps_the_lease_fresh(store: RunStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lease_mod, "HEARTBEAT_SECONDS", 0.05)
    got = claim(store, "audit", {"h": 1}, {})
    before = store.get_run(got.run_id).heartbeat
    assert before is not None
    with Heartbeat(store.path, got.run_id):
        time.sleep(0.4)
    after = store.get_run(got.run_id).heartbeat
    assert after is not None and after > before


def test_a_lost_lease_stops_the_old_owner(store: RunStore, monkeypatch: pytest.MonkeyPatch) -> None:
    from advlab.errors import LeaseLost
    from advlab.store import StoreSink

    monkeypatch.setattr(lease_mod, "HEARTBEAT_SECONDS", 0.05)
    got = claim(store, "audit", {"l": 1}, {})
    sink = StoreSink(store, got.run_id, owner=lease_mod.owner_id())
    cell = Cell("pgd", "linf", 0.1)
    sink.write(cell, [rec(0)])
    with Heartbeat(store.path, got.run_id) as beat:
        # another process took the run over (this one looked dead to it)
        store._conn.execute("UPDATE runs SET owner = 'elsewhere:1:x' WHERE id = ?", (got.run_id,))
        store._conn.commit()
        time.sleep(0.4)
    assert beat.lost
    with pytest.raises(LeaseLost, match="owned by another process"):
        sink.write(cell, [rec(1)])  # the old owner's next batch stops it
    assert set(sink.stored(cell)) == {0}
    # and the old owner cannot mark the new owner's run finished
    assert not store.finish_run(got.run_id, "failed", owner=lease_mod.owner_id())
    assert store.get_run(got.run_id).status == "running"


def test_a_claim_that_waited_reuses_the_run_that_completed_meanwhile(store: RunStore) -> None:
    cfg = {"w": 1}
    first = claim(store, "audit", cfg, {})
    assert claim(store, "audit", cfg, {}).action == "wait"
    store.finish_run(first.run_id, "complete")  # the owner finishes between two looks
    again = claim(store, "audit", cfg, {}, waiting_for=first.run_id)
    assert (again.action, again.run_id) == ("reuse", first.run_id)


def test_a_version_2_file_is_migrated_in_place(tmp_path: Path) -> None:
    old = tmp_path / "v2.sqlite"
    c = sqlite3.connect(old)
    c.executescript((Path(__file__).parent / "data" / "store_v2.sql").read_text())
    c.close()
    with RunStore(old) as s:
        assert s.schema_version == 3
        eid = s.find_cell("20261130-140000-aaaaaa", "pgd", "linf", 0.1)
        assert eid is not None
        recs = s.records(eid)
        assert [r.index for r in recs] == [0, 1, 2] and all(r.stopped is None for r in recs)
        assert recs[0].extras == {"x": 1.0} and recs[0].shard == 0
        s.add_records(eid, [rec(7, stopped="per-sample query budget of 5 reached")])
        assert s.records(eid)[-1].stopped is not None
        (summary,) = s.summaries("20261130-140000-aaaaaa")
        assert summary.stopped == 0 and summary.queries == 12
    fresh = tmp_path / "fresh.sqlite"
    RunStore(fresh).close()
    assert columns(old) == columns(fresh)


# -- two writers -------------------------------------------------------------------------------------

_WRITER = r"""
import sys, time
from pathlib import Path
from advlab.results import Cell, SampleRecord
from advlab.store import RunStore

path, k, shared, go = sys.argv[1], int(sys.argv[2]), sys.argv[3], Path(sys.argv[4])
with RunStore(path) as store:
    own = store.create_run("evaluate", {"writer": k}, run_id=f"own-{k}")
    (go.parent / f"ready-{k}").write_text("ready")
    while not go.exists():  # both processes start writing at once
        time.sleep(0.01)
    for b in range(300):
        recs = [SampleRecord(i, i % 10, i % 10, 0, True, 0.1, 3) for i in range(5 * b, 5 * b + 5)]
        mine = [r for r in recs if r.index % 2 == k]
        store.add_records(store.cell_id(own, Cell("pgd", "linf", 0.1, {"steps": 2})), recs,
                          wall_time=1.0)
        store.add_records(store.cell_id(shared, Cell(f"attack{k}", "linf", 0.1)), recs,
                          wall_time=1.0)
        store.add_records(store.cell_id(shared, Cell("fgsm", "linf", 0.1)), mine, wall_time=1.0)
print("done")
"""


def test_two_processes_writing_one_store_lose_nothing(tmp_path: Path) -> None:
    """Two real processes write concurrently: each its own run, and into one shared run both
    a cell each and one cell together (disjoint samples, as shards do). Every record is there
    exactly once, and the shared cell's wall time adds up (no lost update)."""
    path = tmp_path / "runs.sqlite"
    go = tmp_path / "go"
    with RunStore(path) as store:
        shared = store.create_run("evaluate", {"shared": True})
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(path), str(k), shared, str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for k in (0, 1)
    ]
    t0 = time.time()  # both are ready (imports done, store open) before either writes
    while not all((tmp_path / f"ready-{k}").exists() for k in (0, 1)):
        assert time.time() - t0 < 120 and all(p.poll() is None for p in procs)
        time.sleep(0.05)
    go.write_text("go")
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [e[-2000:] for _, e in outs]
    everything = list(range(1500))
    with RunStore(path) as store:
        for k in (0, 1):
            eid = store.find_cell(f"own-{k}", "pgd", "linf", 0.1)
            assert eid is not None and [r.index for r in store.records(eid)] == everything
            eid = store.find_cell(shared, f"attack{k}", "linf", 0.1)
            assert eid is not None and [r.index for r in store.records(eid)] == everything
            assert store.wall_time(eid) == 300.0
        eid = store.find_cell(shared, "fgsm", "linf", 0.1)
        assert eid is not None and [r.index for r in store.records(eid)] == everything
        assert store.wall_time(eid) == 600.0  # 300 batches from each writer, none lost
        n = store._conn.execute("SELECT COUNT(*) FROM samples").fetchone()[0]
        assert n == 5 * 1500  # two own cells, two cells of the shared run, one cell together
        assert {r.id for r in store.list_runs()} == {shared, "own-0", "own-1"}
