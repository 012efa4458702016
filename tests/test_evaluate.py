"""The evaluation engine and its statistics."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor, nn

from advlab.errors import ConfigError, InputError, ModelOutputError, UnknownNameError
from advlab.evaluate import (
    CLEAN,
    WORST_CASE,
    AttackConfig,
    Evaluation,
    batch_seed,
    evaluate,
    wilson_interval,
)
from advlab.registry import ATTACKS
from advlab.store import RunStore
from advlab.threat import ATOL, RTOL

from .conftest import Toy, make_cnn

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
    """Counts forward passes, so a test can tell whether work was redone."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.samples = 0

    def forward(self, x: Tensor) -> Tensor:
        self.samples += x.shape[0]
        return self.inner(x)


N, BATCH = 24, 8
EPS = (0.0, 0.02, 0.05)
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


def _run(toy: Toy, **kw: Any) -> Evaluation:
    kw.setdefault("attacks", ATTACKS_CFG)
    return evaluate(make_cnn(), toy, norm="linf", eps_grid=EPS, batch_size=BATCH, seed=3, **kw)


@pytest.fixture(scope="module")
def stored(toy: Toy, tmp_path_factory: pytest.TempPathFactory) -> tuple[Evaluation, Path]:
    path = tmp_path_factory.mktemp("store") / "runs.sqlite"
    with RunStore(path) as store:
        ev = _run(toy, store=store)
    return ev, path


def _numbers(ev: Evaluation) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k != "wall_time"} for r in ev.rows]


def test_rows_cover_the_grid_and_obey_the_definitions(
    stored: tuple[Evaluation, Path], toy: Toy
) -> None:
    ev, _ = stored
    assert ev.attack_names == ["fgsm", "pgd", WORST_CASE]
    assert [(r["attack"], r["eps"]) for r in ev.rows] == [
        (a, e) for e in EPS for a in ("fgsm", "pgd", WORST_CASE)
    ]
    clean_ok = ev.clean_pred == toy.y
    assert ev.clean_accuracy == pytest.approx(float(clean_ok.float().mean()))
    assert 0 < ev.clean_accuracy < 1
    for r in ev.rows:
        assert r["n"] == N
        assert r["robust_accuracy"] <= ev.clean_accuracy
        assert r["ci_low"] <= r["robust_accuracy"] <= r["ci_high"]
        assert (r["ci_low"], r["ci_high"]) == wilson_interval(r["robust"], N)
        robust = ev.robust[(r["attack"], r["eps"])]
        assert not bool((robust & ~clean_ok).any())  # misclassified clean is never robust
        assert r["robust"] == int(robust.sum())
    for eps in EPS:
        wc = ev.robust[(WORST_CASE, eps)]
        assert torch.equal(wc, ev.robust[("fgsm", eps)] & ev.robust[("pgd", eps)])
        for a in ("fgsm", "pgd"):
            assert ev.row(WORST_CASE, eps)["robust_accuracy"] <= ev.row(a, eps)["robust_accuracy"]
        assert ev.row(WORST_CASE, eps)["queries"] == sum(ev.row(a, eps)["queries"] for a in ("fgsm", "pgd"))  # fmt: skip
    for a in ev.attack_names:
        zero = ev.row(a, 0.0)
        assert zero["robust_accuracy"] == ev.clean_accuracy
        assert zero["queries"] == 0 and zero["success_rate"] == 0.0
        assert math.isnan(zero["median_norm"])
    top = ev.row("pgd", 0.05)
    assert top["robust_accuracy"] < ev.clean_accuracy  # the attack does something here
    assert 0 < top["median_norm"] <= 0.05 + 1e-6
    assert top["success_rate"] == pytest.approx(1 - top["robust"] / int(clean_ok.sum()))
    json.dumps(ev.to_dict())  # JSON-friendly


