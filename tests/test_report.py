"""HTML and JSON reports: content asserted against the stored numbers."""

from __future__ import annotations

import base64
import json
import math
import re
import statistics
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from markupsafe import escape as html_escape
from torch import Tensor, nn

from advlab import ThreatModel
from advlab.evaluate import WORST_CASE, AttackConfig, EvalConfig, Evaluation, evaluate
from advlab.report import (
    SECTIONS,
    diagnose,
    fragment,
    headline,
    render_html,
    render_transfer_matrix,
    write_html_report,
    write_json_report,
)
from advlab.report.fmt import fmt_in_unit, fmt_num, fmt_pct, fmt_pct_pair, time_unit
from advlab.report.sections import per_class_accuracy, query_curves, reproduce_command
from advlab.threat import within

from .conftest import Toy, make_cnn


def _toy(x: Tensor, model: nn.Module) -> Toy:
    with torch.no_grad():
        y = model(x).argmax(dim=1)
    y[::4] = (y[::4] + 1) % int(model(x[:1]).shape[1])
    return Toy("toy-images", x, y, int(model(x[:1]).shape[1]))


@pytest.fixture(scope="module")
def ev() -> Evaluation:
    model = make_cnn()
    x = torch.rand(16, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    # FGSM with a small step is weaker than PGD here: every row of the table differs
    attacks = [AttackConfig("fgsm", {"step_size": 0.01}), AttackConfig("pgd", {"steps": 3})]
    return evaluate(model, _toy(x, model), attacks,
                    [ThreatModel("linf", e) for e in (0.0, 0.03, 0.08)],
                    EvalConfig(batch_size=8, keep_examples=4, example_eps=0.03),
                    provenance={"torch": "9.9-test",
                    "started": "2026-01-02T03:04:05+00:00",
                    "command": ["/x/.venv/bin/advlab", "audit", "-n", "16"],
                    "git_revision": "abc123"})  # fmt: skip


@pytest.fixture(scope="module")
def cert_ev() -> Evaluation:
    model = make_cnn()
    x = torch.rand(16, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    return evaluate(model, _toy(x, model), ["fgsm", AttackConfig("pgd", {"steps": 3}), "deepfool"],
                    [ThreatModel("linf", e) for e in (0.0, 0.01, 0.03)],
                    EvalConfig(batch_size=8, keep_examples=4, certify="crown"),
                    provenance={"torch": "9.9-test"})  # fmt: skip


def _pngs(html: str) -> list[bytes]:
    return [
        base64.b64decode(m) for m in re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", html)
    ]


def _section(html: str, name: str) -> str:
    body = html[html.index(f'<section id="{name}"') :]
    return body[: body.index("</section>")]


def _ids(html: str) -> list[str]:
    return re.findall(r'<section id="([^"]+)"', html)


# -- the page as a whole ------------------------------------------------------------------------


def test_html_report_is_one_self_contained_file(ev: Evaluation, tmp_path: Path) -> None:
    extra = {"model": "<b>cnn</b>", "run_id": "20260101-000000-abcdef", "title": "Audit & co"}
    path = write_html_report(tmp_path / "out" / "report.html", ev, extra)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["report.html"]
    html = path.read_text(encoding="utf-8")
    assert html.lstrip().lower().startswith("<!doctype html>")
    srcs = re.findall(r'<img [^>]*src="([^"]+)"', html)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    pngs = _pngs(html)
    assert len(pngs) == len(srcs) and all(p.startswith(b"\x89PNG\r\n\x1a\n") for p in pngs)
    # No resource is fetched from anywhere: no URLs at all, no external scripts or stylesheets.
    assert "http://" not in html and "https://" not in html
    assert "<script" not in html and "<link" not in html
    # Values are escaped.
    assert "<b>cnn</b>" not in html and "&lt;b&gt;cnn&lt;/b&gt;" in html
    assert "Audit &amp; co" in html
    assert "20260101-000000-abcdef" in html
    # versions and date come from the provenance captured with the work, not from this machine
    assert "9.9-test" in html and "2026-01-02T03:04:05" in html
    assert torch.__version__ not in html
    assert "@media print" in html  # "save as PDF" gets its own stylesheet


def test_sections_in_order_and_only_with_their_data(ev: Evaluation) -> None:
    html = render_html(ev)
    ids = _ids(html)
    assert ids[0] == "verdict" and ids[-1] == "provenance"
    assert ids.index("summary") < ids.index("curve") < ids.index("examples") < ids.index("checks")
    # no minimal attack, no certification, no transfer matrix, no training history, no
    # targeted grid: their sections are absent
    for absent in ("minimal", "certified", "transfer", "training", "targeted"):
        assert absent not in ids, absent
    assert "per-class" in ids


# -- headline -----------------------------------------------------------------------------------


def _tiles(html: str) -> list[tuple[str, str, str]]:
    return re.findall(
        r'<div class="k">([^<]*)</div>\s*<div class="v">([^<]*)</div><div class="ci">CI ([^<]*)</div>',
        _section(html, "verdict"),
    )


def test_verdict_shows_the_stored_numbers(ev: Evaluation) -> None:
    html = render_html(ev)
    tiles = _tiles(html)
    worst = [s for s in ev.curve(WORST_CASE) if s.eps > 0]
    assert tiles == [("clean", fmt_pct(ev.clean_accuracy), fmt_pct_pair(*ev.clean_ci))] + [
        (f"ε = {fmt_num(s.eps)}", fmt_pct(s.robust_accuracy), fmt_pct_pair(s.ci_low, s.ci_high))
        for s in worst
    ]
    assert html.index('id="verdict"') < html.index('id="summary"')


def test_headline_sentence_is_computed_from_the_rows(ev: Evaluation) -> None:
    eps = ev.example_eps
    assert eps == 0.03
    rows = [ev.row(a, eps) for a in ("fgsm", "pgd")]
    best = max(rows, key=lambda s: s.success_rate)
    correct = sum(r.clean_pred == r.label for r in ev.records[("clean", "linf", 0.0)])
    text = headline(ev)
    label = "FGSM" if best.attack == "fgsm" else "PGD-3"
    assert text.startswith(f"{label} at L∞ ε = 0.03 flips {100 * best.success_rate:.0f}% ")
    assert f"({round(best.success_rate * correct)} of {correct})" in text
    worst = ev.row(WORST_CASE, eps)
    assert f"from {100 * ev.clean_accuracy:.1f}% to {100 * worst.robust_accuracy:.1f}%" in text
    assert text in render_html(ev)
    # another attack flipping more becomes the sentence's subject
    other = "pgd" if best.attack == "fgsm" else "fgsm"
    boosted = tuple(
        replace(s, success_rate=1.0) if (s.attack, s.eps) == (other, eps) else s
        for s in ev.summaries
    )
    assert headline(replace(ev, summaries=boosted)).startswith(
        ("PGD-3" if other == "pgd" else "FGSM") + " at L∞ ε = 0.03 flips 100% "
    )


def test_two_norms_get_a_tile_row_and_a_table_each() -> None:
    model = make_cnn()
    x = torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(4))
    ev2 = evaluate(model, _toy(x, model), ["fgsm", AttackConfig("pgd", {"steps": 2})],
                   [ThreatModel("linf", 0.03), ThreatModel("l2", 0.5), ThreatModel("l2", 1.0)],
                   EvalConfig(batch_size=8, keep_examples=2))  # fmt: skip
    html = render_html(ev2, {"title": "cnn on toy", "model": "cnn", "dataset": "toy"})
    verdict = _section(html, "verdict")
    assert verdict.count('<div class="tiles">') == 2
    assert "robust accuracy under L∞ attacks" in verdict and "under L2 attacks" in verdict
    assert [t[1] for t in _tiles(html)] == [fmt_pct(ev2.clean_accuracy)] + [
        fmt_pct(ev2.row(WORST_CASE, e, n).robust_accuracy)
        for n, e in (("linf", 0.03), ("l2", 0.5), ("l2", 1.0))
    ]
    assert _section(html, "summary").count('<table class="grid">') == 2
    assert "cnn on toy: " not in verdict  # the title already names model and data


# -- tables -------------------------------------------------------------------------------------


def _grid(html: str) -> tuple[list[str], dict[str, list[tuple[str, str]]]]:
    body = _section(html, "summary")
    table = body[body.index('<table class="grid">') : body.index("</table>")]
    head = re.findall(r'<th class="num">ε = ([^<]*)</th>', table)
    rows = {}
    for label, cells in re.findall(r'<th scope="row">([^<]*)</th>(.*?)</tr>', table, re.S):
        rows[label] = re.findall(
            r'<span class="v">([^<]*)</span><span class="ci">([^<]*)</span>', cells
        )
    return head, rows


def test_summary_table_is_attacks_by_eps_with_the_aggregate_values(ev: Evaluation) -> None:
    html = render_html(ev)
    head, rows = _grid(html)
    positive = [e for e in ev.eps_grid() if e > 0]
    assert head == [fmt_num(e) for e in positive]  # no eps = 0 column (it is the clean accuracy)
    assert list(rows) == ["FGSM", "PGD-3", "worst case"]
    for label, name in (("FGSM", "fgsm"), ("PGD-3", "pgd"), ("worst case", WORST_CASE)):
        assert rows[label] == [
            (fmt_pct(s.robust_accuracy), fmt_pct_pair(s.ci_low, s.ci_high))
            for s in ev.curve(name)
            if s.eps > 0
        ]
    assert rows["FGSM"] != rows["PGD-3"]  # the fixture tells the rows apart
    assert "median norm" not in html
    assert f"all {ev.n} samples" in _section(html, "summary")


def test_cost_table_uses_one_time_unit(ev: Evaluation) -> None:
    body = _section(render_html(ev), "summary")
    unit, scale = time_unit([sum(s.wall_time for s in ev.curve(a)) for a in ("fgsm", "pgd")])
    assert f"wall time ({unit})" in body
    cost = body[body.index('<table class="cost">') :]
    rows = re.findall(r'<th scope="row">([^<]*)</th>.*?</tr>', cost, re.S)
    assert rows == ["FGSM", "PGD-3"]
    walls = re.findall(r'<td class="num">([^<]*)</td></tr>', cost)
    expect = [fmt_in_unit(sum(s.wall_time for s in ev.curve(a) if s.eps > 0), scale)
              for a in ("fgsm", "pgd")]  # fmt: skip
    assert walls == expect
    assert all(re.fullmatch(r"[\d.,]+", w) for w in walls)  # numbers only, the unit is in the head
    queries = re.findall(r'<td class="num">([\d,]+)</td><td class="num">', cost)
    assert queries == [fmt_num(sum(s.queries for s in ev.curve(a) if s.eps > 0))
                       for a in ("fgsm", "pgd")]  # fmt: skip


def test_time_unit_is_chosen_by_the_largest_value() -> None:
    assert time_unit([9.36, 30.0]) == ("s", 1.0)
    assert time_unit([9.36, 162.0]) == ("min", 60.0)
    assert fmt_in_unit(9.36, 60.0) == "0.16" and fmt_in_unit(162.0, 60.0) == "2.70"
    assert time_unit([9000.0]) == ("h", 3600.0)


# -- plots and their sections ------------------------------------------------------------------


def test_per_class_accuracy_counts_the_records(ev: Evaluation) -> None:
    eps, acc, counts = per_class_accuracy(ev, "linf")
    assert eps == [0.03, 0.08]
    clean = ev.records[("clean", "linf", 0.0)]
    for c in range(ev.num_classes):
        mine = [r for r in clean if r.label == c]
        assert counts[c] == len(mine)
        if not mine:
            assert all(math.isnan(v) for v in acc[c])
            continue
        assert acc[c][0] == sum(r.robust for r in mine) / len(mine)
        for j, e in enumerate(eps, start=1):
            recs = [r for r in ev.records[(WORST_CASE, "linf", e)] if r.label == c]
            assert acc[c][j] == sum(r.robust for r in recs) / len(recs)
    assert len(_pngs(_section(render_html(ev), "per-class"))) == 1


def test_minimal_norms_section_reads_the_minimal_attacks_run(cert_ev: Evaluation) -> None:
    html = render_html(cert_ev)
    body = _section(html, "minimal")
    recs = cert_ev.cell_records[("deepfool", "linf", math.inf)]
    norms = [r.norm for r in recs if r.clean_pred == r.label and r.success]
    assert norms
    row = re.search(r'<th scope="row">DeepFool</th>(.*?)</tr>', body, re.S)
    assert row
    cells = re.findall(r'<td class="num">([^<]*)</td>', row.group(1))
    med = float(torch.tensor(norms, dtype=torch.float64).quantile(0.5))
    assert cells[0] == fmt_num(len(norms))
    assert cells[2] == fmt_num(med) and cells[3] == fmt_num(statistics.fmean(norms))
    assert len(_pngs(body)) == 1
    assert 'id="minimal"' not in render_html(replace(cert_ev, cell_records={}))


def test_queries_section_only_when_queries_vary(ev: Evaluation) -> None:
    fixed = {
        k: [replace(r, queries=2) for r in v] if k[0] == "pgd" else v for k, v in ev.records.items()
    }
    flat = replace(ev, records=fixed)
    assert query_curves(flat) == {} and 'id="queries"' not in render_html(flat)
    varied = {
        k: [replace(r, queries=1 + r.index) for r in v] if k[0] == "fgsm" else v
        for k, v in fixed.items()
    }
    curves = query_curves(replace(ev, records=varied))
    assert list(curves) == ["FGSM"]
    for e, qs in curves["FGSM"].items():
        recs = ev.records[("fgsm", "linf", e)]
        assert qs == [1 + r.index for r in recs if r.clean_pred == r.label and r.success]
    html = render_html(replace(ev, records=varied), {"query_price": 0.001})
    assert len(_pngs(_section(html, "queries"))) == 1 and "$0.001" in html


def test_transfer_section_from_a_matrix_or_a_file(ev: Evaluation, tmp_path: Path) -> None:
    t = {"matrix": [[1.0, 0.25], [0.5, 0.9]], "sources": ["cnn", "mlp"],
         "targets": ["cnn", "<mlp>"], "metric": "success rate"}  # fmt: skip
    body = _section(render_html(ev, {"transfer": t}), "transfer")
    assert len(_pngs(body)) == 1 and "success rate" in body
    path = tmp_path / "transfer.json"
    path.write_text(json.dumps(t))
    assert 'id="transfer"' in render_html(ev, {"transfer": str(path)})
    # the JSON that advlab transfer-matrix writes: one list of families for both axes
    fams = {"families": ["dnn", "lr"], "matrix": [[0.9, 0.2], [0.4, 0.8]]}
    body = _section(render_html(ev, {"transfer": fams}), "transfer")
    assert "misclassification rate" in body and len(_pngs(body)) == 1
    with pytest.raises(ValueError, match="one row per source"):
        render_transfer_matrix([[0.1, 0.2]], ["a", "b"], ["x", "y"])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        render_transfer_matrix([[12.0]], ["a"], ["x"])


def test_training_section_from_the_model_history(ev: Evaluation) -> None:
    rows = [{"epoch": i, "train_accuracy": 0.1 * i, "val_accuracy": None} for i in (1, 2, 3)]
    model = {"name": "m", "recipe": {"recipe": "pgd", "recipe_params": {"eps": 0.3}},
             "extra": {"training": {"history": rows, "stopped": None}}}  # fmt: skip
    body = _section(render_html(ev, {"model": model}), "training")
    assert "3 epochs" in body and "<code>pgd</code>" in body and "eps=0.3" in body
    assert len(_pngs(body)) == 1
    assert 'id="training"' not in render_html(ev, {"model": {"name": "m"}})


def test_certified_section_appears_only_with_certified_data(
    ev: Evaluation, cert_ev: Evaluation
) -> None:
    plain = render_html(ev)
    assert 'id="certified"' not in plain and 'class="certified"' not in plain
    html = render_html(cert_ev)
    assert html.index('id="curve"') < html.index('id="certified"') < html.index('id="examples"')
    section = _section(html, "certified")
    assert "Certified vs attack radius" in section and "crown, 15 bisection steps" in section
    assert len(_pngs(section)) == 1
    bounds = cert_ev.bounds["linf"]
    correct = [b for b in bounds if b.correct]
    assert f"{len(correct)} of {len(bounds)}" in section
    # the widest-gap table lists the broken samples with the largest gaps, widest first
    broken = sorted((b for b in correct if b.attack_norm is not None),
                    key=lambda b: -(b.gap or 0.0))  # fmt: skip
    rows = re.findall(r"<tr><td>#(\d+)</td><td>(\d+)</td><td[^>]*>([^<]*)</td>\s*"
                      r"<td[^>]*>([^<]*)</td><td>([^<]*)</td><td[^>]*>([^<]*)</td></tr>",
                      section)  # fmt: skip
    assert rows and len(rows) == min(10, len(broken))
    for row, b in zip(rows, broken, strict=False):
        assert row == (str(b.index), str(b.label), fmt_num(b.certified), fmt_num(b.attack_norm),
                       b.attack, fmt_num(b.gap))  # fmt: skip


def test_summary_table_has_the_certified_row(cert_ev: Evaluation) -> None:
    html = render_html(cert_ev)
    _, rows = _grid(html)
    assert list(rows) == ["FGSM", "PGD-3", "DeepFool", "worst case", "certified (crown)"]
    assert rows["certified (crown)"] == [
        (fmt_pct(c.certified_accuracy), fmt_pct_pair(c.ci_low, c.ci_high))
        for c in cert_ev.certified if c.eps > 0
    ]  # fmt: skip
    for c in cert_ev.certified:
        assert c.certified_accuracy <= cert_ev.row(WORST_CASE, c.eps).robust_accuracy
    tiles = _tiles(html)
    assert len(tiles) == 1 + len([e for e in cert_ev.eps_grid() if e > 0])
    for c in (c for c in cert_ev.certified if c.eps > 0):
        assert f"certified ≥ {fmt_pct(c.certified_accuracy)}" in _section(html, "verdict")


# -- images ------------------------------------------------------------------------------------


def test_examples_show_successes_and_failures_with_confidences(ev: Evaluation) -> None:
    assert ev.examples and ev.failures
    conf = {e.index: [0.91, 0.55] for e in (*ev.examples, *ev.failures)}
    body = _section(render_html(ev, {"example_confidence": conf}), "examples")
    caps = re.findall(r"<figcaption>(.*?)</figcaption>", body, re.S)
    assert len(caps) == len(ev.examples) + len(ev.failures)
    assert len(_pngs(body)) == 3 * len(caps)  # clean, adversarial, perturbation
    for cap, e in zip(caps, [*ev.examples, *ev.failures], strict=True):
        assert cap.startswith(f"#{e.index} · label <b>{e.label}</b>")
        assert f"<b>{e.clean_pred}</b> (91%)" in cap and "(55%)" in cap
        held = "held" if e in ev.failures else "flip"
        assert f'<b class="{held}">{e.adv_pred}</b>' in cap
    assert "Withstood every attack at L∞ ε = 0.03" in body


def test_failures_are_samples_no_attack_flips(ev: Evaluation) -> None:
    robust = ev.robust(WORST_CASE, 0.03)
    idx = [e.index for e in ev.failures]
    assert idx == sorted(idx) and len(idx) <= 4
    for e in ev.failures:
        assert bool(robust[e.index]) and e.adv_pred == e.label == e.clean_pred
        assert e.eps == 0.03 and e.attack in ("fgsm", "pgd")
        assert bool(within(torch.tensor([float((e.x_adv - e.x).abs().amax())]), "linf", 0.03)[0])


def test_targeted_grid(ev: Evaluation) -> None:
    k = 3
    x = torch.rand(k, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    x_adv = x[:, None].repeat(1, k, 1, 1, 1)
    pred = torch.tensor([[0, 1, 2], [0, 1, 0], [0, 1, 2]])  # one miss: source 1, target 2
    body = _section(render_html(ev, {"targeted_grid": {"x": x, "x_adv": x_adv, "pred": pred,
                                                       "attack": "cw-l2"}}), "targeted")  # fmt: skip
    assert len(_pngs(body)) == k * k
    assert body.count('class="miss"') == 1 and body.count('class="src"') == k
    assert "C&amp;W L2" in body
    with pytest.raises(ValueError, match="targeted_grid"):
        render_html(ev, {"targeted_grid": {"x": x, "x_adv": x_adv[:2], "pred": pred}})
    assert 'id="targeted"' not in render_html(ev)


def test_examples_section_without_images(tmp_path: Path) -> None:
    # Tabular inputs: no image grid, but the rest of the report is there.
    g = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 3))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    x = torch.rand(12, 6, generator=g)
    ev = evaluate(model, _toy(x, model), "fgsm", [ThreatModel("linf", e) for e in (0, 0.5, 1)])
    assert ev.examples
    html = write_html_report(tmp_path / "r.html", ev).read_text(encoding="utf-8")
    assert "not images" in _section(html, "examples")
    assert not _pngs(_section(html, "examples"))
    none = evaluate(model, _toy(x, model), "fgsm", ThreatModel("linf", 0.0))
    assert not none.examples
    zero = render_html(none)
    for absent in ("examples", "curve", "per-class"):
        assert f'id="{absent}"' not in zero
    assert "only the clean accuracy" in zero


