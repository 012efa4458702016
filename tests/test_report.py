"""HTML and JSON reports."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from advlab import ThreatModel
from advlab.evaluate import WORST_CASE, AttackConfig, EvalConfig, Evaluation, evaluate
from advlab.report import (
    SECTIONS,
    fragment,
    render_html,
    write_html_report,
    write_json_report,
)
from advlab.report.html import fmt_num, fmt_pct

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
    return evaluate(model, _toy(x, model), ["fgsm", AttackConfig("pgd", {"steps": 3})],
                    [ThreatModel("linf", e) for e in (0.0, 0.03, 0.08)],
                    EvalConfig(batch_size=8, keep_examples=4), provenance={"torch": "9.9-test",
                    "started": "2026-01-02T03:04:05+00:00"})  # fmt: skip


def _pngs(html: str) -> list[bytes]:
    return [
        base64.b64decode(m) for m in re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", html)
    ]


def test_html_report_is_one_self_contained_file(ev: Evaluation, tmp_path: Path) -> None:
    extra = {"model": "<b>cnn</b>", "run_id": "20260101-000000-abcdef", "title": "Audit & co"}
    path = write_html_report(tmp_path / "out" / "report.html", ev, extra)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["report.html"]
    html = path.read_text(encoding="utf-8")
    assert html.lstrip().lower().startswith("<!doctype html>")
    assert html.count('<img src="data:image/png;base64,') == 2
    pngs = _pngs(html)
    assert len(pngs) == 2  # the curve and the image grid
    assert all(p.startswith(b"\x89PNG\r\n\x1a\n") for p in pngs)
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


def test_html_report_has_the_table_values(ev: Evaluation, tmp_path: Path) -> None:
    html = write_html_report(tmp_path / "r.html", ev).read_text(encoding="utf-8")
    body = html[html.index('<section id="summary">') : html.index('<section id="curve">')]
    cells = re.findall(r"<td[^>]*>([^<]*)</td>", body)
    for r in ev.summaries:
        expected = [
            r.attack, fmt_num(r.eps), fmt_pct(r.robust_accuracy),
            f"[{fmt_pct(r.ci_low)}, {fmt_pct(r.ci_high)}]", fmt_pct(r.success_rate),
            fmt_num(r.median_norm), fmt_num(r.queries),
        ]  # fmt: skip
        start = next(
            i for i in range(0, len(cells), 8) if cells[i : i + 2] == [r.attack, fmt_num(r.eps)]
        )
        assert cells[start : start + 7] == expected
    assert len(cells) == 8 * len(ev.summaries)
    assert fmt_pct(ev.clean_accuracy) in html
    assert f"{100 * ev.row(WORST_CASE, 0.08).robust_accuracy:.1f}%" in body


def test_img_tag_carries_a_data_uri(ev: Evaluation) -> None:
    html = render_html(ev)
    srcs = re.findall(r'<img [^>]*src="([^"]+)"', html)
    assert len(srcs) == 2 and all(s.startswith("data:image/png;base64,") for s in srcs)


def test_sections_are_pluggable(ev: Evaluation) -> None:
    def certified(e: Evaluation, extra: dict[str, Any]) -> str:
        return fragment('<section id="cert"><h2>{{ t }}</h2></section>', t=extra["cert_title"])

    def nothing(e: Evaluation, extra: dict[str, Any]) -> str:
        return ""

    html = render_html(
        ev, {"cert_title": "Certified <radius>"}, sections=[*SECTIONS, certified, nothing]
    )
    assert '<section id="cert"><h2>Certified &lt;radius&gt;</h2></section>' in html
    assert html.index('id="summary"') < html.index('id="cert"')
    only = render_html(ev, sections=[certified], extra={"cert_title": "x"})
    assert 'id="summary"' not in only and 'id="cert"' in only


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
    assert len(_pngs(html)) == 1
    assert "not images" in html
    none = evaluate(model, _toy(x, model), "fgsm", ThreatModel("linf", 0.0))
    assert not none.examples
    assert "nothing to show" in render_html(none)


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
    assert sorted(p.name for p in path.parent.iterdir()) == ["report.json"]  # no temp files left


# -- certification ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cert_ev() -> Evaluation:
    model = make_cnn()
    x = torch.rand(16, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    return evaluate(model, _toy(x, model), ["fgsm", AttackConfig("pgd", {"steps": 3}), "deepfool"],
                    [ThreatModel("linf", e) for e in (0.0, 0.01, 0.03)],
                    EvalConfig(batch_size=8, keep_examples=4, certify="crown"),
                    provenance={"torch": "9.9-test"})  # fmt: skip


def _section(html: str, name: str) -> str:
    body = html[html.index(f'<section id="{name}">') :]
    return body[: body.index("</section>")]


def test_certified_section_appears_only_with_certified_data(
    ev: Evaluation, cert_ev: Evaluation
) -> None:
    plain = render_html(ev)
    assert 'id="certified"' not in plain and "certified (" not in plain
    html = render_html(cert_ev)
    assert html.index('id="curve"') < html.index('id="certified"') < html.index('id="examples"')
    section = _section(html, "certified")
    assert "Certified vs attack radius" in section and "crown, 15 bisection steps" in section
    assert len(_pngs(section)) == 1 and len(_pngs(html)) == 3  # curve, bounds, examples
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


def test_summary_table_has_certified_rows(cert_ev: Evaluation) -> None:
    body = _section(render_html(cert_ev), "summary")
    for c in cert_ev.certified:
        cells = [fmt_num(c.eps), fmt_pct(c.certified_accuracy),
                 f"[{fmt_pct(c.ci_low)}, {fmt_pct(c.ci_high)}]", "–", "–", "–"]  # fmt: skip
        found = re.findall(r'<tr class="certified[^"]*">\s*<td>certified \(crown\)</td>\s*'
                           + r"\s*".join(rf'<td[^>]*>{re.escape(v)}</td>' for v in cells), body)  # fmt: skip
        assert len(found) == 1, c
        worst = cert_ev.row(WORST_CASE, c.eps)
        assert c.certified_accuracy <= worst.robust_accuracy  # a lower bound under the attacks


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
    from dataclasses import replace

    uncertified = replace(cert_ev, certified=(), bounds={})
    plain = json.loads(write_json_report(tmp_path / "p.json", uncertified).read_text())
    assert "certified_vs_attack" not in plain and plain["evaluation"]["certified"] == []


def test_unsound_bounds_are_flagged(cert_ev: Evaluation) -> None:
    from dataclasses import replace

    bounds = list(cert_ev.bounds["linf"])
    j = next(i for i, b in enumerate(bounds) if b.correct and b.attack_norm is not None)
    bad = replace(bounds[j], certified=bounds[j].attack_norm + 0.5)
    bounds[j] = bad
    html = render_html(replace(cert_ev, bounds={"linf": tuple(bounds)}))
    warn = re.search(r'<p class="warn">(.*?)</p>', html, re.S)
    assert warn and f"#{bad.index}" in warn.group(1) and "1 sample(s)" in warn.group(1)
    assert 'class="warn"' not in render_html(cert_ev)