def test_store_holds_one_row_per_sample_and_evaluation(stored: tuple[Evaluation, Path]) -> None:
    ev, path = stored
    with RunStore(path) as store:
        run = store.get_run(ev.run_id)  # type: ignore[arg-type]
        assert run["status"] == "complete"
        assert run["kind"] == "evaluate" and run["config"] == ev.config
        assert run["summary"]["clean_accuracy"] == ev.clean_accuracy
        evals = run["evaluations"]
        assert {(e["attack"], e["eps"]) for e in evals} == {(CLEAN, 0.0)} | {
            (a, e) for e in EPS for a in ("fgsm", "pgd", WORST_CASE)
        }
        for e in evals:
            assert store.count_samples(e["id"]) == N
            assert e["n"] == N
            if e["attack"] != CLEAN:
                assert e["robust_accuracy"] == ev.row(e["attack"], e["eps"])["robust_accuracy"]
        e = next(e for e in evals if (e["attack"], e["eps"]) == ("pgd", 0.05))
        rows = store.samples(e["id"])
        robust = ev.robust[("pgd", 0.05)].tolist()
        for r in rows:
            assert robust[r["idx"]] == (r["clean_pred"] == r["label"] == r["adv_pred"])


def test_examples_are_flipped_samples_inside_the_ball(
    stored: tuple[Evaluation, Path], toy: Toy
) -> None:
    ev, _ = stored
    ex = ev.examples
    assert ex is not None and 0 < len(ex) <= 8
    assert ex.eps == 0.05  # the middle positive radius
    assert torch.equal(ex.x, toy.x[ex.indices])
    assert torch.equal(ex.label, toy.y[ex.indices])
    assert bool((ex.clean_pred == ex.label).all()) and bool((ex.adv_pred != ex.label).all())
    assert float((ex.x_adv - ex.x).abs().amax()) <= 0.05 + 1e-6
    with torch.no_grad():
        assert torch.equal(make_cnn()(ex.x_adv).argmax(dim=1), ex.adv_pred)
    assert ex.indices.tolist() == sorted(ex.indices.tolist())
    assert not bool(ev.robust[(WORST_CASE, 0.05)][ex.indices].any())


def test_interrupted_run_resumes_to_the_same_numbers(
    stored: tuple[Evaluation, Path], toy: Toy, tmp_path: Path
) -> None:
    reference, _ = stored
    batches = N // BATCH

    # Reference cost: how many samples one uninterrupted run pushes through the model.
    full = Counting(make_cnn())
    evaluate(full, toy, attacks=ATTACKS_CFG, norm="linf", eps_grid=EPS, batch_size=BATCH, seed=3,
             keep_examples=0)  # fmt: skip

    class Stop(Exception):
        pass

    def stop_after_first_attack_batch(event: dict[str, Any]) -> None:
        if event["stage"] == "attack" and event["eps"] == 0.02 and event["attack"] == "pgd":
            raise Stop

    with RunStore(tmp_path / "runs.sqlite") as store:
        rid = store.create_run("evaluate", {"test": True})
        first = Counting(make_cnn())
        with pytest.raises(Stop):
            evaluate(first, toy, attacks=ATTACKS_CFG, norm="linf", eps_grid=EPS, batch_size=BATCH,
                     seed=3, store=store, run_id=rid, progress=stop_after_first_attack_batch,
                     keep_examples=0)  # fmt: skip
        ev_id = store.get_evaluation_id(rid, "pgd", "linf", 0.02)
        assert ev_id is not None and store.done_indices(ev_id) == set(range(BATCH))

        events: list[dict[str, Any]] = []
        second = Counting(make_cnn())
        resumed = evaluate(second, toy, attacks=ATTACKS_CFG, norm="linf", eps_grid=EPS,
                           batch_size=BATCH, seed=3, store=store, run_id=rid,
                           progress=events.append, keep_examples=0)  # fmt: skip
        assert store.get_run(rid)["status"] == "running"  # the caller owns the status

    assert _numbers(resumed) == _numbers(reference)
    for key, robust in reference.robust.items():
        assert torch.equal(resumed.robust[key], robust)
    # Nothing stored was computed again: the resumed run only repeats the clean pass.
    assert first.samples + second.samples == full.samples + N
    fresh = [(e["attack"], e["eps"]) for e in events if e["stage"] == "attack" and not e["resumed"]]
    skipped = [(e["attack"], e["eps"]) for e in events if e["stage"] == "attack" and e["resumed"]]
    assert skipped.count(("pgd", 0.02)) == 1 and fresh.count(("pgd", 0.02)) == batches - 1
    assert all(k in skipped for k in [("fgsm", 0.0), ("pgd", 0.0), ("fgsm", 0.02)])
    assert fresh.count(("pgd", 0.05)) == batches


