"""The reproduction catalog: every entry's declaration, parameters and targets, the report of a
run (the numbers in the HTML and JSON are the outcome's), the CLI's exit codes and errors, resume
without recomputing, and two entries run for real in their quick mode with tiny budgets,
asserting on the direction of their results."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from advlab.cli.main import cli
from advlab.errors import ConfigError
from advlab.registry import REPRODUCTIONS
from advlab.reproduce import (
    Context,
    Figure,
    Outcome,
    at_least,
    at_most,
    between,
    format_value,
    run_reproduction,
    within,
)
from tests.conftest import one_line_error

#: the experiments issue 11 names, and the ones the bench scripts measured before the catalog
ISSUE_ENTRIES = (
    "cw-table4", "cw-table6", "distillation", "fgsm-regularized", "madry", "madry-capacity",
    "fast-fgsm", "msd", "autozoom", "substitute", "kappa-transfer", "transfer-matrix",
    "ensemble-transfer", "universal", "cnn-cert", "certified-training",
)  # fmt: skip


@pytest.mark.parametrize("name", REPRODUCTIONS.names())
def test_every_entry_is_declared_fully(name: str) -> None:
    e = REPRODUCTIONS.get(name)
    assert e.name == name
    for text in (e.title, e.paper, e.claim, e.budget):
        assert len(text) > 20, (name, text)
    full, quick = e.resolve(quick=False), e.resolve(quick=True)
    assert set(full) == set(quick), "--quick may change values, not add parameters"
    assert quick["data"] == "mnist5k", "--quick runs on the embedded data"
    assert full["data"] == "mnist", "the full run uses full MNIST"
    assert {"n", "seed"} <= set(full) and full["seed"] == quick["seed"] == 0
    assert quick["n"] <= full["n"], "--quick never asks for more images"
    changed = e.resolve(quick=True, overrides={"n": 7, "seed": 3})
    assert (changed["n"], changed["seed"]) == (7, 3)
    with pytest.raises(ConfigError, match="no parameter"):
        e.resolve(quick=True, overrides={"no_such_knob": 1})
    assert 0 < e.minutes <= 30, "--quick is minutes on a CPU"
    assert set(e.quick) <= set(e.params), "a quick override of an unknown parameter"


@pytest.mark.parametrize("name", ISSUE_ENTRIES)
def test_issue_entries_are_registered(name: str) -> None:
    assert name in REPRODUCTIONS


def test_targets() -> None:
    assert at_least(0.5).holds(0.5) and not at_least(0.5).holds(0.49)
    assert at_most(0.2).holds(0.2) and not at_most(0.2).holds(0.21)
    assert between(1, 2).holds(1.5) and not between(1, 2).holds(2.5)
    assert within(1.0, 0.15).holds(1.15) and not within(1.0, 0.15).holds(0.8)
    for t in (at_least(0.0), at_most(1.0), between(0, 1)):
        assert not t.holds(None) and not t.holds(math.nan)
    assert at_least(0.98).describe() == "≥ 98.0%"
    assert at_most(1.15).describe("x") == "≤ 1.15×"
    assert format_value(0.123) == "12.3%" and format_value(38366.0, "queries") == "38,366 queries"
    assert format_value(None) == "–" and format_value("~89%") == "~89%"


def test_outcome_passes_only_when_every_target_holds() -> None:
    ok, bad, info = (Figure("a", 0.9, target=at_least(0.5)), Figure("b", 0.1, target=at_least(0.5)),
                     Figure("c", 0.3))  # fmt: skip
    assert Outcome([ok, info]).passed is True
    assert Outcome([ok, bad, info]).passed is False
    assert Outcome([info]).passed is None


def test_resolve_rejects_unknown_keys_and_wrong_types() -> None:
    e = REPRODUCTIONS.get("madry")
    with pytest.raises(ConfigError, match="no parameter 'stpes'; did you mean 'steps'"):
        e.resolve(quick=True, overrides={"stpes": 5})
    with pytest.raises(ConfigError, match="'steps' takes a int"):
        e.resolve(quick=True, overrides={"steps": "many"})
    assert e.resolve(quick=True, overrides={"eps": 1})["eps"] == 1.0  # int for a float
    assert e.resolve(quick=False)["data"] == "mnist" and e.resolve(quick=True)["data"] == "mnist5k"
    fgsm = REPRODUCTIONS.get("fgsm-regularized")
    assert fgsm.resolve(quick=True, overrides={"hidden": "64,32"})["hidden"] == [64, 32]


# --- a fake entry: the report and the CLI ---------------------------------------------------


def test_report_shows_the_outcome(fake_reproduction: str, tmp_path: Path) -> None:
    res = run_reproduction(fake_reproduction, overrides={"value": 0.4}, out=tmp_path)
    assert res.passed is False
    payload = json.loads((tmp_path / "reproduction.json").read_text())
    fig = payload["figures"][0]
    assert fig["measured"] == 0.4 and fig["passed"] is False
    assert fig["target"]["text"] == "≥ 60.0%"
    assert payload["params"]["value"] == 0.4 and payload["provenance"]["advlab"]
    html = (tmp_path / "reproduction.html").read_text()
    assert "40.0%" in html and "≥ 60.0%" in html and "✗ missed" in html
    assert "Not reproduced: 0 of 1 targets met" in html
    assert "1,234 queries" in html and "~1,000" in html and "data:image/png;base64," in html
    assert "&lt;b&gt;value&lt;/b&gt;" in html and "cell-&lt;i&gt;" in html  # escaped
    assert "Quick run" not in html
    quick = run_reproduction(fake_reproduction, quick=True, out=tmp_path / "q")
    assert quick.passed is True
    assert "Quick run" in (tmp_path / "q" / "reproduction.html").read_text()


def test_a_second_run_reuses_finished_stages(fake_reproduction: str, tmp_path: Path) -> None:
    run_reproduction(fake_reproduction, out=tmp_path)
    run_reproduction(fake_reproduction, out=tmp_path)
    calls = REPRODUCTIONS.get(fake_reproduction).run.calls
    assert calls == ["stage"]
    run_reproduction(fake_reproduction, out=tmp_path, overrides={"value": 0.9})  # another signature
    run_reproduction(fake_reproduction, out=tmp_path, overrides={"value": 0.9}, fresh=True)
    assert calls == ["stage"] * 3


def test_cli_exit_codes_and_errors(fake_reproduction: str, tmp_path: Path) -> None:
    runner = CliRunner()
    listing = runner.invoke(cli, ["reproduce", "list"])
    assert listing.exit_code == 0 and "fake" in listing.output and "madry" in listing.output
    ok = runner.invoke(cli, ["reproduce", "fake", "--out", str(tmp_path / "a"), "-q"])
    assert ok.exit_code == 0, ok.output
    assert "Reproduced: 1 of 1 targets met" in ok.output
    assert "✓ met" in ok.output and str(tmp_path / "a" / "reproduction.html") in ok.output
    bad = runner.invoke(cli, ["reproduce", "fake", "--set", "value=0.1", "--out",
                              str(tmp_path / "b"), "-q"])  # fmt: skip
    assert bad.exit_code == 1, bad.output
    assert "✗ missed" in bad.output and "Not reproduced" in bad.output
    one_line_error(runner.invoke(cli, ["reproduce", "fak"]), "unknown reproduction 'fak'",
                   "Did you mean 'fake'")  # fmt: skip
    one_line_error(runner.invoke(cli, ["reproduce", "fake", "--set", "valeu=1"]),
                   "no parameter 'valeu'", "did you mean 'value'")  # fmt: skip
    blocked = tmp_path / "file"
    blocked.write_text("")
    one_line_error(runner.invoke(cli, ["reproduce", "fake", "--out", str(blocked)]),
                   "is a file, not a folder")  # fmt: skip
    params = runner.invoke(cli, ["reproduce", "fake", "--params"])
    assert json.loads(params.output)["quick"]["data"] == "mnist5k"


def test_a_model_trained_otherwise_is_not_reused(tmp_path: Path) -> None:
    from advlab.defenses import TrainConfig

    entry = REPRODUCTIONS.get("madry")
    ctx = Context(entry, entry.resolve(quick=True), quick=True, out=tmp_path)
    cfg = TrainConfig(epochs=1, batch_size=100, seed=0, recipe="standard")
    ctx.model("m", "mlp", cfg, arch_kwargs={"hidden": [16]})
    with pytest.raises(ConfigError, match="trained with another configuration"):
        ctx.model("m", "mlp", TrainConfig(epochs=2, batch_size=100, seed=0, recipe="standard"),
                  arch_kwargs={"hidden": [16]})  # fmt: skip


# --- real entries, quick mode with tiny budgets -------------------------------------------


def _figures(payload: dict[str, Any]) -> dict[str, float]:
    return {f["label"]: f["measured"] for f in payload["figures"]}


def test_fgsm_regularized_quick_cuts_the_fgsm_error(tmp_path: Path) -> None:
    res = run_reproduction("fgsm-regularized", quick=True, out=tmp_path,
                           overrides={"epochs": 2, "hidden": [256], "n": 50, "restarts": 1})  # fmt: skip
    f = _figures(res.payload)
    std = f["FGSM error at eps 0.25, standard training"]
    reg = f["FGSM error at eps 0.25, FGSM-regularized"]
    assert std > 0.8 and reg < std - 0.2, (std, reg)
    assert res.passed is True


def test_madry_quick_pgd_training_beats_standard_training(tmp_path: Path) -> None:
    res = run_reproduction("madry", quick=True, out=tmp_path,
                           overrides={"epochs": 3, "n": 100, "steps": 10, "restarts": 1})  # fmt: skip
    rows = res.payload["data"]
    assert rows["standard"]["clean"] > 0.8
    assert rows["standard"]["worst"] < 0.1
    assert rows["pgd"]["worst"] > rows["standard"]["worst"] + 0.3, rows


def test_a_full_run_without_full_mnist_names_both_fixes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ADVLAB_DATA", str(tmp_path / "no-data"))
    res = CliRunner().invoke(cli, ["reproduce", "madry", "--out", str(tmp_path / "o"), "-q"])
    one_line_error(res, "dataset 'mnist' not found", "--data-dir", "advlab reproduce madry --quick")
