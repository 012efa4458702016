"""`advlab runs compare` and `advlab runs export`: the numbers come from the stored records."""

from __future__ import annotations

import csv
import io
import json
import math
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from advlab.cli.main import cli
from advlab.compare import (
    compare_runs,
    export_run,
    newcombe_paired,
    newcombe_unpaired,
    resolve_run_id,
    row_records,
    sentence,
)
from advlab.errors import ConfigError, UnknownNameError
from advlab.models import build_model, save_model
from advlab.store import RunStore

from .conftest import one_line_error

# -- intervals ---------------------------------------------------------------------------------


def test_unpaired_interval_matches_newcombes_worked_example() -> None:
    # Newcombe 1998a, Table II example (a): 56/70 - 48/80; method 10 gives 0.0524 to 0.3339
    lo, hi = newcombe_unpaired(48, 80, 56, 70)
    assert (round(lo, 4), round(hi, 4)) == (0.0524, 0.3339)
    lo2, hi2 = newcombe_unpaired(56, 70, 48, 80)  # B - A flips the sign
    assert (lo2, hi2) == pytest.approx((-hi, -lo))


def test_paired_interval() -> None:
    # Newcombe 1998b's example table (36 both, 12 in one only, 2 in the other only, 0 neither),
    # computed from method 10's formula; the interval excludes 0 and contains the difference
    lo, hi = newcombe_paired(36, 2, 12, 0)
    assert (round(lo, 4), round(hi, 4)) == (0.0569, 0.3404)
    assert lo < 10 / 50 < hi
    assert newcombe_paired(36, 12, 2, 0) == pytest.approx((-hi, -lo))
    # identical runs: the difference is 0 and the interval is narrow around it
    lo, hi = newcombe_paired(60, 0, 0, 40)
    assert lo < 0 < hi and hi - lo < 0.08
    # pairing makes the interval narrower than treating the runs as independent
    plo, phi = newcombe_paired(55, 2, 8, 35)
    ulo, uhi = newcombe_unpaired(57, 100, 63, 100)
    assert phi - plo < uhi - ulo


# -- a store with two runs ----------------------------------------------------------------------