def test_resumed_run_recovers_the_examples(
    stored: tuple[Evaluation, Path], toy: Toy, tmp_path: Path
) -> None:
    reference, _ = stored
    assert reference.examples is not None

    def stop_at_the_end(event: dict[str, Any]) -> None:
        if event["stage"] == WORST_CASE and event["eps"] == 0.05:
            raise KeyboardInterrupt

    with RunStore(tmp_path / "runs.sqlite") as store:
        rid = store.create_run("evaluate", {})
        with pytest.raises(KeyboardInterrupt):
            _run(toy, store=store, run_id=rid, progress=stop_at_the_end)
        again = _run(toy, store=store, run_id=rid)  # every batch resumed from the store
    assert again.examples is not None
    assert torch.equal(again.examples.indices, reference.examples.indices)
    assert torch.equal(again.examples.x_adv, reference.examples.x_adv)
    assert again.examples.attack == reference.examples.attack


def test_own_run_is_marked_interrupted(toy: Toy, tmp_path: Path) -> None:
    def interrupt(event: dict[str, Any]) -> None:
        if event["stage"] == "attack":
            raise KeyboardInterrupt

    with RunStore(tmp_path / "runs.sqlite") as store:
        with pytest.raises(KeyboardInterrupt):
            _run(toy, store=store, progress=interrupt)
        (run,) = store.list_runs()
        assert run["status"] == "interrupted" and run["kind"] == "evaluate"


def test_same_seed_same_numbers_and_no_side_effects(
    toy: Toy, capsys: pytest.CaptureFixture[str]
) -> None:
    x0, y0 = toy.x.clone(), toy.y.clone()
    model = make_cnn().train()  # the engine must not switch the mode
    a = evaluate(model, toy, attacks=[AttackConfig("pgd", {"steps": 2})], norm="linf",
                 eps_grid=[0.03], batch_size=10, seed=1)  # fmt: skip
    assert model.training
    b = evaluate(make_cnn(), toy, attacks=[AttackConfig("pgd", {"steps": 2})], norm="linf",
                 eps_grid=[0.03], batch_size=10, seed=1)  # fmt: skip
    assert _numbers(a) == _numbers(b)
    assert torch.equal(toy.x, x0) and torch.equal(toy.y, y0)
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""
    assert a.run_id is None


def test_progress_reports_every_batch(toy: Toy) -> None:
    events: list[dict[str, Any]] = []
    evaluate(make_cnn(), toy, attacks=["fgsm"], norm="l2", eps_grid=[0.5], batch_size=10,
             progress=events.append)  # fmt: skip
    assert all({"stage", "attack", "eps", "done", "total"} <= set(e) for e in events)
    clean = [e["done"] for e in events if e["stage"] == "clean"]
    attack = [e["done"] for e in events if e["stage"] == "attack"]
    assert clean == attack == [10, 20, 24]
    assert events[-1]["stage"] == WORST_CASE and events[-1]["total"] == N


def test_batch_seed_is_a_pure_function_of_its_coordinates() -> None:
    assert batch_seed(0, "pgd", 0.1, 3) == batch_seed(0, "pgd", 0.1, 3)
    seeds = {batch_seed(s, a, e, b) for s in (0, 1) for a in ("pgd", "fgsm") for e in (0.1, 0.2) for b in (0, 1)}  # fmt: skip
    assert len(seeds) == 16
    assert all(0 <= s < 2**63 for s in seeds)


def _minimal_l2() -> str | None:
    names = [n for n in ATTACKS.names() if ATTACKS.get(n).minimal and "l2" in ATTACKS.get(n).norms]
    return names[0] if names else None


