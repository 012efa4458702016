"""The HTML report in a real browser: headless Chromium (Debian's ``chromium``, installed by
``.ci/run``) loads it with no console error, every image decodes, the headline and the tables
are there; a screenshot is saved under the test's tmp dir.

The page is loaded with ``--dump-dom`` after a probe script (added to a copy of the report, the
report itself has no script) has recorded what the page did: errors (script errors, resources
that failed to load, ``console.error``), each ``<img>``'s ``complete`` and ``naturalWidth``, and
what the headline and tables hold. Chromium's own console log (``--enable-logging=stderr``)
is checked too. Skipped only when no Chromium is installed (set ``ADVLAB_CHROMIUM`` to its path
to use another one).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch

from advlab import ThreatModel
from advlab.evaluate import WORST_CASE, AttackConfig, EvalConfig, Evaluation, evaluate
from advlab.report import write_html_report
from advlab.report.fmt import fmt_pct

from .conftest import Toy, make_cnn


def _chromium() -> str | None:
    env = os.environ.get("ADVLAB_CHROMIUM")
    if env:
        return env
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


CHROMIUM = _chromium()
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="no Chromium found (apt-get install chromium, or set ADVLAB_CHROMIUM); CI installs it",
)

FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--hide-scrollbars", "--mute-audio",
]  # fmt: skip

_PROBE_HEAD = """<script>
window.__errors = [];
window.addEventListener("error", function (e) {
  var t = e.target && e.target !== window ? (e.target.tagName || "?") + " failed to load"
                                          : String(e.message);
  window.__errors.push(t);
}, true);
var __ce = console.error;
console.error = function () { window.__errors.push("console.error: " + Array.from(arguments).join(" ")); __ce.apply(console, arguments); };
</script>"""

_PROBE_BODY = """<script>
window.addEventListener("load", function () {
  var imgs = Array.from(document.images).map(function (i) {
    return {alt: i.alt, complete: i.complete, width: i.naturalWidth, height: i.naturalHeight};
  });
  var tiles = Array.from(document.querySelectorAll("#verdict .tile .v")).map(function (t) { return t.textContent.trim(); });
  var grids = Array.from(document.querySelectorAll("table.grid")).map(function (t) {
    return Array.from(t.querySelectorAll("tbody tr")).map(function (r) {
      return [r.querySelector("th").textContent.trim()].concat(
        Array.from(r.querySelectorAll("td .v")).map(function (c) { return c.textContent.trim(); }));
    });
  });
  var verdict = document.querySelector("#verdict");
  var out = {errors: window.__errors, images: imgs, tiles: tiles, grids: grids,
             sections: Array.from(document.querySelectorAll("section")).map(function (s) { return s.id; }),
             verdict_bottom: verdict ? verdict.getBoundingClientRect().bottom : -1,
             caption_px: Array.from(document.querySelectorAll("figcaption, .tiles3 span")).map(function (e) {
               return parseFloat(getComputedStyle(e).fontSize); })};
  var pre = document.createElement("pre");
  pre.id = "probe";
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""


def _run(args: list[str], tmp: Path) -> subprocess.CompletedProcess[str]:
    profile = tmp / f"profile-{len(list(tmp.glob('profile-*')))}"
    profile.mkdir()
    assert CHROMIUM is not None
    return subprocess.run(
        [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def probe(html_path: Path, tmp: Path) -> tuple[dict[str, Any], list[str]]:
    """Load a copy of the page with the probe in Chromium: what the probe saw, and the console
    errors Chromium logged."""
    html = html_path.read_text(encoding="utf-8")
    probed = html.replace("<head>", "<head>" + _PROBE_HEAD, 1).replace(
        "</body>", _PROBE_BODY + "</body>", 1
    )
    page = tmp / f"probe-{html_path.name}"
    page.write_text(probed, encoding="utf-8")
    res = _run(["--enable-logging=stderr", "--v=0", "--virtual-time-budget=5000",
                "--window-size=1280,900", "--dump-dom", page.as_uri()], tmp)  # fmt: skip
    m = re.search(r'<pre id="probe">(.*?)</pre>', res.stdout, re.S)
    assert m, f"the probe did not run (chromium exit {res.returncode}): {res.stderr[-2000:]}"
    import html as html_mod

    seen = json.loads(html_mod.unescape(m.group(1)))
    # The report has no script, so any console message at all comes from the browser
    # complaining about the page (the probe writes nothing to the console).
    console = [line for line in res.stderr.splitlines() if ":CONSOLE" in line]
    return seen, console


def problems(seen: dict[str, Any], console: list[str]) -> list[str]:
    """What is wrong with a page, from :func:`probe` (empty for a good page)."""
    out = [f"page error: {e}" for e in seen["errors"]] + [f"console: {c}" for c in console]
    for img in seen["images"]:
        if not img["complete"] or img["width"] <= 0:
            out.append(f"image not loaded: {img['alt']!r}")
    return out


@pytest.fixture(scope="module")
def ev() -> Evaluation:
    model = make_cnn()
    x = torch.rand(16, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        y = model(x).argmax(dim=1)
    y[::4] = (y[::4] + 1) % 10
    return evaluate(model, Toy("toy-images", x, y, 10),
                    ["fgsm", AttackConfig("pgd", {"steps": 3}), "deepfool"],
                    [ThreatModel("linf", e) for e in (0.0, 0.03, 0.08)],
                    EvalConfig(batch_size=8, keep_examples=4), provenance={"torch": "9.9-test"})  # fmt: skip


def test_report_renders_in_chromium(ev: Evaluation, tmp_path: Path) -> None:
    history = [{"epoch": i, "train_accuracy": 0.5 + 0.1 * i} for i in range(1, 4)]
    extra = {
        "title": "browser test",
        "model": {"name": "cnn", "extra": {"training": {"history": history}}},
        "transfer": {"matrix": [[1.0, 0.4], [0.3, 1.0]], "sources": ["a", "b"],
                     "targets": ["a", "b"]},
    }  # fmt: skip
    path = write_html_report(tmp_path / "report.html", ev, extra)
    seen, console = probe(path, tmp_path)
    assert problems(seen, console) == []
    # every image decoded, and there are the ones the data calls for
    assert len(seen["images"]) >= 6
    assert all(i["width"] > 0 and i["height"] > 0 for i in seen["images"])
    for section in ("verdict", "summary", "curve", "minimal", "per-class", "transfer",
                    "examples", "training", "checks", "provenance"):  # fmt: skip
        assert section in seen["sections"]
    assert seen["sections"][0] == "verdict"
    # the headline shows the stored numbers, in the browser's text
    worst = [s for s in ev.curve(WORST_CASE) if s.eps > 0]
    assert seen["tiles"] == [fmt_pct(ev.clean_accuracy)] + [
        fmt_pct(s.robust_accuracy) for s in worst
    ]
    # the attacks x eps table: a row per attack and the worst case, a cell per positive eps
    (grid,) = seen["grids"]
    assert [r[0] for r in grid] == ["FGSM", "PGD-3", "DeepFool", "worst case"]
    for row, name in zip(grid, ["fgsm", "pgd", "deepfool", WORST_CASE], strict=True):
        assert row[1:] == [fmt_pct(s.robust_accuracy) for s in ev.curve(name) if s.eps > 0]
    # the verdict fits in the first screen, and captions are readable
    assert 0 < seen["verdict_bottom"] <= 900
    assert seen["caption_px"] and min(seen["caption_px"]) >= 12
    shot = tmp_path / "report.png"
    res = _run([f"--screenshot={shot}", "--window-size=1280,2400", path.as_uri()], tmp_path)
    assert shot.exists(), res.stderr[-2000:]
    head = shot.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", head[16:24]) == (1280, 2400)


def test_the_probe_catches_a_broken_page(ev: Evaluation, tmp_path: Path) -> None:
    # The checker itself must fail on a page with a broken image and a console error.
    path = write_html_report(tmp_path / "good.html", ev)
    html = path.read_text(encoding="utf-8")
    bad = tmp_path / "bad.html"
    bad.write_text(
        html.replace("</body>", '<img src="data:image/png;base64,AAAA" alt="broken">'
                     "<script>console.error('boom'); console.warn('careful')</script></body>"),
        encoding="utf-8",
    )  # fmt: skip
    found = problems(*probe(bad, tmp_path))
    assert any("broken" in p for p in found)
    assert any("boom" in p for p in found)
    assert any("console:" in p and "careful" in p for p in found)  # from Chromium's own log


def test_reproduction_report_renders_in_chromium(fake_reproduction: str, tmp_path: Path) -> None:
    from advlab.reproduce import run_reproduction

    run = run_reproduction(fake_reproduction, overrides={"value": 0.4}, out=tmp_path / "r")
    seen, console = probe(run.files["html"], tmp_path)
    assert problems(seen, console) == []
    assert [i["alt"] for i in seen["images"]] == ["a plot"]
