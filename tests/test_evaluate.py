"""The evaluation engine and its statistics."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor, nn

from advlab import ThreatModel
from advlab.errors import (
    CheckpointError,
    ConfigError,
    InputError,
    ModelOutputError,
    UnknownNameError,
)
from advlab.evaluate import (
    CLEAN,
    WORST_CASE,
    AttackConfig,
    EvalConfig,
    Evaluation,
    JsonlSink,
    MemorySink,
    ResultSink,
    aggregate,
    evaluate,
    make_plan,
    wilson_interval,
)
from advlab.store import RunStore, StoreSink
from advlab.threat import within

from .conftest import RowwiseMLP, Toy, make_cnn

# -- Wilson interval -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("k", "n", "low", "high"),
    [
        (0, 10, 0.0, 0.27753),  # z^2 / (n + z^2)
        (5, 10, 0.23659, 0.76341),
        (10, 10, 0.72247, 1.0),
        (1, 1, 0.20654, 1.0),
        (81, 263, 0.2553, 0.3662),  # Newcombe 1998, "Two-sided confidence intervals...", Table I
    ],
)
def test_wilson_known_values(k: int, n: int, low: float, high: float) -> None:
    lo, hi = wilson_interval(k, n)
    assert lo == pytest.approx(low, abs=1e-4)
    assert hi == pytest.approx(high, abs=1e-4)


def test_wilson_edges_and_errors() -> None:
    assert wilson_interval(0, 0) == (0.0, 1.0)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0
    lo90, hi90 = wilson_interval(5, 10, confidence=0.9)
    lo95, hi95 = wilson_interval(5, 10)
    assert lo95 < lo90 < 0.5 < hi90 < hi95
    for bad in [(11, 10), (-1, 10), (1.5, 10), (True, 10)]:
        with pytest.raises(ConfigError):
            wilson_interval(*bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="confidence"):
        wilson_interval(1, 2, confidence=1.0)


@given(n=st.integers(1, 5000), data=st.data())
def test_wilson_contains_the_estimate_and_is_symmetric(n: int, data: st.DataObject) -> None:
    k = data.draw(st.integers(0, n))
    lo, hi = wilson_interval(k, n)
    assert 0.0 <= lo <= k / n <= hi <= 1.0
    assert lo < hi
    lo2, hi2 = wilson_interval(n - k, n)
    assert lo == pytest.approx(1.0 - hi2, abs=1e-12)
    assert hi == pytest.approx(1.0 - lo2, abs=1e-12)


# -- the engine ----------------------------------------------------------------------------------


class Counting(nn.Module):
    """Counts the samples pushed through it, so a test can tell whether work was redone."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.samples = 0

    def forward(self, x: Tensor) -> Tensor:
        self.samples += x.shape[0]
        return self.inner(x)


N, BATCH = 24, 8
EPS = (0.0, 0.02, 0.05)
GRID = [ThreatModel("linf", e) for e in EPS]
ATTACKS_CFG = ("fgsm", AttackConfig("pgd", {"steps": 3}))


@pytest.fixture(scope="module")
def toy() -> Toy:
    g = torch.Generator().manual_seed(5)
    x = torch.rand(N, 1, 28, 28, generator=g)
    m = make_cnn()
    with torch.no_grad():
        y = m(x).argmax(dim=1)
    y[::5] = (y[::5] + 1) % 10  # some samples misclassified clean
    return Toy("toy", x, y, 10)


def _run(toy: Toy, model: nn.Module | None = None, **kw: Any) -> Evaluation:
    attacks = kw.pop("attacks", ATTACKS_CFG)
    threats = kw.pop("threats", GRID)
    cfg = EvalConfig(**{"batch_size": BATCH, "seed": 3, **kw.pop("config", {})})
    return evaluate(model or make_cnn(), toy, attacks, threats, cfg, **kw)


