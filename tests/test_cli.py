"""The command line: discovery, the audit path end to end on a small model, and clean errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from advlab.cli.main import cli
from advlab.models import build_model, load_model, save_model
from advlab.registry import REGISTRIES

from .conftest import one_line_error


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.mark.parametrize("kind", sorted(REGISTRIES))
def test_list(runner: CliRunner, kind: str) -> None:
    res = runner.invoke(cli, ["list", kind])
    assert res.exit_code == 0, res.output
    for name in REGISTRIES[kind].names():
        assert name in res.output


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


def _audit_args(model: Path, tmp_path: Path, *extra: str) -> list[str]:
    return ["audit", "--model", str(model), "--data", "digits", "-n", "30", "--eps", "0,0.1",
            "--steps", "2", "--out", str(tmp_path / "o"), "--store", str(tmp_path / "s.sqlite"),
            *extra]  # fmt: skip


def test_output_paths_are_checked_before_any_work(
    runner: CliRunner, digits_model: Path, tmp_path: Path
) -> None:
    afile = tmp_path / "a-file"
    afile.write_text("x")
    for bad, fragment in ((str(afile), "is a file"), ("/proc/nope", "cannot write to")):
        args = _audit_args(digits_model, tmp_path)
        args[args.index("--out") + 1] = bad
        res = runner.invoke(cli, args)
        one_line_error(res, fragment, "--out")
        assert res.output.startswith("error:")  # no blank line before it
    from advlab.store import RunStore

    with RunStore(tmp_path / "s.sqlite") as store:
        assert store.list_runs() == []  # refused at the door: no run was started


def test_a_late_failure_marks_the_run_failed_with_the_reason(
    runner: CliRunner, digits_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import advlab.audit

    def broken(*a: object, **k: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(advlab.audit, "write_html_report", broken)
    res = runner.invoke(cli, _audit_args(digits_model, tmp_path))
    assert res.exit_code != 0
    from advlab.store import RunStore

    with RunStore(tmp_path / "s.sqlite") as store:
        (run,) = store.list_runs()
        assert run.status == "failed" and "No space left on device" in (run.error or "")
    listed = runner.invoke(cli, ["runs", "list", "--store", str(tmp_path / "s.sqlite")])
    assert "failed" in listed.output and "No space left" in listed.output


def test_audit_takes_minimal_attacks_and_prints_one_source(
    runner: CliRunner, digits_model: Path, tmp_path: Path
) -> None:
    args = _audit_args(digits_model, tmp_path, "--attacks", "pgd,deepfool,cw-l2", "--norm", "l2")
    args[args.index("--eps") + 1] = "0,0.5"
    res = runner.invoke(cli, args)
    assert res.exit_code == 0, res.output
    (report,) = (tmp_path / "o").glob("*/report.json")
    rows = json.loads(report.read_text())["evaluation"]["rows"]
    assert {r["attack"] for r in rows} == {"pgd", "deepfool", "cw-l2", "worst-case"}
    line = next(ln for ln in res.output.splitlines() if ln.startswith("model:"))
    assert line == f"model: {digits_model}"  # the path once, not "X (X)"


def test_audit_help_lists_norms_attacks_and_formats(runner: CliRunner) -> None:
    text = " ".join(runner.invoke(cli, ["audit", "--help"]).output.split())
    for word in ("linf, l2, l1, l0", "cw-l2", "deepfool", "pgd", ".safetensors", "TorchScript",
                 "--factory", "x_train", ".npz"):  # fmt: skip
        assert word in text, word


def test_the_table_fits_80_columns(digits_model: Path, tmp_path: Path) -> None:
    from rich.console import Console

    from advlab import ThreatModel
    from advlab.cli.main import summary_table
    from advlab.data import load_dataset
    from advlab.evaluate import EvalConfig, evaluate
    from advlab.models import load_model

    model, _ = load_model(digits_model)
    test = load_dataset("digits").test.take(20)
    ev = evaluate(model, test, ["fgsm", "pgd"], [ThreatModel("linf", e) for e in (0.0, 0.125)],
                  EvalConfig())  # fmt: skip
    # the widest values a row can hold: long eps, a 12-character interval, an L0 median in the
    # thousands, minutes
    from dataclasses import replace

    wide = replace(ev.summaries[-1], attack="worst-case", eps=1 / 255, ci_low=0.839, ci_high=1.0,
                   median_norm=12345.0, wall_time=7199.0, success_rate=1.0)  # fmt: skip
    ev = replace(ev, summaries=(*ev.summaries, wide))
    console = Console(width=80, record=True, color_system=None)
    console.print(summary_table(ev))
    text = console.export_text()
    assert "…" not in text and max(len(ln) for ln in text.splitlines()) <= 80, text
    for col in ("attack", "eps", "robust", "95% CI", "success", "median", "time"):
        assert col in text


def test_errors_escape_user_values(runner: CliRunner, digits_model: Path, tmp_path: Path) -> None:
    res = runner.invoke(cli, _audit_args(digits_model, tmp_path, "--attacks", "[bold]pgd[/bold]"))
    one_line_error(res, "[bold]pgd[/bold]")


def test_pipe_output_prints_plain_progress_lines(digits_model: Path, tmp_path: Path) -> None:
    env = {**os.environ, "ADVLAB_HOME": str(tmp_path / "h")}
    out = subprocess.run([sys.executable, "-m", "advlab.cli.main", *_audit_args(digits_model, tmp_path)],
                         capture_output=True, text=True, env=env, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr
    lines = out.stderr.splitlines()
    assert any(ln.startswith("pgd linf eps=0.1: 30/30") for ln in lines), lines
    assert any(ln.startswith("clean: 30/30") for ln in lines)
    assert "\x1b[" not in out.stderr  # no terminal control codes in a log


def _wait_for_run(store_path: Path, status: str = "running", timeout: float = 120.0) -> str:
    from advlab.store import RunStore

    t0 = time.time()
    while time.time() - t0 < timeout:
        if store_path.exists():
            with RunStore(store_path) as store:
                runs = store.list_runs(status=status)
                if runs:
                    return runs[0].id
        time.sleep(0.2)
    raise AssertionError(f"no {status} run appeared in {store_path}")


@pytest.fixture(scope="module")
def trained_digits_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MLP that classifies digits well, so that PGD has work to do on most samples."""
    from advlab.defenses import TrainConfig, train_and_save

    dest = tmp_path_factory.mktemp("trained") / "mlp-digits.safetensors"
    train_and_save("mlp", "digits", TrainConfig(epochs=6, batch_size=32, lr=3e-3), dest)
    return dest