def _model(tmp_path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    model = build_model("mlp", num_classes=10, in_shape=(1, 8, 8))
    return save_model(model, tmp_path / f"mlp-{seed}", arch="mlp",
                      arch_kwargs={"num_classes": 10, "in_shape": [1, 8, 8]}, dataset="digits")  # fmt: skip


def _audit(runner: CliRunner, model: Path, tmp_path: Path, *extra: str) -> str:
    res = runner.invoke(cli, ["audit", "--model", str(model), "--data", "digits", "-n", "40",
                              "--eps", "0,0.1,0.3", "--steps", "3", "--out", str(tmp_path / "o"),
                              "--store", str(tmp_path / "s.sqlite"), "--quiet", *extra])  # fmt: skip
    assert res.exit_code == 0, res.output
    return next(ln.split()[1] for ln in res.output.splitlines() if ln.startswith("run: "))


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    tmp = tmp_path_factory.mktemp("compare")
    runner = CliRunner()
    a = _audit(runner, _model(tmp, 0), tmp)
    b = _audit(runner, _model(tmp, 1), tmp, "--attacks", "fgsm,pgd,deepfool")
    return tmp / "s.sqlite", a, b


def test_compare_numbers_equal_the_stored_rows(two_runs: tuple[Path, str, str]) -> None:
    store_path, a, b = two_runs
    with RunStore(store_path) as store:
        cmp = compare_runs(store, a, b)
        sa = {(s.attack, s.norm, s.eps): s for s in store.summaries(a)}
        sb = {(s.attack, s.norm, s.eps): s for s in store.summaries(b)}
        # the rows derived from the stored cells reproduce every stored summary
        for run, summ in ((a, sa), (b, sb)):
            recs = row_records(store, run)
            for key, s in summ.items():
                assert sum(r.robust for r in recs[key]) == s.robust, key
    assert cmp.paired and cmp.unpaired_reason is None
    assert cmp.rows[0].attack == "clean"
    clean_a, clean_b = sa[("fgsm", "linf", 0.0)], sb[("fgsm", "linf", 0.0)]
    a0, b0 = cmp.rows[0].a, cmp.rows[0].b
    assert a0 is not None and b0 is not None
    assert a0["robust"] == clean_a.robust and b0["robust"] == clean_b.robust
    assert all(r.eps > 0 for r in cmp.rows[1:])  # at eps 0 every row is the clean accuracy
    for key, s in sb.items():
        if key[2] == 0:
            continue
        row = cmp.row(key[0], key[2], key[1])
        assert row.b is not None and row.b["robust"] == s.robust
        if key in sa:
            assert row.a is not None and row.a["robust"] == sa[key].robust
            assert row.diff == pytest.approx(s.robust_accuracy - sa[key].robust_accuracy)
            assert row.method == "paired" and row.ci is not None
            assert row.ci[0] <= row.diff <= row.ci[1]
            # flips account for the whole difference
            assert row.fixed_in_b is not None and row.broken_in_b is not None
            assert row.fixed_in_b["count"] - row.broken_in_b["count"] == s.robust - sa[key].robust
        else:
            assert row.only == "B" and row.a is None and row.diff is None
    assert {r.attack for r in cmp.rows if r.only == "B"} == {"deepfool"}


def test_compare_cli_table_json_and_html(two_runs: tuple[Path, str, str], tmp_path: Path) -> None:
    store_path, a, b = two_runs
    runner = CliRunner()
    res = runner.invoke(cli, ["runs", "compare", a, b, "--store", str(store_path),
                              "--html", str(tmp_path / "c.html")])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert f"A: {a}" in res.output and f"B: {b}" in res.output and "only in B" in res.output
    with RunStore(store_path) as store:
        said = sentence(compare_runs(store, a, b))
    assert "paired" in res.output and "orst-case robust accuracy" in said
    assert said.split(":")[0] in " ".join(res.output.split())
    html = (tmp_path / "c.html").read_text()
    assert "data:image/png;base64," in html and a in html and b in html
    assert "Newcombe" in html and "http://" not in html and "https://" not in html
    js = runner.invoke(cli, ["runs", "compare", a[:-2], b, "--store", str(store_path), "--json"])
    assert js.exit_code == 0, js.output
    doc = json.loads(js.output)
    assert doc["a"]["id"] == a and doc["paired"] is True  # a unique prefix names the run
    wc = next(r for r in doc["rows"] if r["attack"] == "worst-case" and r["eps"] == 0.3)
    with RunStore(store_path) as store:
        sa = {(s.attack, s.eps): s for s in store.summaries(a)}
        sb = {(s.attack, s.eps): s for s in store.summaries(b)}
    assert wc["a"]["robust"] == sa[("worst-case", 0.3)].robust
    assert wc["diff"] == pytest.approx(
        sb[("worst-case", 0.3)].robust_accuracy - sa[("worst-case", 0.3)].robust_accuracy
    )
    # the HTML table shows the stored percentages
    assert f"{100 * sb[('pgd', 0.1)].robust_accuracy:.1f}%" in html


def test_compare_errors_are_one_line(two_runs: tuple[Path, str, str], tmp_path: Path) -> None:
    store_path, a, b = two_runs
    runner = CliRunner()
    typo = a[:-1] + ("0" if a[-1] != "0" else "1")
    res = runner.invoke(cli, ["runs", "compare", typo, b, "--store", str(store_path)])
    one_line_error(res, f"no run {typo!r}", "closest", a)
    with RunStore(store_path) as store:
        with pytest.raises(UnknownNameError, match="ambiguous"):
            resolve_run_id(store, "2")
        rid = store.create_run("audit", {"model": "m", "data": "digits"})
        store.finish_run(rid, "interrupted")
    one_line_error(runner.invoke(cli, ["runs", "compare", a, rid, "--store", str(store_path)]),
                   rid, "interrupted, not complete", "--allow-incomplete")  # fmt: skip


def test_runs_on_other_data_are_not_paired(tmp_path: Path) -> None:
    from advlab.results import Cell, SampleRecord, Summary

    def run(store: RunStore, data: str, robust: list[bool]) -> str:
        rid = store.create_run("audit", {"data": data, "model": "m"})
        clean = store.cell_id(rid, Cell("clean", "linf", 0.0))
        store.add_records(clean, [SampleRecord(i, 1, 1, 1, False, 0.0, 1) for i in range(4)])
        cell = store.cell_id(rid, Cell("fgsm", "linf", 0.1))
        store.add_records(cell, [SampleRecord(i, 1, 1, 1 if ok else 2, not ok, 0.1, 2)
                                 for i, ok in enumerate(robust)])  # fmt: skip
        k = sum(robust)
        store.write_summary(rid, Summary("fgsm", "linf", 0.1, {}, 4, k, k / 4, 0.0, 1.0,
                                         math.nan, math.nan, math.nan, 8, 0.1))  # fmt: skip
        store.finish_run(rid, "complete")
        return rid

    with RunStore(tmp_path / "s.sqlite") as store:
        a = run(store, "digits", [True, True, False, False])
        b = run(store, "mnist5k", [True, False, True, True])
        cmp = compare_runs(store, a, b)
        assert not cmp.paired and "different datasets" in (cmp.unpaired_reason or "")
        assert any("different datasets" in w for w in cmp.warnings)
        row = cmp.row("fgsm", 0.1)
        assert row.method == "unpaired" and row.broken_in_b is None
        assert row.ci == pytest.approx(newcombe_unpaired(2, 4, 3, 4))
        c = run(store, "digits", [True, False, True, True])
        row = compare_runs(store, a, c).row("fgsm", 0.1)
        assert row.method == "paired"
        assert row.broken_in_b == {"count": 1, "first": [1]}
        assert row.fixed_in_b == {"count": 2, "first": [2, 3]}


# -- export -----------------------------------------------------------------------------------------


def test_export_csv_json_and_stdout(two_runs: tuple[Path, str, str], tmp_path: Path) -> None:
    store_path, a, _ = two_runs
    runner = CliRunner()
    out = tmp_path / "a.csv"
    res = runner.invoke(cli, ["runs", "export", a, "--format", "csv", "--out", str(out),
                              "--store", str(store_path)])  # fmt: skip
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader(out.open()))
    with RunStore(store_path) as store:
        cells = store.cells(a)
        assert len(rows) == sum(store.count_records(eid) for eid, _ in cells)
        eid = store.find_cell(a, "pgd", "linf", 0.1)
        assert eid is not None
        stored = {r.index: r for r in store.records(eid)}
    pgd = [r for r in rows if r["attack"] == "pgd" and r["eps"] == "0.1"]
    assert len(pgd) == 40
    for r in pgd:
        s = stored[int(r["index"])]
        assert int(r["adv_pred"]) == s.adv_pred and int(r["success"]) == int(s.success)
        assert int(r["robust"]) == int(s.robust) and float(r["perturbation"]) == pytest.approx(
            s.norm
        )
        assert json.loads(r["params"])["steps"] == 3
    meta = json.loads((tmp_path / "a.csv.meta.json").read_text())
    assert meta["run"]["id"] == a and meta["run"]["config"]["n"] == 40
    # json to stdout, with the derived rows (worst case)
    js = runner.invoke(cli, ["runs", "export", a, "--format", "json", "--out", "-", "--rows",
                             "--store", str(store_path)])  # fmt: skip
    doc = json.loads(js.output)
    wc = [r for r in doc["records"] if r["attack"] == "worst-case" and r["eps"] == 0.3]
    summ = next(s for s in doc["rows"] if s["attack"] == "worst-case" and s["eps"] == 0.3)
    assert len(wc) == 40 and sum(r["robust"] for r in wc) == summ["robust"]
    assert all(r["row"] == "row" for r in wc)