@pytest.fixture(scope="module")
def stored(toy: Toy, tmp_path_factory: pytest.TempPathFactory) -> tuple[Evaluation, Path]:
    path = tmp_path_factory.mktemp("store") / "runs.sqlite"
    with RunStore(path) as store:
        rid = store.create_run("evaluate", {"test": 1})
        ev = _run(toy, sink=StoreSink(store, rid))
    return ev, path


def _numbers(ev: Evaluation) -> list[dict[str, Any]]:
    return [{k: v for k, v in s.to_dict().items() if k != "wall_time"} for s in ev.summaries]


def _clean_ok(ev: Evaluation) -> Tensor:
    return torch.tensor([r.clean_pred == r.label for r in ev.records[(CLEAN, "linf", 0.0)]])


def test_rows_cover_the_grid_and_obey_the_definitions(stored: tuple[Evaluation, Path]) -> None:
    ev, _ = stored
    assert ev.attack_names == ["fgsm", "pgd", WORST_CASE]
    assert [(s.attack, s.eps) for s in ev.summaries] == [
        (a, e) for e in EPS for a in ("fgsm", "pgd", WORST_CASE)
    ]
    clean_ok = _clean_ok(ev)
    assert ev.clean_accuracy == pytest.approx(float(clean_ok.float().mean()))
    assert 0 < ev.clean_accuracy < 1
    for s in ev.summaries:
        assert s.n == N
        assert s.robust_accuracy <= ev.clean_accuracy
        assert s.ci_low <= s.robust_accuracy <= s.ci_high
        assert (s.ci_low, s.ci_high) == wilson_interval(s.robust, N)
        robust = ev.robust(s.attack, s.eps)
        assert not bool((robust & ~clean_ok).any())  # misclassified clean is never robust
        assert s.robust == int(robust.sum())
    for eps in EPS:
        wc = ev.robust(WORST_CASE, eps)
        assert torch.equal(wc, ev.robust("fgsm", eps) & ev.robust("pgd", eps))
        for a in ("fgsm", "pgd"):
            assert ev.row(WORST_CASE, eps).robust_accuracy <= ev.row(a, eps).robust_accuracy
        assert ev.row(WORST_CASE, eps).queries == sum(ev.row(a, eps).queries for a in ("fgsm", "pgd"))  # fmt: skip
    for a in ev.attack_names:
        zero = ev.row(a, 0.0)
        assert zero.robust_accuracy == ev.clean_accuracy
        assert zero.queries == 0 and zero.success_rate == 0.0
        assert math.isnan(zero.median_norm)
    top = ev.row("pgd", 0.05)
    assert top.robust_accuracy < ev.clean_accuracy  # the attack does something here
    assert 0 < top.median_norm <= 0.05 + 1e-6
    assert top.success_rate == pytest.approx(1 - top.robust / int(clean_ok.sum()))
    json.dumps(ev.to_dict())  # JSON-friendly


def test_worst_case_rows_are_the_results_worst_case(stored: tuple[Evaluation, Path]) -> None:
    """The engine's worst case is :func:`advlab.results.worst_pick`: the first success, or
    the smallest successful perturbation; breaking that rule must break this test."""
    ev, _ = stored
    for eps in EPS[1:]:
        f, p, w = (ev.records[(a, "linf", eps)] for a in ("fgsm", "pgd", WORST_CASE))
        for rf, rp, rw in zip(f, p, w, strict=True):
            if rf.success and (not rp.success or rf.norm <= rp.norm):
                assert (rw.adv_pred, rw.norm) == (rf.adv_pred, rf.norm)
            elif rp.success:
                assert (rw.adv_pred, rw.norm) == (rp.adv_pred, rp.norm)
            else:
                assert not rw.success
            assert rw.queries == rf.queries + rp.queries


