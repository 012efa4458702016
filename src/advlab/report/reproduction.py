"""The report of one reproduction (``advlab reproduce NAME``): the paper's figures beside the
measured ones with a pass/fail mark against each target, the detail tables and plots, the notes
and budget, and the provenance. Same page shell and stylesheet as the audit report, so it is one
self-contained offline file that prints cleanly."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

from markupsafe import Markup

from advlab.report.fmt import env, fmt_seconds, fragment
from advlab.report.sections import reproduce_command

_HEAD = """
<section class="verdict">
<h1>{{ title }}</h1>
<p class="lead">{{ paper }}</p>
<p class="sentence"><strong class="{{ 'pass' if passed else 'fail' if passed is false else '' }}">
{{ verdict }}</strong></p>
<p>{{ claim }}</p>
{% if quick %}<div class="banner">Quick run: smaller data and budget than the full run, and far
smaller than the paper's. Its targets check the direction of each effect, not its size; run
without <code>--quick</code> to compare with the paper's figures.</div>{% endif %}
{% for w in warnings %}<div class="banner error">{{ w }}</div>{% endfor %}
</section>
"""

_FIGURES = """
<section>
<h2>Paper beside measured</h2>
<table>
<thead><tr><th>figure</th><th class="num">paper</th><th class="num">measured</th>
<th class="num">target</th><th>mark</th></tr></thead>
<tbody>
{% for f in figures %}
<tr><th>{{ f.label }}{% if f.note %}<br><span class="note">{{ f.note }}</span>{% endif %}</th>
<td class="num">{{ f.paper }}</td><td class="num"><strong>{{ f.measured }}</strong></td>
<td class="num">{{ f.target }}</td><td class="{{ f.cls }}">{{ f.mark }}</td></tr>
{% endfor %}
</tbody></table>
</section>
"""

_TABLES = """
{% for t in tables %}
<section>
<h2>{{ t.title }}</h2>
<table><thead><tr>{% for c in t.columns %}<th>{{ c }}</th>{% endfor %}</tr></thead>
<tbody>{% for row in t.rows %}<tr>{% for cell in row %}<td>{{ cell }}</td>{% endfor %}</tr>
{% endfor %}</tbody></table>
</section>
{% endfor %}
{% for caption, uri in plots %}
<figure><img class="plot narrow" src="{{ uri }}" alt="{{ caption }}"><figcaption>{{ caption }}
</figcaption></figure>
{% endfor %}
"""

_NOTES = """
<section>
<h2>Budget and notes</h2>
<p>{{ budget }}</p>
{% if notes %}<ul>{% for n in notes %}<li>{{ n }}</li>{% endfor %}</ul>{% endif %}
</section>
<section>
<h2>Provenance</h2>
<dl class="meta">
{% for k, v in items %}<dt>{{ k }}</dt><dd>{{ v }}</dd>{% endfor %}
{% if command %}<dt>reproduce</dt><dd><code class="cmd">{{ command }}</code></dd>{% endif %}
</dl>
<details><summary>Parameters</summary><pre><code>{{ params }}</code></pre></details>
</section>
"""

MARKS = {True: "✓ met", False: "✗ missed", None: "for information"}


def verdict(passed: bool | None, figures: list[Mapping[str, Any]]) -> str:
    """``"Reproduced: 3 of 3 targets met"`` (or "Not reproduced", or no target)."""
    marks = [f["passed"] for f in figures if f["passed"] is not None]
    if not marks:
        return "No target to check: the figures are for information"
    met = sum(bool(m) for m in marks)
    head = "Reproduced" if passed else "Not reproduced"
    return f"{head}: {met} of {len(marks)} targets met"


def render_reproduction(payload: Mapping[str, Any], plots: Sequence[tuple[str, str]] = ()) -> str:
    """The HTML page of a reproduction's JSON ``payload`` (see
    :func:`advlab.reproduce.run_reproduction`) and its ``plots`` (caption, PNG data URI)."""
    import advlab
    from advlab.reproduce.base import format_value

    figs = payload["figures"]
    rows = [{
        "label": f["label"], "note": f["note"],
        "paper": format_value(f["paper"], f["unit"]),
        "measured": format_value(f["measured"], f["unit"]),
        "target": "" if f["target"] is None else f["target"]["text"],
        "mark": MARKS[f["passed"]],
        "cls": {True: "met", False: "missed", None: "note"}[f["passed"]],
    } for f in figs]  # fmt: skip
    prov = payload.get("provenance", {})
    items = [
        ("entry", f"{payload['name']}{' --quick' if payload['quick'] else ''}"),
        ("data", str(payload["params"].get("data", "?"))),
        ("wall time", fmt_seconds(payload.get("seconds"))),
        ("started", str(prov.get("started", "?"))),
        (
            "versions",
            " · ".join(
                f"{k} {prov[k]}" for k in ("advlab", "torch", "python", "cuda") if prov.get(k)
            ),
        ),
        ("revision", str(prov.get("git_revision") or "not a git checkout")),
        (
            "hardware",
            " · ".join(
                str(p)
                for p in (
                    prov.get("platform"),
                    f"{prov.get('cpu_count', '?')} CPUs "
                    f"({prov.get('torch_threads', '?')} torch threads)",
                    f"GPU {prov['gpu']}" if prov.get("gpu") else "no GPU",
                )
                if p
            ),
        ),
        ("output", str(payload.get("out", ""))),
    ]
    parts = [
        fragment(_HEAD, title=payload["title"], paper=payload["paper"], claim=payload["claim"],
                 passed=payload["passed"], verdict=verdict(payload["passed"], figs),
                 quick=payload["quick"], warnings=payload.get("warnings", [])),
        fragment(_FIGURES, figures=rows),
        fragment(_TABLES, tables=payload.get("tables", []),
                 plots=list(plots)),
        fragment(_NOTES, budget=payload["budget"], notes=payload.get("notes", []), items=items,
                 command=reproduce_command(prov),
                 params=json.dumps(payload["params"], indent=2, sort_keys=True)),
    ]  # fmt: skip
    return (
        env()
        .get_template("report.html")
        .render(
            title=f"advlab reproduction: {payload['name']}",
            sections=[Markup(p) for p in parts],
            version=advlab.__version__,
            generated=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        )
    )
