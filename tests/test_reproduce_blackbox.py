"""The black-box catalog entries (autozoom, substitute, kappa-transfer): their parameters resolve
as the bench scripts' knobs did, and the substitute attack runs for real with tiny budgets."""

from __future__ import annotations

from pathlib import Path

import pytest

from advlab.registry import REPRODUCTIONS
from advlab.reproduce import run_reproduction


def test_the_bench_budgets_are_the_full_runs() -> None:
    az = REPRODUCTIONS.get("autozoom").resolve(quick=False)
    assert (az["n"], az["zoo_steps"], az["zoo_bs"], az["autozoom_steps"]) == (100, 1000, 9, 2000)
    assert (az["codec_epochs"], az["codec_train"], az["epochs"], az["tf32"]) == (
        10,
        60000,
        12,
        False,
    )
    sub = REPRODUCTIONS.get("substitute").resolve(quick=False, overrides={"arch": "mlp"})
    assert (sub["seeds"], sub["rounds"], sub["lam"], sub["tau"], sub["eps"]) == (
        150,
        6,
        0.1,
        3,
        0.3,
    )
    assert sub["arch"] == "mlp" and sub["n"] == 1000
    kt = REPRODUCTIONS.get("kappa-transfer")
    assert kt.resolve(quick=False)["kappas"] == [0, 5, 10, 20, 30, 40]
    assert kt.resolve(quick=True, overrides={"kappas": "0,15"})["kappas"] == [0.0, 15.0]


def test_substitute_quick_transfers_better_than_noise(tmp_path: Path) -> None:
    tiny = {"epochs": 2, "arch": "mlp", "rounds": 2, "sub_epochs": 3, "n": 200}
    res = run_reproduction("substitute", quick=True, out=tmp_path, overrides=tiny)
    r = res.payload["data"]
    assert r["oracle_queries"] == 150 * 2**2 and len(r["history"]) == 3
    assert r["agreement"] > 0.5, r
    # labels only, yet its FGSM examples fool the oracle far more often than noise of that size
    assert r["transfer"] > r["random_noise"] + 0.15, r
    assert r["white_box"] >= r["transfer"] - 0.05, r
    figs = {f["label"]: f for f in res.payload["figures"]}
    assert figs["FGSM ε 0.3 transfer success"]["measured"] == pytest.approx(r["transfer"])
    assert figs["oracle queries"]["measured"] == 600