# -- checks --------------------------------------------------------------------------------------


def _swap(ev: Evaluation, attack: str, eps: float, robust: int) -> Evaluation:
    rows = tuple(
        replace(s, robust=robust, robust_accuracy=robust / s.n)
        if (s.attack, s.eps) == (attack, eps) else s
        for s in ev.summaries
    )  # fmt: skip
    return replace(ev, summaries=rows)


def _found(ev: Evaluation) -> dict[str, list[Any]]:
    return {what: ds for what, ds in diagnose(ev)}


def test_checks_flag_a_weak_attack_with_a_remedy(ev: Evaluation) -> None:
    found = _found(ev)
    assert found["iterative attacks beat single-step ones"] == []
    assert found["robust accuracy falls as eps grows"] == []
    # PGD left more samples robust than FGSM: flagged, shown in the banner and the checks list
    fgsm = ev.row("fgsm", 0.08).robust
    weak = _swap(ev, "pgd", 0.08, fgsm + 1)
    (d,) = _found(weak)["iterative attacks beat single-step ones"]
    assert d.level == "warning" and "fgsm" in d.title and "pgd" in d.title and d.remedy
    html = render_html(weak)
    banner = re.findall(r'<div class="banner warning"[^>]*><strong>([^<]*)</strong>',
                        _section(html, "verdict"))  # fmt: skip
    assert d.title in banner
    assert str(html_escape(d.remedy)) in _section(html, "checks")
    # more robust at a larger eps: not monotone
    low = ev.row("pgd", 0.03).robust
    (m,) = _found(_swap(ev, "pgd", 0.08, low + 1))["robust accuracy falls as eps grows"]
    assert "pgd" in m.title and "0.08" in m.title


