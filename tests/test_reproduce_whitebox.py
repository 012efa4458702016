"""The white-box catalog entries (C&W Tables IV and VI, defensive distillation): their
parameters, the Table IV case summary and the log-domain gradient amplitude against direct
computations, and a tiny quick run of cw-table4 asserting on the direction of its results."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from advlab.errors import ConfigError
from advlab.registry import REPRODUCTIONS
from advlab.reproduce import run_reproduction
from advlab.reproduce.whitebox import (
    BUDGETS,
    ROW_KEYS,
    ROWS,
    log10_gradient_amplitude,
    summarize_cases,
)

ENTRIES = ("cw-table4", "cw-table6", "distillation")


@pytest.mark.parametrize("name", ENTRIES)
def test_quick_runs_on_fewer_images(name: str) -> None:
    # the parameters every entry declares are checked in test_reproduce.py
    e = REPRODUCTIONS.get(name)
    assert e.resolve(quick=True)["n"] < e.resolve(quick=False)["n"]


def test_cw_table4_parameters() -> None:
    e = REPRODUCTIONS.get("cw-table4")
    full = e.resolve(quick=False)
    # the full run is the bench's: every row, the reduced budget, 100 images, 12 epochs
    assert full["rows"] == list(ROW_KEYS) and full["budget"] == "reduced"
    assert full["n"] == 100 and full["epochs"] == 12
    assert e.resolve(quick=True, overrides={"rows": "l2,linf"})["rows"] == ["l2", "linf"]
    for row in ROWS:
        assert set(row.params) == set(BUDGETS), row.key
        assert not row.search or set(row.search) == set(BUDGETS), row.key


def test_distillation_parameters() -> None:
    e = REPRODUCTIONS.get("distillation")
    full = e.resolve(quick=False)
    assert full["temperatures"] == [1.0, 2.0, 5.0, 10.0, 20.0, 40.0, 100.0]
    assert full["epochs"] == 3 and full["batch_size"] == 128 and full["gamma"] == 0.145
    assert e.resolve(quick=True, overrides={"temperatures": "1,100"})["temperatures"] == [
        1.0,
        100.0,
    ]
    t6 = REPRODUCTIONS.get("cw-table6").resolve(quick=False)
    # cw-table6 attacks the distillation entry's T = 100 student, trained the same way
    for k in ("epochs", "batch_size", "gamma", "seed"):
        assert t6[k] == full[k], k
    assert t6["temperature"] == 100.0


@pytest.mark.parametrize("overrides, match", [
    ({"budget": "huge"}, "budget must be one of"),
    ({"rows": "l2,l3"}, "unknown rows"),
])  # fmt: skip
def test_cw_table4_rejects_bad_settings_before_training(
    overrides: dict[str, str], match: str, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match=match):
        run_reproduction("cw-table4", quick=True, overrides=overrides, out=tmp_path)
    assert not list(tmp_path.glob("*.safetensors"))


def test_summarize_cases_known_answer() -> None:
    inf = math.inf
    dist = torch.tensor([[1.0, 2.0, 3.0], [4.0, inf, 6.0], [inf, inf, inf]])
    s = summarize_cases(dist)
    assert s["best"] == {"mean": 2.5, "success": pytest.approx(2 / 3)}  # (1 + 4) / 2
    assert s["average"]["mean"] == pytest.approx(16 / 5)
    assert s["average"]["success"] == pytest.approx(5 / 9)
    assert s["worst"] == {"mean": 3.0, "success": pytest.approx(1 / 3)}  # only image 0
    untargeted = summarize_cases(torch.tensor([[1.0], [inf]]))
    assert set(untargeted) == {"best"} and untargeted["best"] == {"mean": 1.0, "success": 0.5}
    assert summarize_cases(torch.full((2, 3), inf))["worst"]["mean"] is None


def test_gradient_amplitude_matches_the_direct_jacobian() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.Tanh(), nn.Linear(8, 5))
    x = torch.rand(4, 1, 3, 4)
    double = copy.deepcopy(model).double()
    jac = torch.autograd.functional.jacobian(lambda v: torch.softmax(double(v), dim=1), x.double())
    # (4, 5, 4, 1, 3, 4): only the diagonal sample blocks are nonzero
    direct = torch.stack([jac[i, :, i] for i in range(4)]).abs().mean()
    assert log10_gradient_amplitude(model, x) == pytest.approx(math.log10(direct), abs=1e-9)
    # a saturated model (logits scaled by 1e4) underflows the direct product, not this one
    hot = copy.deepcopy(model)
    with torch.no_grad():
        hot[3].weight.mul_(1e4)
    assert math.isfinite(log10_gradient_amplitude(hot, x))
    assert log10_gradient_amplitude(hot, x) < log10_gradient_amplitude(model, x) - 10


def test_cw_table4_tiny_quick_run(tmp_path: Path) -> None:
    # a 2-epoch model, 5 images, the smoke budget: about 25 s on one core
    res = run_reproduction("cw-table4", quick=True, out=tmp_path, overrides={
        "epochs": 2, "n": 5, "rows": "l2,fgsm,ifgsm", "budget": "smoke"})  # fmt: skip
    rows = res.payload["data"]["rows"]
    l2, fg, it = (rows[k]["summary"] for k in ("l2", "fgsm", "ifgsm"))
    # C&W L2 (c from 10) breaks every pair, and its cases are ordered
    assert l2["worst"]["success"] == 1.0
    assert 0 < l2["best"]["mean"] <= l2["average"]["mean"] <= l2["worst"]["mean"]
    # one FGSM step toward the target fails on more pairs than the iterative IFGSM
    assert fg["average"]["success"] < it["average"]["success"]
    assert all(d is None or 0 < d <= 0.25 + 1e-6 for r in rows["fgsm"]["distances"] for d in r)
    assert len(rows["l2"]["distances"]) == 5 and len(rows["l2"]["distances"][0]) == 9
    figures = {f["label"]: f for f in res.payload["figures"]}
    assert figures["C&W L2 success on every (image, target) pair"]["passed"] is True
    assert figures["C&W L2 best-case mean distance"]["paper"] == 1.36