def test_store_holds_one_record_per_sample_and_cell(stored: tuple[Evaluation, Path]) -> None:
    ev, path = stored
    with RunStore(path) as store:
        assert ev.run_id is not None
        rows = {(s.attack, s.eps): s for s in store.summaries(ev.run_id)}
        assert set(rows) == {(a, e) for e in EPS for a in ("fgsm", "pgd", WORST_CASE)}
        for (attack, eps), s in rows.items():
            assert s == ev.row(attack, eps) or s.to_dict() == ev.row(attack, eps).to_dict()
        for attack in (CLEAN, "fgsm", "pgd"):
            for eps in (0.0,) if attack == CLEAN else EPS[1:]:
                eid = store.find_cell(ev.run_id, attack, "linf", eps)
                assert eid is not None and store.count_records(eid) == N
        eid = store.find_cell(ev.run_id, "pgd", "linf", 0.05)
        assert eid is not None
        assert store.records(eid) == ev.records[("pgd", "linf", 0.05)]


def test_examples_are_kept_flipped_samples_inside_the_ball(
    stored: tuple[Evaluation, Path], toy: Toy
) -> None:
    ev, _ = stored
    ex = ev.examples
    assert 0 < len(ex) <= 8 and ev.example_eps == 0.05  # the middle positive radius
    idx = [e.index for e in ex]
    assert idx == sorted(idx)
    wc = ev.robust(WORST_CASE, 0.05)
    flipped = [r.index for r in ev.records[(WORST_CASE, "linf", 0.05)]
               if r.success and r.clean_pred == r.label]  # fmt: skip
    assert idx == flipped[:8]  # the first samples the worst case flips, no gaps
    for e in ex:
        assert torch.equal(e.x, toy.x[e.index]) and e.label == int(toy.y[e.index])
        assert e.clean_pred == e.label != e.adv_pred
        assert float((e.x_adv - e.x).abs().amax()) <= 0.05 + 1e-6
        with torch.no_grad():
            assert int(make_cnn()(e.x_adv[None]).argmax()) == e.adv_pred
        assert not bool(wc[e.index])


def test_interrupted_run_resumes_to_the_same_numbers_without_recomputing(
    stored: tuple[Evaluation, Path], toy: Toy, tmp_path: Path
) -> None:
    reference, _ = stored
    batches = N // BATCH
    full = Counting(make_cnn())
    _run(toy, full)

    class Stop(Exception):
        pass

    def stop_in_pgd(event: dict[str, Any]) -> None:
        if event["stage"] == "attack" and event["eps"] == 0.02 and event["attack"] == "pgd":
            raise Stop

    with RunStore(tmp_path / "runs.sqlite") as store:
        rid = store.create_run("evaluate", {"test": True})
        first = Counting(make_cnn())
        with pytest.raises(Stop):
            _run(toy, first, sink=StoreSink(store, rid), progress=stop_in_pgd)
        eid = store.find_cell(rid, "pgd", "linf", 0.02)
        assert eid is not None and store.count_records(eid) == BATCH

        events: list[dict[str, Any]] = []
        second = Counting(make_cnn())
        resumed = _run(toy, second, sink=StoreSink(store, rid), progress=events.append)
    assert _numbers(resumed) == _numbers(reference)
    assert resumed.records == reference.records
    # the examples were kept by the run that computed them, not recomputed
    assert [e.index for e in resumed.examples] == [e.index for e in reference.examples]
    for a, b in zip(resumed.examples, reference.examples, strict=True):
        assert torch.equal(a.x_adv, b.x_adv) and a.attack == b.attack
    # Nothing stored was computed again: the resumed run only repeats the clean pass.
    assert first.samples + second.samples == full.samples + N
    fresh = [(e["attack"], e["eps"]) for e in events if e["stage"] == "attack" and not e["resumed"]]
    skipped = [(e["attack"], e["eps"]) for e in events if e["stage"] == "attack" and e["resumed"]]
    assert skipped.count(("pgd", 0.02)) == 1 and fresh.count(("pgd", 0.02)) == batches - 1
    assert skipped.count(("fgsm", 0.02)) == batches
    assert fresh.count(("pgd", 0.05)) == batches