def test_checks_not_applicable_and_clean_accuracy(ev: Evaluation) -> None:
    found = _found(ev)
    (na,) = found["certified bounds agree with the attacks"]
    assert na.level == "na"
    (na,) = found["robust accuracy vanishes at half the input range (L-inf)"]
    assert na.level == "na"
    bad = replace(ev, clean_accuracy=0.05)
    (d,) = _found(bad)["clean accuracy well above chance"]
    assert d.level == "error" and "5.0%" in d.title
    assert '<div class="banner error"' in render_html(bad)
    assert 'class="banner' not in render_html(replace(ev, n=5000, summaries=tuple(
        replace(s, ci_low=s.robust_accuracy, ci_high=s.robust_accuracy) for s in ev.summaries
    )))  # fmt: skip


# -- provenance ---------------------------------------------------------------------------------


def test_provenance_at_the_bottom_without_repetition(ev: Evaluation) -> None:
    model = {"name": "zoo-cnn", "source": "/cache/models/zoo-cnn-123.safetensors",
             "path": "/cache/models/zoo-cnn-123.safetensors", "weights_sha256": "f" * 64,
             "recipe": {"recipe": "standard", "epochs": 2}}  # fmt: skip
    run_config = {"model": "zoo-cnn", "eps": [0.0, 0.03, 0.08], "attacks": ["fgsm", "pgd"]}
    html = render_html(ev, {"model": model, "config": run_config, "wall_time": 12.5})
    body = _section(html, "provenance")
    assert html.count("/cache/models/zoo-cnn-123.safetensors") == 1
    assert "<details>" in body and "<summary>Configuration</summary>" in body
    config = json.loads(re.search(r"<pre><code>(.*?)</code></pre>", body, re.S).group(1)
                        .replace("&#34;", '"').replace("&quot;", '"'))  # fmt: skip
    assert config["eps"] == [0.0, 0.03, 0.08] and "threats" not in config["evaluation"]
    assert '<code class="cmd">advlab audit -n 16</code>' in body
    assert reproduce_command({"command": ["python", "-m", "x y"]}) == "python -m 'x y'"
    assert "abc123" in body and "wall time 12.5 s" in body
    # no raw configuration before the results
    assert html.index("<pre>") > html.index('id="summary"')