def _slow_audit(model: Path, tmp_path: Path, store: Path) -> list[str]:
    # tiny radii: PGD fails on every sample and runs all its steps, so the audit lasts a while
    return [sys.executable, "-m", "advlab.cli.main", "audit", "--model", str(model), "--data",
            "digits", "-n", "360", "--eps", "0,0.002,0.004", "--steps", "1500", "--batch-size",
            "30", "--attacks", "pgd", "--out", str(tmp_path / "o"), "--store", str(store)]  # fmt: skip


@pytest.mark.slow
def test_two_identical_audits_at_once_share_one_run(
    trained_digits_model: Path, tmp_path: Path
) -> None:
    """The second process waits for the live run and reuses it; nothing is computed twice."""
    store = tmp_path / "s.sqlite"
    env = {**os.environ, "ADVLAB_HOME": str(tmp_path / "h"), "OMP_NUM_THREADS": "1"}
    cmd = _slow_audit(trained_digits_model, tmp_path, store)
    first = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    rid = _wait_for_run(store)
    second = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    out1, err1 = first.communicate(timeout=600)
    out2, err2 = second.communicate(timeout=600)
    assert first.returncode == 0 and second.returncode == 0, (err1[-2000:], err2[-2000:])
    assert "resuming" not in err2 and "waiting" in err2 and rid in err2
    assert "completed by another process" in out2
    from advlab.store import RunStore

    with RunStore(store) as s:
        (run,) = s.list_runs()
        assert run.id == rid and run.status == "complete"
    assert [p.name for p in (tmp_path / "o").iterdir()] == [rid]
    table = [ln for ln in out1.splitlines() if "│" in ln]
    assert table and table == [ln for ln in out2.splitlines() if "│" in ln][: len(table)]