@pytest.mark.skipif(_minimal_l2() is None, reason="no minimal-perturbation L2 attack registered")
def test_minimal_attacks_run_once_and_threshold_their_norms(toy: Toy, tmp_path: Path) -> None:
    name = _minimal_l2()
    assert name is not None
    grid = [0.0, 0.2, 0.5, 1.0]
    with RunStore(tmp_path / "runs.sqlite") as store:
        ev = evaluate(make_cnn(), toy, attacks=[name, "fgsm"], norm="l2", eps_grid=grid,
                      batch_size=12, store=store)  # fmt: skip
        base_id = store.get_evaluation_id(ev.run_id, name, "l2", math.inf)  # type: ignore[arg-type]
        assert base_id is not None
        base = store.samples(base_id)
    accs = [ev.row(name, e)["robust_accuracy"] for e in grid]
    assert accs == sorted(accs, reverse=True)  # thresholding one run is monotone in eps
    queries = {ev.row(name, e)["queries"] for e in grid[1:]}
    assert len(queries) == 1 and queries.pop() > 0  # every radius reports the one run's cost
    assert ev.row(name, 0.0)["queries"] == 0  # eps = 0 needs no attack
    for e in grid:
        expect = [
            r["clean_pred"] == r["label"]
            and not (r["success"] and r["norm"] <= e + ATOL + RTOL * max(1.0, e))
            for r in base
        ]
        assert ev.robust[(name, e)].tolist() == expect


@pytest.mark.parametrize(
    ("kw", "error", "match"),
    [
        ({"attacks": ["no-such-attack"]}, UnknownNameError, "no-such-attack"),
        ({"attacks": [AttackConfig("fgsm")] * 2}, ConfigError, "twice"),
        ({"attacks": []}, ConfigError, "at least one"),
        ({"eps_grid": [-0.1]}, ConfigError, ">= 0"),
        ({"eps_grid": [0.1, 0.1]}, ConfigError, "repeated"),
        ({"eps_grid": []}, ConfigError, "empty"),
        ({"eps_grid": [math.inf]}, ConfigError, "finite"),
        ({"norm": "l0"}, ConfigError, "supports norms"),
        ({"norm": "l3"}, ConfigError, "unknown norm"),
        ({"batch_size": 0}, ConfigError, "batch_size"),
        ({"run_id": "x"}, ConfigError, "needs a store"),
        ({"upper": 0.5}, InputError, "outside"),
    ],
)
def test_bad_arguments_fail_fast(toy: Toy, kw: dict[str, Any], error: type, match: str) -> None:
    args: dict[str, Any] = {"attacks": ["fgsm"], "norm": "linf", "eps_grid": [0.1]} | kw
    with pytest.raises(error, match=match):
        evaluate(make_cnn(), toy, **args)


def test_attack_config_is_validated_against_the_registry() -> None:
    assert AttackConfig("pgd", {"steps": 5}).params == {"steps": 5}
    with pytest.raises(ConfigError, match="stpes"):
        AttackConfig("pgd", {"stpes": 5})
    with pytest.raises(ConfigError, match="engine"):
        AttackConfig("pgd", {"generator": None})
    with pytest.raises(UnknownNameError):
        AttackConfig("pgdd")
    assert AttackConfig.parse({"name": "fgsm", "params": {"loss": "margin"}}) == AttackConfig("fgsm", {"loss": "margin"})  # fmt: skip
    with pytest.raises(ConfigError):
        AttackConfig.parse({"nam": "fgsm"})


def test_unknown_run_and_wrong_model_are_clear_errors(toy: Toy, tmp_path: Path) -> None:
    with RunStore(tmp_path / "runs.sqlite") as store:
        with pytest.raises(UnknownNameError, match="advlab runs list"):
            evaluate(make_cnn(), toy, attacks=["fgsm"], norm="linf", eps_grid=[0.1],
                     store=store, run_id="nope")  # fmt: skip
        rid = store.create_run("evaluate", {})
        evaluate(make_cnn(), toy, attacks=["fgsm"], norm="linf", eps_grid=[0.1], store=store, run_id=rid)  # fmt: skip
        with pytest.raises(ConfigError, match="another model"):
            evaluate(make_cnn(seed=9), toy, attacks=["fgsm"], norm="linf", eps_grid=[0.1],
                     store=store, run_id=rid)  # fmt: skip


def test_model_with_the_wrong_class_count_is_refused(toy: Toy) -> None:
    with pytest.raises(ModelOutputError, match="classes"):
        evaluate(make_cnn(classes=12), toy, attacks=["fgsm"], norm="linf", eps_grid=[0.1])