def test_sections_are_pluggable(ev: Evaluation) -> None:
    def extra_section(e: Evaluation, extra: dict[str, Any]) -> str:
        return fragment('<section id="x"><h2>{{ t }}</h2></section>', t=extra["x_title"])

    def nothing(e: Evaluation, extra: dict[str, Any]) -> str:
        return ""

    html = render_html(ev, {"x_title": "My <radius>"}, sections=[*SECTIONS, extra_section, nothing])
    assert '<section id="x"><h2>My &lt;radius&gt;</h2></section>' in html
    assert html.index('id="summary"') < html.index('id="x"')
    only = render_html(ev, sections=[extra_section], extra={"x_title": "x"})
    assert 'id="summary"' not in only and 'id="x"' in only


# -- JSON --------------------------------------------------------------------------------------


def test_json_report_parses_back(ev: Evaluation, tmp_path: Path) -> None:
    extra = {"model": {"name": "cnn", "sha256": "ab"}, "tensor": torch.tensor([1.5, 2.0]),
             "path": tmp_path, "nan": float("nan")}  # fmt: skip
    path = write_json_report(tmp_path / "r" / "report.json", ev, extra)
    text = path.read_text(encoding="utf-8")
    assert "NaN" not in text and "Infinity" not in text  # strict JSON
    data = json.loads(text)
    assert data["format"] == "advlab-report" and data["format_version"] == 2
    assert data["extra"] == {"model": {"name": "cnn", "sha256": "ab"}, "tensor": [1.5, 2.0],
                             "path": str(tmp_path), "nan": None}  # fmt: skip
    got = data["evaluation"]
    assert got["clean_accuracy"] == ev.clean_accuracy
    assert [t["eps"] for t in got["threats"]] == [0.0, 0.03, 0.08]
    assert [(r["attack"], r["eps"], r["robust_accuracy"]) for r in got["rows"]] == [
        (r.attack, r.eps, r.robust_accuracy) for r in ev.summaries
    ]
    assert got["provenance"]["torch"] == "9.9-test"
    zero = next(r for r in got["rows"] if r["eps"] == 0.0)
    assert zero["median_norm"] is None  # NaN (no successes) becomes null
    assert [e["index"] for e in got["examples"]] == [e.index for e in ev.examples]
    assert [e["index"] for e in got["failures"]] == [e.index for e in ev.failures]
    assert sorted(p.name for p in path.parent.iterdir()) == ["report.json"]  # no temp files left