def test_results_do_not_depend_on_batch_size() -> None:
    """Per-sample records are identical with batches of 7 and of 64 (random starts keyed by
    sample index), on a model whose own arithmetic is batch-invariant."""
    model = RowwiseMLP()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(40, 1, 28, 28, generator=g)
    with torch.no_grad():
        y = model(x).argmax(1)
    y[::7] = (y[::7] + 3) % 10
    data = Toy("rows", x, y, 10)
    attacks = [AttackConfig("pgd", {"steps": 4, "restarts": 2}), "fgsm",
               AttackConfig("deepfool", {"steps": 5})]  # fmt: skip
    grid = [ThreatModel("linf", e) for e in (0.0, 0.03, 0.1)]
    a = evaluate(model, data, attacks, grid, EvalConfig(batch_size=7, seed=4))
    b = evaluate(model, data, attacks, grid, EvalConfig(batch_size=64, seed=4))
    assert a.records == b.records
    assert _numbers(a) == _numbers(b)
    c = evaluate(model, data, attacks, grid, EvalConfig(batch_size=7, seed=5))
    assert c.records[("pgd", "linf", 0.03)] != a.records[("pgd", "linf", 0.03)]  # seed matters


def test_shards_merge_into_the_unsharded_numbers(toy: Toy, tmp_path: Path) -> None:
    model = RowwiseMLP(1)
    attacks = [AttackConfig("pgd", {"steps": 3}), "deepfool"]
    whole = evaluate(model, toy, attacks, GRID, EvalConfig(batch_size=5, seed=2))
    sinks = [JsonlSink(tmp_path / "s0.jsonl"), MemorySink(), MemorySink()]
    for k, sink in enumerate(sinks):
        part = evaluate(model, toy, attacks, GRID, EvalConfig(batch_size=5, seed=2, shard=(k, 3)),
                        sink=sink)  # fmt: skip
        assert part.n == len(range(k, N, 3))
        assert {r.shard for r in part.records[("pgd", "linf", 0.05)]} == {k}
    plan = make_plan(attacks, GRID, EvalConfig(batch_size=5, seed=2), N)
    reread = [JsonlSink(tmp_path / "s0.jsonl"), *sinks[1:]]  # a shard's file read back
    merged = aggregate(plan, reread, dataset="toy", num_classes=10)
    assert _numbers(merged) == _numbers(whole)
    strip = {k: [replace(r, shard=None) for r in v] for k, v in merged.records.items()}
    assert strip == whole.records
    with pytest.raises(CheckpointError, match="missing shards"):
        aggregate(plan, sinks[:2], dataset="toy", num_classes=10)


def test_the_three_sinks_hold_the_same_records(toy: Toy, tmp_path: Path) -> None:
    with RunStore(tmp_path / "runs.sqlite") as store:
        rid = store.create_run("evaluate", {})
        sinks: list[ResultSink] = [
            MemorySink(),
            JsonlSink(tmp_path / "r.jsonl"),
            StoreSink(store, rid),
        ]
        evs = [_run(toy, sink=s) for s in sinks]
        assert all(isinstance(s, ResultSink) for s in sinks)
        for ev in evs[1:]:
            assert ev.records == evs[0].records and _numbers(ev) == _numbers(evs[0])
        # reopened, the JSON-lines file resumes everything
        again = JsonlSink(tmp_path / "r.jsonl")
        counting = Counting(make_cnn())
        ev = _run(toy, counting, sink=again)
        assert counting.samples == N and ev.records == evs[0].records


