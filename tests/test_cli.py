"""The command line: discovery, the audit path end to end on a small model, and clean errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from advlab.cli.main import cli
from advlab.models import build_model, load_model, save_model
from advlab.registry import REGISTRIES


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def one_line_error(result, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    text = " ".join(result.output.split())
    assert text.startswith("error:"), text
    for f in fragments:
        assert f in text, (f, text)


@pytest.mark.parametrize("kind", sorted(REGISTRIES))
def test_list(runner: CliRunner, kind: str) -> None:
    res = runner.invoke(cli, ["list", kind])
    assert res.exit_code == 0, res.output
    for name in REGISTRIES[kind].names():
        assert name in res.output


@pytest.fixture
def digits_model(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    model = build_model("mlp", num_classes=10, in_shape=(1, 8, 8))
    return save_model(model, tmp_path / "mlp-digits", arch="mlp",
                      arch_kwargs={"num_classes": 10, "in_shape": [1, 8, 8]}, dataset="digits")  # fmt: skip


def test_audit_end_to_end_with_a_user_model(
    runner: CliRunner, digits_model: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    store = tmp_path / "runs.sqlite"
    args = ["audit", "--model", str(digits_model), "--data", "digits", "-n", "40",
            "--eps", "0,0.1,0.3", "--steps", "3", "--out", str(out), "--store", str(store)]  # fmt: skip
    res = runner.invoke(cli, args)
    assert res.exit_code == 0, res.output
    run_dir = next(out.iterdir())
    report = json.loads((run_dir / "report.json").read_text())
    ev = report["evaluation"]
    assert ev["dataset"] == "digits" and ev["n"] == 40 and ev["run_id"] == run_dir.name
    rows = {(r["attack"], r["eps"]): r for r in ev["rows"]}
    assert set(rows) == {(a, e) for a in ("fgsm", "pgd", "worst-case") for e in (0.0, 0.1, 0.3)}
    assert rows[("pgd", 0.1)]["params"]["steps"] == 3
    for e in (0.0, 0.1, 0.3):
        wc = rows[("worst-case", e)]["robust_accuracy"]
        assert wc <= min(rows[(a, e)]["robust_accuracy"] for a in ("fgsm", "pgd"))
        # the printed table shows the stored numbers
        assert f"{100 * wc:.1f}%" in res.output
    assert rows[("fgsm", 0.0)]["robust_accuracy"] == ev["clean_accuracy"]
    assert ev["provenance"]["command"] and ev["provenance"]["torch"] == torch.__version__
    assert f"clean accuracy {ev['clean_accuracy']:.2%}" in res.output
    html = (run_dir / "report.html").read_text()
    assert "data:image/png;base64," in html and run_dir.name in html
    listed = runner.invoke(cli, ["runs", "list", "--store", str(store)])
    assert listed.exit_code == 0 and run_dir.name in listed.output and "complete" in listed.output
    shown = runner.invoke(cli, ["runs", "show", run_dir.name, "--store", str(store)])
    assert shown.exit_code == 0 and "pgd" in shown.output
    as_json = runner.invoke(cli, ["runs", "show", run_dir.name, "--store", str(store), "--json"])
    data = json.loads(as_json.output)
    assert data["status"] == "complete" and len(data["rows"]) == 9


def test_bad_input_errors_are_one_line(
    runner: CliRunner, digits_model: Path, tmp_path: Path
) -> None:
    base = ["audit", "--model", str(digits_model), "--data", "digits", "-n", "10",
            "--out", str(tmp_path / "o"), "--store", str(tmp_path / "s.sqlite")]  # fmt: skip
    one_line_error(runner.invoke(cli, [*base, "--eps", "-0.1"]), "finite number >= 0", "-0.1")
    one_line_error(runner.invoke(cli, [*base, "--eps", "inf"]), "finite number >= 0", "got inf")
    one_line_error(runner.invoke(cli, [*base, "--norm", "l7"]), "unknown norm 'l7'")
    one_line_error(runner.invoke(cli, [*base, "--attacks", "pdg"]), "unknown attack 'pdg'", "pgd")
    one_line_error(runner.invoke(cli, [*base, "--data", "mnist-typo"]), "unknown dataset")
    missing = ["audit", "--model", str(tmp_path / "nope.safetensors"), "--data", "digits"]
    one_line_error(runner.invoke(cli, missing), "nope.safetensors")
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(digits_model.read_bytes()[:50])
    one_line_error(runner.invoke(cli, ["audit", "--model", str(corrupt), "--data", "digits"]))
    one_line_error(runner.invoke(cli, ["audit", "--data", "mnist", "--data-dir", str(tmp_path)]),
                   "train-images-idx3-ubyte")  # fmt: skip
    one_line_error(runner.invoke(cli, ["runs", "show", "no-such-run", "--store",
                                       str(tmp_path / "s.sqlite")]), "no-such-run")  # fmt: skip
    # A model for 28x28 inputs audited on 8x8 digits: a shape error, not a traceback.
    wrong = save_model(build_model("mlp"), tmp_path / "mlp-mnist", arch="mlp",
                       arch_kwargs={"num_classes": 10, "in_shape": [1, 28, 28]})  # fmt: skip
    res = runner.invoke(cli, ["audit", "--model", str(wrong), "--data", "digits", "-n", "10",
                              "--store", str(tmp_path / "s.sqlite"), "--out", str(tmp_path / "o")])  # fmt: skip
    one_line_error(res, "shape")


def test_npz_audit(runner: CliRunner, digits_model: Path, tmp_path: Path) -> None:
    import numpy as np

    x = (np.random.default_rng(0).random((30, 8, 8)) * 255).astype(np.uint8)
    y = np.arange(30) % 10
    np.savez(tmp_path / "mine.npz", x=x, y=y)
    res = runner.invoke(cli, ["audit", "--model", str(digits_model), "--data", str(tmp_path / "mine.npz"),
                              "--eps", "0,0.2", "--steps", "2", "--out", str(tmp_path / "o"),
                              "--store", str(tmp_path / "s.sqlite")])  # fmt: skip
    assert res.exit_code == 0, res.output
    (report,) = (tmp_path / "o").glob("*/report.json")
    ev = json.loads(report.read_text())["evaluation"]
    assert ev["n"] == 30 and ev["num_classes"] == 10
    model, _ = load_model(digits_model)
    with torch.no_grad():
        pred = model(torch.from_numpy(x).float()[:, None] / 255).argmax(1)
    assert ev["clean_accuracy"] == pytest.approx(
        float((pred == torch.from_numpy(y)).float().mean())
    )