@pytest.mark.slow
def test_a_killed_audit_is_resumed_only_once_its_owner_is_gone(
    trained_digits_model: Path, tmp_path: Path
) -> None:
    store = tmp_path / "s.sqlite"
    env = {**os.environ, "ADVLAB_HOME": str(tmp_path / "h"), "OMP_NUM_THREADS": "1"}
    cmd = _slow_audit(trained_digits_model, tmp_path, store)
    victim = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env
    )
    rid = _wait_for_run(store)
    from advlab.store import RunStore

    t0 = time.time()  # wait until some records are stored, then kill without warning
    while time.time() - t0 < 120:
        with RunStore(store) as s:
            eid = s.find_cell(rid, "pgd", "linf", 0.002)
            if eid is not None and s.count_records(eid) >= 60:
                break
        time.sleep(0.2)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    with RunStore(store) as s:
        assert s.get_run(rid).status == "running"  # what a crash leaves behind
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"resuming interrupted run {rid}" in again.stderr
    # the resumed run's numbers equal an uninterrupted run's
    ref = subprocess.run(_slow_audit(trained_digits_model, tmp_path / "ref", tmp_path / "ref.sqlite"),
                         capture_output=True, text=True, env=env, timeout=600)  # fmt: skip
    assert ref.returncode == 0
    rows = lambda out: [ln.split("│")[1:6] for ln in out.splitlines() if "│" in ln]  # noqa: E731
    assert rows(again.stdout) == rows(ref.stdout)


def test_train_builds_the_model_the_audit_caches(runner: CliRunner, tmp_path: Path) -> None:
    """One train-and-save path with one set of defaults: `advlab train` and the audit's
    default model are the same network, with the full training config in the metadata."""
    from safetensors.torch import load_file

    from advlab.audit import AuditConfig, prepare_model
    from advlab.defenses import TrainConfig

    dest = tmp_path / "trained.safetensors"
    res = runner.invoke(cli, ["train", "--model", "mlp", "--data", "digits", "--epochs", "1",
                              "--val-size", "0", "--out", str(dest)])  # fmt: skip
    assert res.exit_code == 0, res.output
    _, info = prepare_model(AuditConfig(model="mlp", data="digits", training={"epochs": 1}), None)
    a, b = load_file(str(dest)), load_file(info["source"])
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    _, meta = load_model(dest)
    resolved = {"label_smoothing": 0.0, "temperature": 1.0}
    assert meta["recipe"] == {**TrainConfig().to_dict(), "epochs": 1, "recipe_params": resolved}
    assert meta["recipe"]["scheduler"] == "cosine"  # the audit's schedule, not "none"