def test_jsonl_sink_ignores_a_torn_last_line(toy: Toy, tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    _run(toy, sink=JsonlSink(path))
    text = path.read_text()
    path.write_text(text + '{"cell": {"attack": "pgd", "no')  # a crash mid-write
    ev = _run(toy, sink=JsonlSink(path))
    assert ev.row("pgd", 0.05).n == N
    again = _run(toy, sink=JsonlSink(path))  # the torn line was cut, not built upon
    assert again.records == ev.records
    path.write_text("not json\n" + text)
    with pytest.raises(CheckpointError, match="line 1"):
        JsonlSink(path)


def test_minimal_attacks_run_once_and_are_read_at_each_eps(toy: Toy) -> None:
    grid = [ThreatModel("l2", e) for e in (0.0, 0.2, 0.5, 1.0)]
    sink = MemorySink()
    attacks = [AttackConfig("deepfool", {"steps": 10}), "fgsm"]
    ev = evaluate(make_cnn(), toy, attacks, grid, EvalConfig(batch_size=12), sink=sink)
    base = [c for c in make_plan(attacks, grid, EvalConfig(), N).cells if c.attack == "deepfool"]
    assert len(base) == 1 and base[0].eps == math.inf
    records = sorted(sink.stored(base[0]).values(), key=lambda r: r.index)
    accs = [ev.row("deepfool", t.eps, "l2").robust_accuracy for t in grid]
    assert accs == sorted(accs, reverse=True)  # reading one run at growing eps is monotone
    queries = {ev.row("deepfool", t.eps, "l2").queries for t in grid[1:]}
    assert len(queries) == 1 and queries.pop() > 0  # every radius reports the one run's cost
    assert ev.row("deepfool", 0.0, "l2").queries == 0  # eps = 0 needs no attack
    for t in grid:
        norms = torch.tensor([r.norm for r in records], dtype=torch.float64)
        hit = within(norms, "l2", t.eps).tolist()
        expect = [r.clean_pred == r.label and not (r.success and h) for r, h in zip(records, hit, strict=True)]  # fmt: skip
        assert ev.robust("deepfool", t.eps, "l2").tolist() == expect


def test_several_norms_in_one_evaluation(toy: Toy) -> None:
    grid = [ThreatModel("linf", 0.03), ThreatModel("l2", 1.0), ThreatModel("linf", 0.0)]
    ev = evaluate(make_cnn(), toy, ["fgsm", AttackConfig("pgd", {"steps": 2})], grid)
    assert ev.norms == ["linf", "l2"]
    assert [(s.norm, s.eps) for s in ev.summaries if s.attack == WORST_CASE] == [
        ("linf", 0.0),
        ("linf", 0.03),
        ("l2", 1.0),
    ]
    assert ev.row("pgd", 1.0, "l2").n == N


def test_same_seed_same_numbers_and_no_side_effects(
    toy: Toy, capsys: pytest.CaptureFixture[str]
) -> None:
    x0, y0 = toy.x.clone(), toy.y.clone()
    model = make_cnn().train()  # the engine must not switch the mode
    a = _run(toy, model, attacks=[AttackConfig("pgd", {"steps": 2})])
    assert model.training
    b = _run(toy, attacks=[AttackConfig("pgd", {"steps": 2})])
    assert _numbers(a) == _numbers(b)
    assert torch.equal(toy.x, x0) and torch.equal(toy.y, y0)
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""
    assert a.run_id is None


def test_provenance_is_captured_when_the_work_runs(toy: Toy) -> None:
    ev = _run(toy, attacks=["fgsm"])
    p = ev.provenance
    assert {"torch", "python", "advlab", "git_revision", "command", "started", "seed"} <= set(p)
    assert p["seed"] == 3 and p["config"]["batch_size"] == BATCH
    given = _run(toy, attacks=["fgsm"], provenance={"who": "test"})
    assert given.provenance == {"who": "test"}


def test_progress_reports_every_batch(toy: Toy) -> None:
    events: list[dict[str, Any]] = []
    evaluate(make_cnn(), toy, ["fgsm"], ThreatModel("l2", 0.5), EvalConfig(batch_size=10),
             progress=events.append)  # fmt: skip
    assert all({"stage", "attack", "eps", "done", "total"} <= set(e) for e in events)
    clean = [e["done"] for e in events if e["stage"] == "clean"]
    attack = [e["done"] for e in events if e["stage"] == "attack"]
    assert clean == attack == [10, 20, 24]
    assert {e["total"] for e in events} == {N}


@pytest.mark.parametrize(
    ("kw", "error", "match"),
    [
        ({"attacks": ["no-such-attack"]}, UnknownNameError, "no-such-attack"),
        ({"attacks": [AttackConfig("fgsm")] * 2}, ConfigError, "twice"),
        ({"attacks": []}, ConfigError, "at least one"),
        ({"threats": [ThreatModel("linf", 0.1)] * 2}, ConfigError, "twice"),
        ({"threats": []}, ConfigError, "at least one"),
        ({"threats": [ThreatModel("linf", math.inf)]}, ConfigError, "finite"),
        ({"threats": [ThreatModel("l0", 3)]}, ConfigError, "supports norms"),
        ({"threats": [ThreatModel("linf", 0.1), ThreatModel("linf", 0.2, 0, 2)]}, ConfigError, "one input box"),
        ({"config": EvalConfig(batch_size=4).__class__}, ConfigError, "EvalConfig"),
        ({"threats": [ThreatModel("linf", 0.1, 0.0, 0.5)]}, InputError, "outside"),
    ],
)  # fmt: skip
def test_bad_arguments_fail_fast(toy: Toy, kw: dict[str, Any], error: type, match: str) -> None:
    args: dict[str, Any] = {"attacks": ["fgsm"], "threats": ThreatModel("linf", 0.1)} | kw
    with pytest.raises(error, match=match):
        evaluate(make_cnn(), toy, args["attacks"], args["threats"], args.get("config"))


@pytest.mark.parametrize(
    ("kw", "match"),
    [({"batch_size": 0}, "batch_size"), ({"seed": 1.5}, "seed"), ({"keep_examples": -1}, "keep"),
     ({"shard": (3, 3)}, "shard"), ({"shard": "x"}, "shard")],
)  # fmt: skip
def test_eval_config_is_validated(kw: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        EvalConfig(**kw)


def test_attack_config_is_validated_against_the_registry() -> None:
    assert AttackConfig("pgd", {"steps": 5}).params == {"steps": 5}
    assert AttackConfig("pgd", {"steps": 5}).resolved["restarts"] == 1
    with pytest.raises(ConfigError, match="stpes"):
        AttackConfig("pgd", {"stpes": 5})
    with pytest.raises(ConfigError, match="argument of the call"):
        AttackConfig("pgd", {"seed": 3})
    with pytest.raises(UnknownNameError):
        AttackConfig("pgdd")
    with pytest.raises(ConfigError, match="reserved"):
        AttackConfig("worst-case")
    assert AttackConfig.parse({"name": "fgsm", "params": {"loss": "margin"}}) == AttackConfig("fgsm", {"loss": "margin"})  # fmt: skip
    with pytest.raises(ConfigError):
        AttackConfig.parse({"nam": "fgsm"})


def test_a_sink_from_another_model_is_refused(toy: Toy, tmp_path: Path) -> None:
    with RunStore(tmp_path / "runs.sqlite") as store:
        with pytest.raises(UnknownNameError, match="advlab runs list"):
            StoreSink(store, "nope")
        rid = store.create_run("evaluate", {})
        _run(toy, attacks=["fgsm"], sink=StoreSink(store, rid))
        with pytest.raises(ConfigError, match="another model"):
            _run(toy, make_cnn(seed=9), attacks=["fgsm"], sink=StoreSink(store, rid))
        with pytest.raises(ConfigError, match="other parameters"):
            _run(
                toy, attacks=[AttackConfig("fgsm", {"loss": "margin"})], sink=StoreSink(store, rid)
            )


def test_model_with_the_wrong_class_count_is_refused(toy: Toy) -> None:
    with pytest.raises(ModelOutputError, match="classes"):
        _run(toy, make_cnn(classes=12), attacks=["fgsm"])


def test_shards_can_share_one_sink(toy: Toy, tmp_path: Path) -> None:
    model = RowwiseMLP(1)
    attacks = [AttackConfig("pgd", {"steps": 3})]
    whole = evaluate(model, toy, attacks, GRID, EvalConfig(batch_size=5, seed=2))
    with RunStore(tmp_path / "runs.sqlite") as store:
        rid = store.create_run("evaluate", {})
        shared: list[ResultSink] = [MemorySink(), StoreSink(store, rid)]
        for sink in shared:
            for k in range(3):
                evaluate(model, toy, attacks, GRID, EvalConfig(batch_size=5, seed=2, shard=(k, 3)),
                         sink=sink)  # fmt: skip
            plan = make_plan(attacks, GRID, EvalConfig(batch_size=5, seed=2), N)
            merged = aggregate(plan, sink, dataset="toy", num_classes=10)
            assert _numbers(merged) == _numbers(whole)


def test_a_resume_with_another_batch_size_computes_only_what_is_missing(toy: Toy) -> None:
    sink = MemorySink()
    attacks = [AttackConfig("pgd", {"steps": 3})]

    class Stop(Exception):
        pass

    def stop(event: dict[str, Any]) -> None:
        if event["stage"] == "attack" and event["batch"] == 2:
            raise Stop

    with pytest.raises(Stop):
        evaluate(RowwiseMLP(2), toy, attacks, GRID, EvalConfig(batch_size=7), sink=sink, progress=stop)  # fmt: skip
    cell = make_plan(attacks, GRID, EvalConfig(), N).cells[0]
    first = dict(sink.stored(cell))
    wall = sink.wall_time(cell)
    assert len(first) == 14
    counting = Counting(RowwiseMLP(2))
    resumed = evaluate(counting, toy, attacks, GRID, EvalConfig(batch_size=10), sink=sink)
    assert all(sink.stored(cell)[i] == r for i, r in first.items())  # stored records kept
    assert sink.wall_time(cell) > wall  # only the new samples' time was added
    reference = evaluate(RowwiseMLP(2), toy, attacks, GRID, EvalConfig(batch_size=24))
    assert resumed.records == reference.records
    pgd_queries = sum(r.queries for r in resumed.records[("pgd", "linf", 0.02)] if r.index >= 14)
    pgd_queries += sum(r.queries for r in resumed.records[("pgd", "linf", 0.05)])
    assert counting.samples == N + pgd_queries  # the clean pass plus the missing samples only


# -- certification -------------------------------------------------------------------------------


def test_certified_radii_are_stored_once_and_copied_into_every_record_of_the_norm(
    toy: Toy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from advlab.evaluate import CERTIFIED

    attacks = [*ATTACKS_CFG, AttackConfig("deepfool", {"steps": 5})]
    sink = JsonlSink(tmp_path / "r.jsonl")
    ev = _run(toy, attacks=attacks, sink=sink, config={"certify": "crown"})
    (cell,) = make_plan(attacks, GRID, EvalConfig(certify="crown"), N).certify
    assert (cell.attack, cell.norm, cell.eps) == (CERTIFIED, "linf", math.inf)
    assert cell.params == {"method": "crown", "steps": 15}
    stored = sink.stored(cell)
    assert sorted(stored) == list(range(N))
    radius = {i: r.certified for i, r in stored.items()}
    ok = _clean_ok(ev).tolist()
    assert all(radius[i] == 0.0 for i in range(N) if not ok[i])
    assert any(radius[i] > 0.02 for i in range(N) if ok[i])  # CROWN certifies some here
    for key, recs in ev.records.items():  # every row of the norm carries the radius
        assert [r.certified for r in recs] == [radius[r.index] for r in recs], key
    for eps in EPS:
        c = ev.certified_row(eps)
        sure = torch.tensor([ok[i] and radius[i] >= eps for i in range(N)])
        assert c.certified == int(sure.sum()) and c.n == N
        assert (c.ci_low, c.ci_high) == wilson_interval(c.certified, N)
        # sound: no sample certified at eps is broken by any attack at eps
        assert not bool((sure & ~ev.robust(WORST_CASE, eps)).any()), eps
    assert ev.certified_row(0.0).certified_accuracy == ev.clean_accuracy
    for b in ev.bounds["linf"]:
        assert b.certified == radius[b.index] and b.sound("linf")
        if b.correct and b.attack_norm is not None:  # the smallest success over all cells
            norms = [r.norm for (_, n, e), recs in ev.records.items()
                     for r in recs if r.index == b.index and r.success and e > 0]  # fmt: skip
            assert b.attack_norm <= min(norms) + 1e-9
    json.dumps(ev.to_dict())
    assert ev.to_dict()["certified"][1]["eps"] == EPS[1]

    # resumed from the file: nothing is certified again, and the numbers are the same
    def refuse(*a: object, **k: object) -> None:
        raise AssertionError("certified again")

    monkeypatch.setattr("advlab.evaluate.engine.certify_records", refuse)
    again = _run(toy, attacks=attacks, sink=JsonlSink(tmp_path / "r.jsonl"),
                 config={"certify": "crown"})  # fmt: skip
    assert again.records == ev.records and again.bounds == ev.bounds
    assert again.certified == ev.certified  # (the stored wall time included)


def test_certified_shards_merge(toy: Toy) -> None:
    model = make_cnn()
    cfg = {"batch_size": 5, "seed": 2, "certify": "ibp"}
    sinks = [MemorySink(), MemorySink()]
    for k, sink in enumerate(sinks):
        evaluate(model, toy, ["fgsm"], GRID, EvalConfig(**cfg, shard=(k, 2)), sink=sink)  # type: ignore[arg-type]
    plan = make_plan(["fgsm"], GRID, EvalConfig(**cfg), N)  # type: ignore[arg-type]
    merged = aggregate(plan, sinks, dataset="toy", num_classes=10)
    radius = {i: r.certified for s in sinks for i, r in s.stored(plan.certify[0]).items()}
    assert [b.certified for b in merged.bounds["linf"]] == [radius[i] for i in range(N)]
    ok = _clean_ok(merged).tolist()
    for eps in EPS:
        want = sum(ok[i] and (radius[i] or 0.0) >= eps for i in range(N))
        assert merged.certified_row(eps).certified == want
    uncertified = MemorySink()  # every cell but the certification
    evaluate(model, toy, ["fgsm"], GRID, EvalConfig(batch_size=5, seed=2), sink=uncertified)
    with pytest.raises(CheckpointError, match="certified linf eps=inf"):
        aggregate(plan, [uncertified], dataset="toy", num_classes=10)


def test_certification_is_refused_at_the_door(toy: Toy) -> None:
    from advlab.oracle import CallableOracle

    with pytest.raises(UnknownNameError, match="unknown certifier 'crwn'"):
        EvalConfig(certify="crwn")
    with pytest.raises(ConfigError, match="certify_steps"):
        EvalConfig(certify="ibp", certify_steps=0)
    with pytest.raises(ConfigError, match="not l0"):
        make_plan(["jsma"], [ThreatModel("l0", 5)], EvalConfig(certify="ibp"), 4)
    model = make_cnn()
    scores = CallableOracle(lambda x: model(x).detach(), returns="scores")
    with pytest.raises(ConfigError, match="hides them"):
        _run(toy, scores, config={"certify": "ibp"})
    gelu = nn.Sequential(nn.Flatten(), nn.Linear(784, 10), nn.GELU())
    sink = MemorySink()
    with pytest.raises(ConfigError, match=r"cannot bound layer 2 \(GELU\)"):
        _run(toy, gelu, sink=sink, config={"certify": "crown"})
    assert sink.cells == {}  # refused before the clean pass
