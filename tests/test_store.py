"""The SQLite run store: round trips, WAL mode, resume bookkeeping and clear errors."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from advlab.errors import AdvlabError, CheckpointError, ConfigError, UnknownNameError
from advlab.store import SCHEMA_VERSION, RunStore, canonical_json, environment_info, new_run_id


def _row(i: int, success: int = 1) -> dict[str, float | int]:
    return {
        "idx": i, "label": i % 10, "clean_pred": i % 10, "adv_pred": (i + success) % 10,
        "success": success, "norm": 0.1 * i, "queries": 3,
    }  # fmt: skip


@pytest.fixture
def store(tmp_path: Path) -> Iterator[RunStore]:
    s = RunStore(tmp_path / "runs.sqlite")
    yield s
    s.close()


def test_file_is_created_in_wal_mode_with_schema_version(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "runs.sqlite"
    with RunStore(path) as s:
        assert s.journal_mode == "wal"
        assert s.schema_version == SCHEMA_VERSION
    # WAL is a property of the file: an independent connection sees it too.
    con = sqlite3.connect(path)
    try:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        version = con.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0]
        assert int(version) == SCHEMA_VERSION
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert {"meta", "runs", "evaluations", "samples"} <= tables
    finally:
        con.close()


def test_default_path_follows_advlab_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ADVLAB_HOME", str(tmp_path / "home"))
    with RunStore() as s:
        assert s.path == tmp_path / "home" / "runs.sqlite"
    assert s.path.exists()


def test_run_roundtrip(tmp_path: Path) -> None:
    path = tmp_path / "runs.sqlite"
    config = {"model": "cnn", "eps": [0.1, 0.3], "attacks": [{"name": "pgd", "params": {}}]}
    env = environment_info(seed=7)
    with RunStore(path) as s:
        rid = s.create_run("evaluate", config, env)
        ev = s.ensure_evaluation(rid, "pgd", "linf", 0.1, {"steps": 10})
        assert s.ensure_evaluation(rid, "pgd", "linf", 0.1, {"steps": 10}) == ev  # idempotent
        assert s.get_evaluation_id(rid, "pgd", "linf", 0.1) == ev
        assert s.get_evaluation_id(rid, "pgd", "linf", 0.3) is None
        assert s.add_samples(ev, [_row(i) for i in range(5)], wall_time=1.5) == 5
        s.add_samples(ev, [tuple(_row(5).values())], wall_time=0.5)  # sequences work too
        s.update_evaluation_summary(ev, n=6, robust_accuracy=0.5, ci_low=0.2, ci_high=0.8,
                                    success_rate=float("nan"), queries=18)  # fmt: skip
        s.finish_run(rid, "complete", {"clean_accuracy": 0.9})
    with RunStore(path) as s:  # persisted across connections
        run = s.get_run(rid)
        assert run["kind"] == "evaluate" and run["status"] == "complete"
        assert run["config"] == config
        assert run["environment"]["seed"] == 7
        assert run["summary"] == {"clean_accuracy": 0.9}
        assert run["finished"] is not None
        (e,) = run["evaluations"]
        assert (e["attack"], e["norm"], e["eps"], e["params"]) == (
            "pgd",
            "linf",
            0.1,
            {"steps": 10},
        )
        assert e["n"] == 6 and e["robust_accuracy"] == 0.5 and e["queries"] == 18
        assert e["success_rate"] is None  # NaN is stored as NULL
        assert e["wall_time"] == pytest.approx(2.0)
        rows = s.samples(ev)
        assert [r["idx"] for r in rows] == list(range(6))
        assert rows[3] == _row(3)
        assert s.done_indices(ev) == set(range(6))


def test_add_samples_replaces_rows_with_the_same_index(store: RunStore) -> None:
    rid = store.create_run("evaluate", {})
    ev = store.ensure_evaluation(rid, "fgsm", "l2", 0.5, {})
    store.add_samples(ev, [_row(0, success=1), _row(1, success=1)])
    store.add_samples(ev, [_row(1, success=0)])
    assert store.count_samples(ev) == 2
    assert store.samples(ev)[1]["success"] == 0


def test_runs_are_listed_newest_first_and_filtered(store: RunStore) -> None:
    ids = [store.create_run(kind, {"i": i}) for i, kind in enumerate(["train", "audit", "audit"])]
    store.finish_run(ids[1], "failed")
    listed = [r["id"] for r in store.list_runs()]
    assert listed == ids[::-1]
    assert [r["id"] for r in store.list_runs(limit=1)] == [ids[-1]]
    assert {r["id"] for r in store.list_runs(kind="audit")} == set(ids[1:])
    assert [r["id"] for r in store.list_runs(status="failed")] == [ids[1]]


def test_run_ids_are_short_and_sortable() -> None:
    rid = new_run_id()
    assert re.fullmatch(r"\d{8}-\d{6}-[0-9a-f]{6}", rid)
    assert len({new_run_id() for _ in range(50)}) == 50


def test_find_resumable_matches_identical_unfinished_configs(store: RunStore) -> None:
    config = {"eps": [0.1, 0.2], "model": "cnn", "nested": {"b": 1, "a": 2}}
    assert store.find_resumable("audit", config) is None
    first = store.create_run("audit", config)
    store.finish_run(first, "interrupted")
    # key order does not matter, values do
    reordered = {"nested": {"a": 2, "b": 1}, "model": "cnn", "eps": [0.1, 0.2]}
    assert store.find_resumable("audit", reordered) == first
    assert store.find_resumable("audit", {**config, "model": "other"}) is None
    assert store.find_resumable("train", config) is None
    second = store.create_run("audit", config)
    assert store.find_resumable("audit", config) == second  # the latest
    store.finish_run(second, "complete")
    store.finish_run(first, "complete")
    assert store.find_resumable("audit", config) is None


def test_set_status_running_reopens_a_run(store: RunStore) -> None:
    rid = store.create_run("audit", {})
    store.finish_run(rid, "interrupted")
    store.set_status(rid, "running")
    run = store.get_run(rid)
    assert run["status"] == "running" and run["finished"] is None


@pytest.mark.parametrize(
    "call",
    [
        lambda s: s.get_run("20990101-000000-abcdef"),
        lambda s: s.finish_run("20990101-000000-abcdef", "complete"),
        lambda s: s.ensure_evaluation("20990101-000000-abcdef", "pgd", "linf", 0.1, {}),
        lambda s: s.evaluations("20990101-000000-abcdef"),
        lambda s: s.set_status("20990101-000000-abcdef", "failed"),
    ],
)
def test_unknown_run_id_is_a_clear_error(store: RunStore, call) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(UnknownNameError) as info:
        call(store)
    msg = str(info.value)
    assert "20990101-000000-abcdef" in msg and str(store.path) in msg
    assert "advlab runs list" in msg
    assert isinstance(info.value, AdvlabError)


def test_bad_status_and_conflicting_params_are_config_errors(store: RunStore) -> None:
    rid = store.create_run("evaluate", {})
    with pytest.raises(ConfigError, match="status"):
        store.finish_run(rid, "done")
    store.ensure_evaluation(rid, "pgd", "linf", 0.1, {"steps": 10})
    with pytest.raises(ConfigError, match="new run"):
        store.ensure_evaluation(rid, "pgd", "linf", 0.1, {"steps": 20})
    with pytest.raises(ConfigError, match="already exists"):
        store.create_run("evaluate", {}, run_id=rid)
    with pytest.raises(ConfigError, match="JSON"):
        store.create_run("evaluate", {"x": object()})


def test_corrupt_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "runs.sqlite"
    path.write_bytes(b"this is not a database, just some bytes " * 200)
    with pytest.raises(CheckpointError) as info:
        RunStore(path)
    assert str(path) in str(info.value)
    assert "move the file aside" in str(info.value)


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "runs.sqlite"
    RunStore(path).close()
    con = sqlite3.connect(path)
    with con:
        con.execute(
            "UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),)
        )
    con.close()
    with pytest.raises(CheckpointError, match="newer"):
        RunStore(path)


def test_canonical_json_is_order_independent_and_keeps_inf() -> None:
    assert canonical_json({"b": 1, "a": (1, 2)}) == canonical_json({"a": [1, 2], "b": 1})
    assert canonical_json({"eps": float("inf")}) == '{"eps":"inf"}'


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(batches=st.lists(st.sets(st.integers(0, 200), max_size=30), max_size=6))
def test_done_indices_is_the_union_of_what_was_written(
    store: RunStore, batches: list[set[int]]
) -> None:
    rid = store.create_run("evaluate", {})
    ev = store.ensure_evaluation(rid, "fgsm", "linf", 0.1, {})
    for b in batches:
        store.add_samples(ev, [_row(i) for i in sorted(b)])
    expected = set().union(*batches) if batches else set()
    assert store.done_indices(ev) == expected
    assert store.count_samples(ev) == len(expected)