def test_train_checks_its_output_path_before_training(runner: CliRunner, tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x")
    for bad, fragment in ((afile / "m.safetensors", "is a file"),
                          (Path("/proc/nope/m.safetensors"), "cannot write to"),
                          (tmp_path, "is a folder")):  # fmt: skip
        res = runner.invoke(cli, ["train", "--model", "mlp", "--data", "digits", "--out", str(bad)])
        one_line_error(res, fragment)


def test_a_relative_model_path_is_printed_once(
    runner: CliRunner, digits_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(digits_model.parent)
    args = _audit_args(digits_model, tmp_path)
    args[args.index("--model") + 1] = "./" + digits_model.name
    res = runner.invoke(cli, args)
    assert res.exit_code == 0, res.output
    line = next(ln for ln in res.output.splitlines() if ln.startswith("model:"))
    assert line == f"model: ./{digits_model.name}"


def test_train_with_a_recipe_prints_robust_validation_and_the_report_plots_it(
    runner: CliRunner, tmp_path: Path
) -> None:
    dest = tmp_path / "pgd.safetensors"
    res = runner.invoke(cli, ["train", "--model", "mlp", "--data", "digits", "--epochs", "2",
                              "--recipe", "pgd", "--param", "eps=0.1", "--param", "steps=3",
                              "--param", "step_size=0.05", "--val-size", "100",
                              "--out", str(dest)])  # fmt: skip
    assert res.exit_code == 0, res.output
    lines = [ln for ln in res.output.splitlines() if ln.startswith("epoch ")]
    assert len(lines) == 2
    assert all("val acc" in ln and "val robust acc" in ln and "(linf 0.1)" in ln for ln in lines)
    _, meta = load_model(dest)
    assert meta["recipe"]["recipe"] == "pgd"
    assert meta["recipe"]["recipe_params"]["steps"] == 3  # every parameter, resolved
    assert meta["recipe"]["recipe_params"]["random_start"] is True
    history = meta["extra"]["training"]["history"]
    assert [r["epoch"] for r in history] == [1, 2] and history[0]["val_robust_accuracy"] >= 0

    out = tmp_path / "out"
    res = runner.invoke(cli, ["audit", "--model", str(dest), "--data", "digits", "-n", "20",
                              "--eps", "0,0.1", "--steps", "3", "--out", str(out), "--store",
                              str(tmp_path / "s.sqlite")])  # fmt: skip
    assert res.exit_code == 0, res.output
    html = next(out.rglob("report.html")).read_text()
    assert 'id="training"' in html and "recipe <code>pgd</code>" in html
    assert '"history"' not in html  # the history is plotted, not dumped into the header


def test_train_rejects_bad_recipe_parameters_in_one_line(runner: CliRunner) -> None:
    base = ["train", "--model", "mlp", "--data", "digits", "--epochs", "1"]
    one_line_error(runner.invoke(cli, [*base, "--recipe", "pgd", "--param", "stepz=3"]),
                   "no parameter(s) stepz", "accepts eps")  # fmt: skip
    one_line_error(runner.invoke(cli, [*base, "--recipe", "pgd", "--param", "eps=-1"]), "eps")
    one_line_error(runner.invoke(cli, [*base, "--recipe", "tradez"]), "unknown recipe", "trades")
    one_line_error(runner.invoke(cli, [*base, "--recipe", "fgsm-regularized", "--param",
                                       "alpha=2"]), "alpha")  # fmt: skip


def test_distill_trains_a_teacher_and_a_student(runner: CliRunner, tmp_path: Path) -> None:
    dest = tmp_path / "student.safetensors"
    args = ["distill", "--model", "mlp", "--data", "digits", "--epochs", "1", "--temperature",
            "10", "--val-size", "0", "--out", str(dest)]  # fmt: skip
    res = runner.invoke(cli, args)
    assert res.exit_code == 0, res.output
    teacher = tmp_path / "student-teacher.safetensors"
    _, t_meta = load_model(teacher)
    _, s_meta = load_model(dest)
    assert t_meta["recipe"]["recipe_params"]["temperature"] == 10.0
    assert s_meta["recipe"]["recipe"] == "distillation"
    assert s_meta["recipe"]["recipe_params"] == {"teacher": str(teacher), "temperature": 10.0}
    again = runner.invoke(cli, args)  # both finished: the teacher is reused
    assert again.exit_code == 0 and "teacher: reusing" in again.output
    one_line_error(runner.invoke(cli, [*args[:-1], str(tmp_path / "x.safetensors"),
                                       "--temperature", "0"]), "temperature")  # fmt: skip
    other_t = [*args[:8], "20", *args[9:]]  # same --out, another temperature
    one_line_error(runner.invoke(cli, other_t), "not trained with these options")


# -- certification --------------------------------------------------------------------------------

GELU_MODULE = """
from torch import nn


def make():
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.GELU(), nn.Linear(16, 10))
"""


@pytest.fixture
def gelu_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, str]:
    """A weights file and factory of a network with a layer the bounds do not support."""
    pkg = tmp_path / "gelupkg_advlab_test"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "models.py").write_text(GELU_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    from gelupkg_advlab_test.models import make  # type: ignore[import-not-found]

    torch.manual_seed(0)
    path = tmp_path / "gelu.pt"
    torch.save(make().state_dict(), path)
    return path, "gelupkg_advlab_test.models:make"


def test_certify_prints_certified_accuracy_and_writes_json(
    runner: CliRunner, trained_digits_model: Path, tmp_path: Path
) -> None:
    out = tmp_path / "cert"
    args = ["certify", "--model", str(trained_digits_model), "--data", "digits", "-n", "30",
            "--method", "crown", "--eps", "0.05,0", "--eps", "0.02", "--radius", "--out",
            str(out)]  # fmt: skip
    res = runner.invoke(cli, args)
    assert res.exit_code == 0, res.output
    (path,) = out.iterdir()
    assert path.name == "certify-crown-linf.json"
    doc = json.loads(path.read_text())
    assert doc["format"] == "advlab-certify" and doc["dataset"]["n"] == 30
    rows = doc["certified"]
    assert [r["eps"] for r in rows] == [0.0, 0.02, 0.05]  # sorted, both --eps forms
    acc = [r["certified_accuracy"] for r in rows]
    assert acc[0] == doc["clean_accuracy"] > 0.5  # eps 0: certified = classified correctly
    assert acc[0] >= acc[1] >= acc[2] > 0 and all(r["method"] == "crown" for r in rows)
    assert all(r["ci_low"] <= a <= r["ci_high"] for r, a in zip(rows, acc, strict=True))
    for r in rows:  # the printed table shows the stored numbers
        assert f"{100 * r['certified_accuracy']:.1f}%" in res.output
    radius = doc["radius"]
    samples = radius["samples"]
    assert len(samples) == 30 and radius["n"] == sum(s["correct"] for s in samples)
    assert all(s["certified"] == 0.0 for s in samples if not s["correct"])
    assert all(s["certified"] > 0.0 for s in samples if s["correct"])  # a trained MLP, crown
    got = sorted(s["certified"] for s in samples if s["correct"])
    assert radius["median"] == pytest.approx(float(torch.tensor(got).quantile(0.5)))
    assert f"median {radius['median']:.4g}" in res.output
    assert f"mean {radius['mean']:.4g}" in res.output
    assert doc["provenance"]["torch"] == torch.__version__


def test_certify_bad_input_and_unsupported_layers_are_one_line_errors(
    runner: CliRunner, digits_model: Path, gelu_model: tuple[Path, str], tmp_path: Path
) -> None:
    base = ["certify", "--model", str(digits_model), "--data", "digits", "-n", "5"]
    one_line_error(runner.invoke(cli, [*base, "--eps", "0.1", "--method", "crwn"]),
                   "unknown certifier 'crwn'", "crown")  # fmt: skip
    one_line_error(runner.invoke(cli, [*base, "--eps", "-0.1"]), "finite number >= 0", "-0.1")
    one_line_error(runner.invoke(cli, [*base, "--eps", "0.1", "--norm", "l0"]), "not 'l0'")
    one_line_error(runner.invoke(cli, base), "nothing to certify", "--eps", "--radius")
    weights, factory = gelu_model
    res = runner.invoke(cli, ["certify", "--model", str(weights), "--factory", factory,
                              "--data", "digits", "-n", "5", "--eps", "0.1"])  # fmt: skip
    one_line_error(res, "cannot bound layer 2 (GELU)")
    # the audit refuses it before any attack runs and before a run is started
    store = tmp_path / "s.sqlite"
    res = runner.invoke(cli, ["audit", "--model", str(weights), "--factory", factory, "--data",
                              "digits", "-n", "5", "--eps", "0,0.1", "--certify", "--store",
                              str(store), "--out", str(tmp_path / "o")])  # fmt: skip
    one_line_error(res, "cannot bound layer 2 (GELU)")
    from advlab.store import RunStore

    with RunStore(store) as s:
        assert s.list_runs() == []
    one_line_error(runner.invoke(cli, _audit_args(digits_model, tmp_path, "--certify", "ibb")),
                   "unknown certifier 'ibb'")  # fmt: skip


def test_audit_certify_stores_radii_and_never_certifies_a_broken_sample(
    runner: CliRunner, trained_digits_model: Path, tmp_path: Path
) -> None:
    from advlab.store import RunStore
    from advlab.threat import within

    grid = (0.0, 0.02, 0.05, 0.1)
    out, store_path = tmp_path / "o", tmp_path / "s.sqlite"
    args = ["audit", "--model", str(trained_digits_model), "--data", "digits", "-n", "40",
            "--eps", ",".join(map(str, grid)), "--attacks", "fgsm,pgd,deepfool", "--steps", "10",
            "--out", str(out), "--store", str(store_path), "--certify"]  # fmt: skip
    res = runner.invoke(cli, args)
    assert res.exit_code == 0, res.output
    (run_dir,) = out.iterdir()
    report = json.loads((run_dir / "report.json").read_text())
    ev = report["evaluation"]
    assert ev["config"]["certify"] == "crown" and report["extra"]["config"]["certify"] == "crown"
    certified = {r["eps"]: r for r in ev["certified"]}
    robust = {r["eps"]: r["robust_accuracy"] for r in ev["rows"] if r["attack"] == "worst-case"}
    assert sorted(certified) == list(grid)
    assert certified[0.0]["certified_accuracy"] == ev["clean_accuracy"]
    assert certified[0.05]["certified_accuracy"] > 0  # a trained MLP: CROWN certifies some
    for e in grid:
        assert certified[e]["certified_accuracy"] <= robust[e]
        assert f"{100 * certified[e]['certified_accuracy']:.1f}%" in res.output
    assert "certified linf radius (crown)" in res.output

    shown = runner.invoke(cli, ["runs", "show", run_dir.name, "--store", str(store_path)])
    pct = f"{100 * certified[0.05]['certified_accuracy']:.1f}%"
    assert shown.exit_code == 0 and "certified accuracy (crown): " in shown.output
    assert f"linf eps=0.05 {pct}" in shown.output
    with RunStore(store_path) as store:
        rid = run_dir.name
        assert store.get_run(rid).summary["certified"][2]["eps"] == 0.05
        cert = store.records(store.find_cell(rid, "certified", "linf", float("inf")))
        radius = {r.index: r.certified for r in cert}
        assert len(cert) == 40 and all(r is not None for r in radius.values())
        correct = {r.index: r.clean_pred == r.label for r in cert}
        assert all(radius[i] == 0.0 for i, ok in correct.items() if not ok)
        # Soundness: a sample certified at eps was never broken by an attack at eps.
        minimal = store.records(store.find_cell(rid, "deepfool", "linf", float("inf")))
        for e in grid[1:]:
            sure = {i for i, ok in correct.items() if ok and radius[i] >= e}
            broken = set()
            for attack in ("fgsm", "pgd"):
                recs = store.records(store.find_cell(rid, attack, "linf", e))
                broken |= {r.index for r in recs if r.success}
            norms = torch.tensor([r.norm for r in minimal], dtype=torch.float64)
            hit = within(norms, "linf", e).tolist()
            broken |= {r.index for r, h in zip(minimal, hit, strict=True) if r.success and h}
            assert not sure & broken, (e, sorted(sure & broken))
            assert len(sure) == round(certified[e]["certified_accuracy"] * 40)

    # per sample: certified radius <= smallest adversarial example, in the JSON and the page
    bounds = ev["bounds"]["linf"]
    assert [b["index"] for b in bounds] == list(range(40))
    for b in bounds:
        assert b["certified"] == radius[b["index"]]
        if b["correct"] and b["attack_norm"] is not None:
            assert b["certified"] <= b["attack_norm"] + 1e-6
            assert b["gap"] == pytest.approx(b["attack_norm"] - b["certified"])
    summary = report["certified_vs_attack"]["linf"]
    assert summary["unsound"] == [] and summary["broken"] > 0 and len(summary["widest"]) == 10
    html = (run_dir / "report.html").read_text()
    section = html[html.index('<section id="certified">') :]
    section = section[: section.index("</section>")]
    assert "Certified vs attack radius" in section and "Widest gaps" in section
    assert section.count("data:image/png;base64,") == 1
    widest = summary["widest"][0]
    assert f"<td>#{widest['index']}</td>" in section and widest["attack"] in section
    assert '<th scope="row">certified (crown)</th>' in html  # the summary table's certified row
    assert 'class="warn"' not in html

    # an identical audit without --certify is another run, with no certified section
    plain = [a for a in args if a != "--certify"]
    plain[plain.index("--out") + 1] = str(tmp_path / "o2")
    res = runner.invoke(cli, plain)
    assert res.exit_code == 0, res.output
    html = next((tmp_path / "o2").rglob("report.html")).read_text()
    assert 'id="certified"' not in html and "certified (crown)" not in html


def test_a_black_box_audit_within_a_query_budget(
    runner: CliRunner, digits_model: Path, tmp_path: Path
) -> None:
    """--access hides what the threat model hides; --queries caps each attack per sample."""
    args = _audit_args(digits_model, tmp_path, "--attacks", "pgd", "--access", "labels")
    res = runner.invoke(cli, args)
    assert res.exit_code == 2 and "needs gradients" in res.output and "hopskipjump" in res.output
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())
    args = _audit_args(digits_model, tmp_path, "--attacks", "square,hopskipjump",
                       "--access", "scores", "--queries", "60")  # fmt: skip
    res = runner.invoke(cli, args)
    assert res.exit_code == 0, res.output
    (report,) = (tmp_path / "o").glob("*/report.json")
    ev = json.loads(report.read_text())["evaluation"]
    config = ev["provenance"]["config"]
    assert config["access"] == "scores" and config["queries"] == 60
    attacked = [r for r in ev["rows"] if r["attack"] != "worst-case" and r["eps"] > 0]
    assert {r["attack"] for r in attacked} == {"square", "hopskipjump"}
    assert all(r["n"] < r["queries"] <= 60 * r["n"] for r in attacked), attacked


