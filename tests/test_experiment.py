"""`advlab run experiment.yaml`: keys checked with their section path, the schema generated from
the config dataclasses, and a whole experiment (train, audit, certify) end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from advlab.audit import AuditConfig
from advlab.cli.main import cli
from advlab.errors import ConfigError, UnknownNameError
from advlab.experiment import load_experiment, parse_experiment, schema

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "experiment.yaml"
SCHEMA = ROOT / "docs" / "experiment.schema.json"


def test_the_committed_schema_is_the_generated_one() -> None:
    assert json.loads(SCHEMA.read_text()) == schema(), (
        "docs/experiment.schema.json is out of date: regenerate it with "
        "`advlab run --schema > docs/experiment.schema.json`"
    )


def test_run_schema_prints_it_and_run_needs_a_file() -> None:
    runner = CliRunner()
    res = runner.invoke(cli, ["run", "--schema"])
    assert res.exit_code == 0 and json.loads(res.output) == schema()
    res = runner.invoke(cli, ["run"])
    assert res.exit_code == 2 and res.output.startswith("error: advlab run needs an experiment")


def test_the_schema_follows_the_dataclasses() -> None:
    s = schema()["properties"]
    audit = s["audit"]["properties"]
    assert audit["n"]["type"] == ["integer", "null"] and audit["n"]["default"] == 1000
    assert audit["eps"]["type"] == "array" and audit["eps"]["items"] == {"type": "number"}
    assert "attack_params" not in audit  # stated through attacks: [{name: pgd, steps: 100}]
    assert audit["attacks"]["items"]["anyOf"][1]["required"] == ["name"]
    assert "eps grid" in audit["eps"]["description"]
    assert s["audit"]["additionalProperties"] is False
    assert s["train"]["properties"]["epochs"]["default"] == 8  # TrainConfig's fields
    assert s["train"]["properties"]["out"]["type"] == ["string", "null"]  # TrainSection's
    assert s["certify"]["properties"]["method"]["default"] == "crown"


def test_the_example_validates() -> None:
    exp = load_experiment(EXAMPLE)
    assert exp.audit is not None and exp.train is None and exp.certify is None
    a = exp.audit
    assert (a.data, a.n, a.norm, a.attacks) == ("mnist5k", 100, "linf", ("fgsm", "pgd", "deepfool"))
    assert a.eps == (0.0, 0.05, 0.1, 0.2, 0.3)
    params = {c.name: dict(c.params) for c in a.attack_configs()}
    assert params["pgd"] == {"steps": 40, "restarts": 1} and params["deepfool"] == {}
    assert exp.out == EXAMPLE.parent / "advlab-out"


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"audit": {"atacks": ["pgd"]}}, "audit.atacks: unknown key; did you mean 'attacks'?"),
        ({"adit": {}}, "adit: unknown key; did you mean 'audit'?"),
        (
            {"audit": {"attacks": ["fgsm", {"name": "pgd", "stepz": 3}]}},
            "audit.attacks[1].stepz: unknown key; did you mean 'steps'?",
        ),
        ({"audit": {"n": "abc"}}, "audit.n: expected an integer or null, got 'abc'"),
        ({"audit": {"eps": [0, "x"]}}, "audit.eps[1]: expected a number, got 'x'"),
        ({"audit": {"eps": [0, -1]}}, "audit: each eps of the grid must be a finite number >= 0"),
        ({"train": {"epocs": 2}}, "train.epocs: unknown key; did you mean 'epochs'?"),
        (
            {"train": {"model": "mlp", "data": "digits"}, "audit": {"model": "x"}},
            "audit.model: the train section sets the model",
        ),
        ({"certify": {"metod": "ibp"}}, "certify.metod: unknown key; did you mean 'method'?"),
        ({"certify": {"eps": [0.1], "norm": "l7"}}, "certify: certification bounds"),
        ({}, "nothing to run"),
        ({"out": 3, "audit": {}}, "out: expected a string"),
    ],
)
def test_config_errors_name_the_key_and_the_nearest_valid_one(doc: dict, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_experiment(doc)
    assert message in str(e.value)


def test_unknown_attack_and_bad_yaml_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(UnknownNameError, match="pdg"):
        parse_experiment({"audit": {"attacks": [{"name": "pdg"}]}})
    bad = tmp_path / "bad.yaml"
    bad.write_text("audit:\n  n: [1, 2\n")
    runner = CliRunner()
    res = runner.invoke(cli, ["run", str(bad)])
    assert res.exit_code == 2 and res.output.startswith("error: bad.yaml: not valid YAML at line")
    typo = tmp_path / "typo.yaml"
    typo.write_text("audit:\n  atacks: [pgd]\n")
    res = runner.invoke(cli, ["run", str(typo)])
    assert res.exit_code == 2
    assert " ".join(res.output.split()) == (
        "error: typo.yaml: audit.atacks: unknown key; did you mean 'attacks'?"
    )


def test_attack_params_flow_into_the_attacks_and_old_configs_still_match() -> None:
    plain = AuditConfig(attacks=("fgsm", "pgd"), n=10)
    assert "attack_params" not in plain.to_dict()  # earlier runs' stored configs still match
    cfg = AuditConfig(attacks=("fgsm", "pgd"), n=10, attack_params={"pgd": {"restarts": 2}})
    assert cfg.to_dict()["attack_params"] == {"pgd": {"restarts": 2}}
    pgd = next(c for c in cfg.attack_configs() if c.name == "pgd")
    assert dict(pgd.params) == {"steps": 40, "restarts": 2} and pgd.resolved["restarts"] == 2
    # a parameter equal to what the attack takes anyway changes nothing: the same stored config
    same = parse_experiment({"audit": {"n": 10, "steps": 3, "attacks": [
        "fgsm", {"name": "pgd", "steps": 3, "restarts": 1}]}}).audit  # fmt: skip
    assert same is not None
    assert same.to_dict() == AuditConfig(attacks=("fgsm", "pgd"), n=10, steps=3).to_dict()
    with pytest.raises(ConfigError, match="does not take 'stepz'"):
        AuditConfig(attacks=("pgd",), attack_params={"pgd": {"stepz": 2}})
    with pytest.raises(ConfigError, match="not among the attacks"):
        AuditConfig(attacks=("fgsm",), attack_params={"pgd": {"steps": 2}})


def test_the_example_runs_end_to_end_with_a_tiny_model(digits_model: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    store = tmp_path / "s.sqlite"
    args = ["run", str(EXAMPLE), "--set", f"audit.model={digits_model}", "--set",
            "audit.data=digits", "--set", "audit.n=12", "--set", f"out={tmp_path / 'o'}",
            "--set", f"store={store}", "-q"]  # fmt: skip
    res = runner.invoke(cli, args)
    assert res.exit_code == 0, res.output
    (report,) = (tmp_path / "o").glob("*/report.json")
    ev = json.loads(report.read_text())["evaluation"]
    assert ev["n"] == 12 and ev["dataset"] == "digits"
    assert {r["attack"] for r in ev["rows"]} == {"fgsm", "pgd", "deepfool", "worst-case"}
    pgd = next(r for r in ev["rows"] if r["attack"] == "pgd")
    assert pgd["params"]["steps"] == 40 and pgd["params"]["restarts"] == 1
    wc = next(r for r in ev["rows"] if r["attack"] == "worst-case" and r["eps"] == 0.3)
    assert f"{100 * wc['robust_accuracy']:.1f}%" in res.output
    assert "30/" not in res.output  # --quiet: no progress lines


def test_train_audit_and_certify_sections(tmp_path: Path) -> None:
    exp = {
        "train": {"model": "mlp", "data": "digits", "epochs": 1, "batch_size": 64,
                  "out": "model.safetensors"},
        "audit": {"n": 16, "eps": [0, 0.1], "attacks": ["fgsm"], "steps": 2},
        "certify": {"method": "ibp", "eps": [0.01], "n": 16},
        "out": "reports",
        "store": "runs.sqlite",
    }  # fmt: skip
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(exp))
    runner = CliRunner()
    res = runner.invoke(cli, ["run", str(path), "-q"])
    assert res.exit_code == 0, res.output
    model = tmp_path / "model.safetensors"
    assert model.exists() and f"train: trained {model}" in res.output
    assert f"model: {model}" in res.output  # the audit attacked the trained model
    assert "certified accuracy (ibp, linf)" in res.output
    assert (tmp_path / "reports" / "certify-ibp-linf.json").exists()
    assert len(list((tmp_path / "reports").glob("*/report.html"))) == 1
    again = runner.invoke(cli, ["run", str(path), "-q"])
    assert again.exit_code == 0, again.output
    assert f"train: reused {model}" in again.output and "reused: an identical audit" in again.output
    exp["train"]["epochs"] = 2
    path.write_text(yaml.safe_dump(exp))
    res = runner.invoke(cli, ["run", str(path), "-q"])
    assert res.exit_code == 2 and "exists but was not trained with these options" in res.output