def test_parquet_export(two_runs: tuple[Path, str, str], tmp_path: Path,
                        monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    store_path, a, _ = two_runs
    runner = CliRunner()
    args = ["runs", "export", a, "--format", "parquet", "--out", str(tmp_path / "a.parquet"),
            "--store", str(store_path)]  # fmt: skip
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # as if it were not installed
    one_line_error(runner.invoke(cli, args), "pip install pyarrow")
    assert not (tmp_path / "a.parquet").exists()
    monkeypatch.undo()
    pq = pytest.importorskip("pyarrow.parquet")
    res = runner.invoke(cli, args)
    assert res.exit_code == 0, res.output
    table = pq.read_table(tmp_path / "a.parquet")
    meta = json.loads(table.schema.metadata[b"advlab"])
    assert meta["run"]["id"] == a and table.num_rows > 40


def test_export_refuses_bad_input(two_runs: tuple[Path, str, str]) -> None:
    store_path, a, _ = two_runs
    with RunStore(store_path) as store:
        with pytest.raises(ConfigError, match="unknown export format"):
            export_run(store, a, "xlsx")
        path, text, n = export_run(store, a, "csv", "-")
        assert path is None and text is not None and n == len(text.splitlines()) - 1
        assert next(csv.reader(io.StringIO(text)))[:3] == ["run_id", "row", "attack"]


def test_certified_accuracy_is_compared_where_both_runs_certified(tmp_path: Path) -> None:
    runner = CliRunner()
    extra = ("--certify", "ibp", "--attacks", "fgsm", "--eps", "0,0.001,0.3")
    a = _audit(runner, _model(tmp_path, 0), tmp_path, *extra)
    b = _audit(runner, _model(tmp_path, 1), tmp_path, *extra)
    with RunStore(tmp_path / "s.sqlite") as store:
        cmp = compare_runs(store, a, b)
        stored = {rid: store.get_run(rid).summary or {} for rid in (a, b)}
    cert = [r for r in cmp.rows if r.attack == "certified"]
    assert [r.eps for r in cert] == [0.001, 0.3] and all(r.method == "paired" for r in cert)
    assert cert[0].a is not None and cert[0].a["robust"] > 0  # something certified at 0.001
    for r in cert:
        for side, rid in ((r.a, a), (r.b, b)):
            (want,) = [c for c in stored[rid]["certified"] if c["eps"] == r.eps]
            assert side is not None and side["accuracy"] == pytest.approx(
                want["certified_accuracy"]
            )
            assert side["params"]["method"] == "ibp"
        assert r.fixed_in_b is not None and r.broken_in_b is not None and r.a and r.b
        assert r.fixed_in_b["count"] - r.broken_in_b["count"] == r.b["robust"] - r.a["robust"]
    # each certified row follows the worst case of its eps
    keys = [(r.attack, r.eps) for r in cmp.rows]
    assert keys.index(("certified", 0.3)) == keys.index(("worst-case", 0.3)) + 1
    res = runner.invoke(cli, ["runs", "compare", a, b, "--store", str(tmp_path / "s.sqlite")])
    assert "certified (ibp) (L∞)" in res.output