def test_an_identical_audit_reuses_the_completed_run(
    runner: CliRunner, digits_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Re-running an identical configuration (same config, same model weights) reads the
    completed cells from the store: no attack runs again; --fresh computes a new run."""
    import advlab.evaluate.engine as engine
    from advlab.store import RunStore

    args = _audit_args(digits_model, tmp_path)
    first = runner.invoke(cli, args)
    assert first.exit_code == 0, first.output
    calls: list[str] = []

    def no_attacks(*a: object, **k: object) -> None:
        calls.append("attack")
        raise AssertionError("an attack ran again")

    monkeypatch.setattr(engine, "run_batch", no_attacks)
    again_args = list(args)
    again_args[again_args.index("--out") + 1] = str(tmp_path / "o2")
    again = runner.invoke(cli, again_args)
    assert again.exit_code == 0, again.output
    assert calls == [] and "reused: an identical audit completed before" in again.output
    rid = next(ln.split()[1] for ln in first.output.splitlines() if ln.startswith("run: "))
    assert f"run: {rid}" in again.output
    table = lambda out: [ln for ln in out.splitlines() if "│" in ln]  # noqa: E731
    assert table(again.output) == table(first.output) and table(first.output)
    assert (tmp_path / "o2" / rid / "report.html").exists()  # written where it was asked for
    with RunStore(tmp_path / "s.sqlite") as store:
        assert [r.id for r in store.list_runs()] == [rid]
    # another model (other weights, same path) is another configuration: it is computed
    torch.manual_seed(5)
    save_model(build_model("mlp", num_classes=10, in_shape=(1, 8, 8)), digits_model, arch="mlp",
               arch_kwargs={"num_classes": 10, "in_shape": [1, 8, 8]}, dataset="digits")  # fmt: skip
    other = runner.invoke(cli, args)
    assert other.exit_code != 0 and calls  # it tried to attack: nothing was reused
    calls.clear()
    fresh = runner.invoke(cli, [*args, "--fresh"])
    assert fresh.exit_code != 0 and calls == ["attack"]


def test_progress_lines_have_a_rate_and_an_eta_and_quiet_turns_them_off(
    digits_model: Path, tmp_path: Path
) -> None:
    env = {**os.environ, "ADVLAB_HOME": str(tmp_path / "h")}
    args = _audit_args(digits_model, tmp_path, "--batch-size", "10", "--attacks", "pgd")
    out = subprocess.run([sys.executable, "-m", "advlab.cli.main", *args],
                         capture_output=True, text=True, env=env, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr
    lines = [ln for ln in out.stderr.splitlines() if ln.startswith("pgd linf eps=0.1:")]
    assert [ln.split()[3] for ln in lines] == ["10/30", "20/30", "30/30"], lines
    assert "/s" in lines[0] and "ETA" in lines[0] and "ETA" not in lines[-1], lines
    args[args.index("--out") + 1] = str(tmp_path / "o2")
    quiet = subprocess.run([sys.executable, "-m", "advlab.cli.main", *args, "--fresh", "-q"],
                           capture_output=True, text=True, env=env, timeout=300)  # fmt: skip
    assert quiet.returncode == 0, quiet.stderr
    assert "30/30" not in quiet.stderr and "pgd" in quiet.stdout  # results, no progress


def test_audit_targeted_grid(runner: CliRunner, tmp_path: Path) -> None:
    args = ["audit", "--model", "mlp", "--data", "digits", "-n", "200", "--eps", "0,0.2",
            "--steps", "10", "--attacks", "fgsm,pgd", "--targeted-grid", "--out",
            str(tmp_path / "o"), "--store", str(tmp_path / "s.sqlite")]  # fmt: skip
    res = runner.invoke(cli, args)
    assert res.exit_code == 0, res.output
    (report,) = (tmp_path / "o").glob("*/report.json")
    grid = json.loads(report.read_text())["extra"]["targeted_grid"]
    assert grid["attack"] == "pgd"  # the iterative attack, not FGSM
    assert len(grid["pred"]) == 10 and all(len(r) == 10 for r in grid["pred"])
    hits = [grid["pred"][i][j] == j for i in range(10) for j in range(10) if i != j]
    assert sum(hits) == sum(map(sum, grid["success"])) > 0
    html = report.with_name("report.html").read_text()
    assert 'id="targeted"' in html and html.count('class="px small"') == 100
    one_line_error(runner.invoke(cli, [*args[:-4], "--attacks", "deepfool"]),
                   "targeted grid needs a targeted attack", "deepfool")  # fmt: skip