def test_certified_json_holds_the_section_data(cert_ev: Evaluation, tmp_path: Path) -> None:
    path = write_json_report(tmp_path / "report.json", cert_ev, {"model": "cnn"})
    text = path.read_text(encoding="utf-8")
    assert "NaN" not in text and "Infinity" not in text
    data = json.loads(text)
    got = data["evaluation"]
    assert [(c["eps"], c["certified"], c["certified_accuracy"]) for c in got["certified"]] == [
        (c.eps, c.certified, c.certified_accuracy) for c in cert_ev.certified
    ]
    assert [b["index"] for b in got["bounds"]["linf"]] == list(range(16))
    for b, want in zip(got["bounds"]["linf"], cert_ev.bounds["linf"], strict=True):
        assert b["certified"] == want.certified and b["attack_norm"] == want.attack_norm
        assert b["gap"] == want.gap
    summary = data["certified_vs_attack"]["linf"]
    assert summary["unsound"] == [] and summary["correct"] == sum(
        b.correct for b in cert_ev.bounds["linf"]
    )
    assert [w["index"] for w in summary["widest"]] == [
        int(i) for i in re.findall(r"<tr><td>#(\d+)</td>", _section(render_html(cert_ev), "certified"))
    ]  # fmt: skip
    uncertified = replace(cert_ev, certified=(), bounds={})
    plain = json.loads(write_json_report(tmp_path / "p.json", uncertified).read_text())
    assert "certified_vs_attack" not in plain and plain["evaluation"]["certified"] == []


def test_unsound_bounds_are_flagged(cert_ev: Evaluation) -> None:
    bounds = list(cert_ev.bounds["linf"])
    j = next(i for i, b in enumerate(bounds) if b.correct and b.attack_norm is not None)
    bad = replace(bounds[j], certified=bounds[j].attack_norm + 0.5)
    bounds[j] = bad
    html = render_html(replace(cert_ev, bounds={"linf": tuple(bounds)}))
    warn = re.search(r'<p class="warn">(.*?)</p>', html, re.S)
    assert warn and f"#{bad.index}" in warn.group(1) and "1 sample(s)" in warn.group(1)
    assert '<div class="banner error"' in _section(html, "verdict")
    assert 'class="warn"' not in render_html(cert_ev)
