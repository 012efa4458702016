"""The report's sections: each a function ``section(evaluation, extra) -> html`` that returns
``""`` when its data is absent, so the page shows only what the run measured.

:data:`SECTIONS` lists them in page order: the verdict (headline numbers, one plain sentence,
warnings), the attacks x eps table, the plots (robust accuracy against eps; minimal perturbation
norms; per-class robust accuracy; success against queries; certified against attack radius;
transferability; training curves), the image grids, the checks and the provenance. A later
capability adds a section by appending a function to the list it passes to
:func:`~advlab.report.write_html_report`; no other section changes.

``extra`` keys read here: ``title``, ``model`` and ``dataset`` (a name, or a dict with ``name``
and details: the model's metadata as saved by advlab, the dataset's meta), ``run_id``,
``config`` (the run's own configuration), ``wall_time`` (seconds), ``class_names``,
``example_confidence`` (``{index: (clean, adversarial)}`` softmax probabilities of the
predicted classes), ``query_price`` (dollars per query), ``transfer`` (a transfer matrix, see
:func:`render_transfer_matrix`) and ``targeted_grid`` (see :func:`targeted_section`).
"""

from __future__ import annotations

import json
import math
import os
import shlex
import statistics
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from advlab.evaluate.aggregate import Evaluation
from advlab.evaluate.certification import bounds_summary
from advlab.evaluate.plan import WORST_CASE
from advlab.report import plots
from advlab.report.diagnostics import diagnose
from advlab.report.fmt import (
    NORM_NAMES,
    attack_label,
    fmt_in_unit,
    fmt_num,
    fragment,
    image_data_uri,
    time_unit,
)
from advlab.results import Example, Summary
from advlab.serialize import plain
from advlab.threat import lp_norms

Section = Callable[[Evaluation, Mapping[str, Any]], str]
"""``section(evaluation, extra) -> html``: one part of the report (``""`` to skip)."""


def _eps_label(norm: str, eps: float) -> str:
    return f"{NORM_NAMES.get(norm, norm)} ε = {fmt_num(eps)}"


def _is_image(ev: Evaluation) -> bool:
    if not ev.examples:
        return False
    shape = tuple(ev.examples[0].x.shape)
    return len(shape) == 2 or (len(shape) == 3 and shape[0] in (1, 3))


def _named(value: Any, default: str) -> tuple[str, dict[str, Any]]:
    """A display name and the details of an ``extra["model"]``-like value (a name or a dict)."""
    if isinstance(value, Mapping):
        return str(value.get("name") or default), dict(value)
    return (str(value) if value else default), {}


def class_names(ev: Evaluation, extra: Mapping[str, Any]) -> list[str]:
    """Class names from ``extra["class_names"]`` or the dataset's meta, else ``0 .. C-1``."""
    names = extra.get("class_names")
    if not isinstance(names, Sequence) or isinstance(names, str):
        ds = extra.get("dataset")
        names = ds.get("classes") if isinstance(ds, Mapping) else None
    if isinstance(names, Sequence) and not isinstance(names, str) and len(names) == ev.num_classes:
        return [str(c) for c in names]
    return [str(i) for i in range(ev.num_classes)]


def _label(i: int, names: Sequence[str]) -> str:
    return names[i] if 0 <= i < len(names) else str(i)


# -- verdict ----------------------------------------------------------------------------------


def headline(ev: Evaluation) -> str:
    """One plain-language sentence from the stored numbers: the attack that flips the most
    correctly classified samples at the example eps (the middle radius of the grid), and how far
    the worst case takes robust accuracy there. ``""`` without a positive eps."""
    norm = ev.norm
    positive = [e for e in ev.eps_grid(norm) if e > 0]
    if not positive or not ev.attacks:
        return ""
    eps = ev.example_eps if ev.example_eps in positive else positive[len(positive) // 2]
    rows = [ev.row(a.name, eps, norm) for a in ev.attacks if ev.curve(a.name, norm)]
    if not rows:
        return ""
    best = max(rows, key=lambda s: s.success_rate if math.isfinite(s.success_rate) else -1.0)
    correct = sum(r.clean_pred == r.label for r in ev.records[("clean", norm, 0.0)])
    things = "images" if _is_image(ev) else "samples"
    worst = ev.row(WORST_CASE, eps, norm)
    rate = best.success_rate if math.isfinite(best.success_rate) else 0.0
    flipped = round(rate * correct)
    text = (
        f"{attack_label(best.attack, best.params)} at {_eps_label(norm, eps)} flips "
        f"{100 * rate:.0f}% of correctly classified {things} ({flipped} of {correct})"
    )
    if len(rows) > 1:
        text += (
            f"; with {'both' if len(rows) == 2 else f'all {len(rows)}'} attacks, robust "
            f"accuracy falls from "
            f"{100 * ev.clean_accuracy:.1f}% to {100 * worst.robust_accuracy:.1f}%."
        )
    else:
        text += (
            f": robust accuracy falls from {100 * ev.clean_accuracy:.1f}% to "
            f"{100 * worst.robust_accuracy:.1f}%."
        )
    return text


_VERDICT = """
<section id="verdict" class="verdict">
<h1>{{ title }}</h1>
<p class="lead">{% if not named %}{{ model }} on {{ dataset }}: {% endif %}{{ n | num }} test samples, {{ threat }}; attacks
{% for a in attacks %}{{ a }}{% if not loop.last %}, {% endif %}{% endfor %}.</p>
{% for g in groups %}
<div class="tiles-label">{{ g.label }}</div>
<div class="tiles">
  {% if loop.first %}
  <div class="tile clean"><div class="k">clean</div>
    <div class="v">{{ clean | pct }}</div><div class="ci">CI {{ clean_lo | interval(clean_hi) }}</div></div>
  {% endif %}
  {% for t in g.tiles %}
  <div class="tile robust"><div class="k">{{ t.label }}</div>
    <div class="v">{{ t.acc | pct }}</div><div class="ci">CI {{ t.lo | interval(t.hi) }}</div>
    {% if t.cert is not none %}<div class="cert">certified ≥ {{ t.cert | pct }}</div>{% endif %}</div>
  {% endfor %}
</div>
{% endfor %}
<p class="note">CI: Wilson 95% interval. Robust accuracy: the share of all samples still classified correctly under the
worst case of the attacks (per sample: robust only if every attack failed). It is an upper bound:
a stronger attack can only lower it.{% if certified %} The certified accuracy is a lower bound.{% endif %}</p>
{% if sentence %}<p class="sentence">{{ sentence }}</p>{% endif %}
{% for d in warnings %}
<div class="banner {{ d.level }}" role="alert"><strong>{{ d.title }}</strong> {{ d.detail }}
<span class="remedy">What to do: {{ d.remedy }}</span></div>
{% endfor %}
</section>
"""


def verdict_section(ev: Evaluation, extra: Mapping[str, Any]) -> str:
    """Headline: clean accuracy and the worst-case robust accuracy at each eps, with intervals,
    in large type; one plain sentence; the diagnostic warnings in a coloured banner."""
    groups = []
    for norm in ev.norms:
        cert = {c.eps: c.certified_accuracy for c in ev.certified if c.norm == norm}
        tiles = [
            {"label": f"ε = {fmt_num(s.eps)}", "acc": s.robust_accuracy, "lo": s.ci_low,
             "hi": s.ci_high, "cert": cert.get(s.eps)}
            for s in ev.curve(WORST_CASE, norm) if s.eps > 0
        ]  # fmt: skip
        names = ", ".join(attack_label(a.name, a.params) for a in ev.attacks
                          if ev.curve(a.name, norm))  # fmt: skip
        label = (f"Accuracy clean, and robust accuracy under {NORM_NAMES.get(norm, norm)} "
                 f"attacks ({'worst case over ' if ',' in names else ''}{names})")  # fmt: skip
        groups.append({"tiles": tiles, "label": label})
    warnings = [d for _, ds in diagnose(ev) for d in ds if d.level in ("warning", "error")]
    model, _ = _named(extra.get("model"), str(ev.config.get("model_class", "the model")))
    dataset, _ = _named(extra.get("dataset"), ev.dataset)
    lo, hi = ev.threats[0].lower, ev.threats[0].upper
    title = str(extra.get("title") or "Adversarial robustness report")
    return fragment(
        _VERDICT,
        title=title, named=model in title and dataset in title,
        model=model, dataset=dataset, n=ev.n,
        threat=" or ".join(f"{NORM_NAMES.get(n, n)} perturbations" for n in ev.norms)
        + f", inputs in [{fmt_num(lo)}, {fmt_num(hi)}]",
        attacks=[attack_label(a.name, a.params) for a in ev.attacks],
        groups=groups, clean=ev.clean_accuracy, clean_lo=ev.clean_ci[0],
        clean_hi=ev.clean_ci[1], certified=bool(ev.certified), sentence=headline(ev),
        warnings=sorted(warnings, key=lambda d: d.level != "error"),
    )  # fmt: skip


# -- tables ------------------------------------------------------------------------------------

_SUMMARY = """
<section id="summary">
<h2>Robust accuracy by attack and eps</h2>
{% for t in tables %}
<table class="grid">
<caption>{{ t.norm }} perturbations. Each cell: robust accuracy over all {{ n | num }} samples
(clean accuracy {{ clean | pct }}) and its Wilson 95% interval{% if t.mixed_n %}, and the
samples it counts{% endif %}.</caption>
<thead><tr><th>attack</th>{% for e in t.eps %}<th class="num">ε = {{ e | num }}</th>{% endfor %}</tr></thead>
<tbody>
{% for r in t.rows %}
<tr class="{{ r.kind }}"><th scope="row">{{ r.label }}</th>
{% for c in r.cells %}<td class="num"{% if c.title %} title="{{ c.title }}"{% endif %}>{% if c.acc is not none %}<span class="v">{{ c.acc | pct }}</span><span class="ci">{{ c.lo | interval(c.hi) }}</span>{% if t.mixed_n %}<span class="ci">n = {{ c.n | num }}</span>{% endif %}{% else %}–{% endif %}</td>
{% endfor %}
</tr>
{% endfor %}
</tbody>
</table>
{% else %}
<p>The grid has no positive eps: only the clean accuracy, {{ clean | pct }}, was measured.</p>
{% endfor %}
<p class="note">A sample is robust when it is classified correctly both clean and under attack;
the <em>worst case</em> counts it only if every attack failed on it.{% if certified %} The
certified row counts samples classified correctly whose certified radius is at least ε: a lower
bound on robust accuracy, as the attacks give an upper bound.{% endif %} Hover over a cell for
the attack's success rate (the share of correctly classified samples it flipped).</p>
{% if cost %}
<h3>What the attacks cost</h3>
<table class="cost">
<thead><tr><th>attack</th><th>parameters</th><th>runs</th><th class="num">queries</th>
<th class="num">queries per sample and run</th><th class="num">wall time ({{ unit }})</th></tr></thead>
<tbody>
{% for c in cost %}
<tr><th scope="row">{{ c.label }}</th><td><code>{{ c.params }}</code></td><td>{{ c.runs }}</td>
<td class="num">{{ c.queries | num }}</td><td class="num">{{ c.per_sample }}</td><td class="num">{{ c.wall }}</td></tr>
{% endfor %}
</tbody>
</table>
<p class="note">Queries are images sent to the model, counted by the oracle (a forward pass with
or without its backward pass, plus one verification query per attacked sample).</p>
{% endif %}
</section>
"""


def _cell(s: Summary) -> dict[str, Any]:
    rate = s.success_rate
    title = f"{s.robust} of {s.n} robust"
    if math.isfinite(rate):
        title += f"; success rate {100 * rate:.1f}%"
    return {"acc": s.robust_accuracy, "lo": s.ci_low, "hi": s.ci_high, "n": s.n, "title": title}


def summary_table(ev: Evaluation, norm: str) -> dict[str, Any] | None:
    """The attacks x eps table of one norm (positive eps only: at eps = 0 every row is the clean
    accuracy): one row per attack, the worst case, and the certified accuracy where computed."""
    eps = [e for e in ev.eps_grid(norm) if e > 0]
    if not eps:
        return None
    rows: list[dict[str, Any]] = []
    for a in [*ev.attacks, None]:
        name = a.name if a is not None else WORST_CASE
        curve = {s.eps: s for s in ev.curve(name, norm)}
        if not curve:
            continue  # an attack that does not support this norm
        rows.append({
            "label": attack_label(a.name, a.params) if a is not None else "worst case",
            "kind": "attack" if a is not None else "worst",
            "cells": [_cell(curve[e]) if e in curve else {"acc": None} for e in eps],
        })  # fmt: skip
    cert = {c.eps: c for c in ev.certified if c.norm == norm}
    if cert:
        method = next(iter(cert.values())).method
        rows.append({
            "label": f"certified ({method})", "kind": "certified",
            "cells": [{"acc": cert[e].certified_accuracy, "lo": cert[e].ci_low,
                       "hi": cert[e].ci_high, "n": cert[e].n,
                       "title": f"{cert[e].certified} of {cert[e].n} certified"}
                      if e in cert else {"acc": None} for e in eps],
        })  # fmt: skip
    ns = {c["n"] for r in rows for c in r["cells"] if c.get("acc") is not None}
    return {"norm": NORM_NAMES.get(norm, norm), "eps": eps, "rows": rows,
            "mixed_n": ns != {ev.n}}  # fmt: skip


def cost_rows(ev: Evaluation) -> tuple[list[dict[str, Any]], str]:
    """Per attack: its runs, queries and wall time in one unit for the whole column."""
    raw = []
    for a in ev.attacks:
        rows = [s for s in ev.summaries if s.attack == a.name and s.eps > 0]
        if not rows:
            continue
        if a.spec.minimal:
            by_norm = {s.norm: s for s in rows}  # one run per norm, read at every eps
            runs = len(by_norm)
            queries = sum(s.queries for s in by_norm.values())
            wall = sum(s.wall_time for s in by_norm.values())
            what = f"once per norm ({runs}), read at every ε"
        else:
            runs = len(rows)
            queries = sum(s.queries for s in rows)
            wall = sum(s.wall_time for s in rows)
            what = f"at each ε ({runs})"
        attacked = sum(r.clean_pred == r.label for r in ev.records[("clean", ev.norm, 0.0)])
        per = queries / (attacked * runs) if attacked and runs else math.nan
        raw.append((a, what, queries, per, wall))
    unit, scale = time_unit([w for *_, w in raw])
    out = [
        {"label": attack_label(a.name, a.params),
         "params": ", ".join(f"{k}={v}" for k, v in a.params.items()) or "defaults",
         "runs": what, "queries": q, "per_sample": fmt_num(p, 3), "wall": fmt_in_unit(w, scale)}
        for a, what, q, p, w in raw
    ]  # fmt: skip
    return out, unit


def summary_section(ev: Evaluation, extra: Mapping[str, Any]) -> str:
    """The attacks x eps table (robust accuracy, interval; worst case; certified) and the cost
    table (runs, queries, wall time in one unit)."""
    tables = [t for t in (summary_table(ev, n) for n in ev.norms) if t is not None]
    cost, unit = cost_rows(ev)
    return fragment(_SUMMARY, tables=tables, n=ev.n, clean=ev.clean_accuracy,
                    certified=bool(ev.certified), cost=cost, unit=unit)  # fmt: skip


# -- plots -------------------------------------------------------------------------------------

_CURVE = """
<section id="curve">
<h2>Robust accuracy against eps</h2>
{% for norm, uri in plots %}
<img src="{{ uri }}" class="plot" alt="robust accuracy (%) against {{ norm }} eps, one line per attack over the worst-case band">
{% endfor %}
<p class="note">One line per attack; the wide grey band underneath is the worst case over the
attacks (with its 95% interval shaded), so it hides no attack's line. The dotted line is clean
accuracy.{% if certified %} The dash-dotted line is the certified accuracy: the true robust
accuracy lies between it and the worst case.{% endif %}</p>
</section>
"""


def curve_section(ev: Evaluation, extra: Mapping[str, Any]) -> str:
    """Robust accuracy (%) against eps per attack, with the worst-case envelope; only with a
    positive eps."""
    norms = [n for n in ev.norms if any(e > 0 for e in ev.eps_grid(n))]
    if not norms:
        return ""
    return fragment(_CURVE, plots=[(n, plots.robustness_plot(ev, n)) for n in norms],
                    certified=bool(ev.certified))  # fmt: skip


_NORMS = """
<section id="minimal">
<h2>Minimal perturbations</h2>
<p>Minimal-perturbation attacks search each sample's smallest adversarial perturbation, with no
ε bound; their sizes show how far each correctly classified sample is from a wrong prediction
(an upper bound on its true distance).</p>
{% for part in parts %}
<table class="facts">
<thead><tr><th>attack</th><th class="num">flipped (of {{ part.correct | num }} correct)</th>
<th class="num">10th percentile</th><th class="num">median</th><th class="num">mean</th>
<th class="num">90th percentile</th></tr></thead>
<tbody>
{% for r in part.rows %}
<tr><th scope="row">{{ r.label }}</th><td class="num">{{ r.flipped | num }}</td><td class="num">{{ r.p10 | num }}</td>
<td class="num">{{ r.median | num }}</td><td class="num">{{ r.mean | num }}</td><td class="num">{{ r.p90 | num }}</td></tr>
{% endfor %}
</tbody>
</table>
<img src="{{ part.uri }}" class="plot" alt="histogram and cumulative distribution of minimal {{ part.norm }} perturbation norms">
<p class="note">{{ part.norm }} norms. Left: how many samples need a perturbation of each size.
Right: the share of correctly classified samples flipped within r; the grey lines mark the ε of
the grid.</p>
{% endfor %}
</section>
"""


def _quantile(v: Sequence[float], q: float) -> float | None:
    if not v:
        return None
    return float(torch.tensor(list(v), dtype=torch.float64).quantile(q))


def norms_section(ev: Evaluation, extra: Mapping[str, Any]) -> str:
    """Histogram, CDF and statistics of the perturbations that minimal attacks found; only when
    a minimal attack ran."""
    parts = []
    for norm in ev.norms:
        per: dict[str, list[float]] = {}
        for a in ev.attacks:
            recs = ev.cell_records.get((a.name, norm, math.inf))
            if a.spec.minimal and recs is not None:
                per[attack_label(a.name, a.params)] = plots.flipped_norms(recs)
        if not per:
            continue
        correct = sum(r.clean_pred == r.label for r in ev.records[("clean", norm, 0.0)])
        rows = [
            {"label": k, "flipped": len(v), "p10": _quantile(v, 0.1), "median": _quantile(v, 0.5),
             "mean": statistics.fmean(v) if v else None, "p90": _quantile(v, 0.9)}
            for k, v in per.items()
        ]  # fmt: skip
        parts.append({"norm": NORM_NAMES.get(norm, norm), "rows": rows, "correct": correct,
                      "uri": plots.norms_plot(per, correct, norm, ev.eps_grid(norm))})  # fmt: skip
    return fragment(_NORMS, parts=parts) if parts else ""


_PER_CLASS = """
<section id="per-class">
<h2>Robust accuracy per class</h2>
<img src="{{ uri }}" class="plot narrow" alt="heat map of worst-case robust accuracy per class and eps">
<p class="note">{{ norm }} perturbations. Each row is one true class: the share of its samples
classified correctly clean (first column) and under the worst case of the attacks at each ε, in
percent. Small classes have wide intervals.</p>
</section>
"""


def per_class_accuracy(
    ev: Evaluation, norm: str
) -> tuple[list[float], list[list[float]], list[int]]:
    """Per class: columns ``[clean, eps_1, ...]`` (positive eps) of the worst case's robust
    accuracy among the class's samples, and the class sizes.

    Returns:
        ``(eps, acc, counts)`` with ``acc[c][j]`` NaN for a class without samples.
    """
    eps = [e for e in ev.eps_grid(norm) if e > 0]
    keys = [("clean", norm, 0.0)] + [(WORST_CASE, norm, e) for e in eps]
    counts = [0] * ev.num_classes
    for r in ev.records[keys[0]]:
        if 0 <= r.label < ev.num_classes:
            counts[r.label] += 1
    acc = [[math.nan] * len(keys) for _ in range(ev.num_classes)]
    for j, key in enumerate(keys):
        ok = [0] * ev.num_classes
        for r in ev.records[key]:
            if 0 <= r.label < ev.num_classes and r.robust:
                ok[r.label] += 1
        for c in range(ev.num_classes):
            if counts[c]:
                acc[c][j] = ok[c] / counts[c]
    return eps, acc, counts


def per_class_section(ev: Evaluation, extra: Mapping[str, Any]) -> str:
    """A heat map of robust accuracy per class and eps (first norm); only with a positive eps
    and at most 30 classes."""
    norm = ev.norm
    if not any(e > 0 for e in ev.eps_grid(norm)) or not 1 < ev.num_classes <= 30:
        return ""
    eps, acc, counts = per_class_accuracy(ev, norm)
    names = class_names(ev, extra)
    uri = plots.per_class_plot(names, ["clean", *(fmt_num(e) for e in eps)], acc, counts)
    return fragment(_PER_CLASS, uri=uri, norm=NORM_NAMES.get(norm, norm))


_QUERIES = """
<section id="queries">
<h2>Success against queries</h2>
<img src="{{ uri }}" class="plot" alt="success rate against the number of queries per sample">
<p class="note">For attacks whose number of queries varies from sample to sample: the share of
correctly classified samples flipped within a budget of q queries per sample, one line per ε.
{% if price %}The top axis prices a query at ${{ price }}.{% endif %}</p>
</section>
"""


def query_curves(ev: Evaluation) -> dict[str, dict[float, list[int]]]:
    """Per attack whose queries vary among the samples it flipped: per positive eps (first
    norm), the queries of each flipped, correctly classified sample."""
    out: dict[str, dict[float, list[int]]] = {}
    for a in ev.attacks:
        by_eps: dict[float, list[int]] = {}
        for s in ev.curve(a.name, ev.norm):
            if s.eps > 0:
                recs = ev.records[(a.name, ev.norm, s.eps)]
                by_eps[s.eps] = [r.queries for r in recs if r.clean_pred == r.label and r.success]
        seen = {q for qs in by_eps.values() for q in qs}
        if len(seen) > 1:
            out[attack_label(a.name, a.params)] = by_eps
    return out


def queries_section(ev: Evaluation, extra: Mapping[str, Any]) -> str:
    """Success rate against query budget, for attacks whose queries vary (black-box attacks,
    DeepFool); with ``extra["query_price"]`` also in dollars."""
    curves = query_curves(ev)
    if not curves:
        return ""
    correct = sum(r.clean_pred == r.label for r in ev.records[("clean", ev.norm, 0.0)])
    price = extra.get("query_price")
    price = float(price) if isinstance(price, int | float) and price > 0 else None
    return fragment(_QUERIES, uri=plots.queries_plot(curves, correct, price), price=price)


_CERTIFIED = """
<section id="certified">
<h2>Certified vs attack radius</h2>
<p>Each correctly classified sample's smallest adversarial perturbation lies between two bounds:
its <strong>certified radius</strong> ({{ method }}, {{ steps }} bisection steps), a lower bound
(no perturbation within it changes the prediction), and the <strong>smallest adversarial
example the attacks found</strong>, an upper bound (the perturbation of a minimal attack, or of a
bounded attack at any eps of the grid, whichever is smallest). The gap between them is what a
tighter certifier or a stronger attack could still close. A sample no attack broke has no upper
bound.</p>
{% for part in parts %}
<h3>{{ part.norm }}</h3>
<table class="facts">
<tr><th>correctly classified</th><td class="num">{{ part.correct | num }} of {{ part.n | num }}</td>
    <th>certified at a radius &gt; 0</th><td class="num">{{ part.certified_positive | num }}</td></tr>
<tr><th>broken by an attack</th><td class="num">{{ part.broken | num }}</td>
    <th>median certified radius</th><td class="num">{{ part.median_certified | num }}</td></tr>
<tr><th>median attack radius</th><td class="num">{{ part.median_attack_norm | num }}</td>
    <th>median gap</th><td class="num">{{ part.median_gap | num }}</td></tr>
</table>
{% if part.unsound %}
<p class="warn"><strong>{{ part.unsound | length }} sample(s) have a certified radius above the
norm of an adversarial example found for them</strong>: the certifier (or the attack's
verification) is wrong on them: {% for b in part.unsound %}#{{ b.index }} (certified
{{ b.certified | num }}, {{ b.attack }} {{ b.attack_norm | num }}){% if not loop.last %}, {% endif %}{% endfor %}.</p>
{% endif %}
{% if part.uri %}
<img src="{{ part.uri }}" class="plot" alt="per-sample certified radius and smallest adversarial perturbation in {{ part.norm }}">
<p class="note">Left: each correctly classified sample (sorted by its upper bound; samples no
attack broke at the right), its certified radius and its smallest adversarial example, joined by
the gap. Right: the share of correctly classified samples whose bound is at most r; the true
minimal perturbation's curve lies between the two.</p>
{% endif %}
{% if part.widest %}
<h4>Widest gaps</h4>
<table>
<thead><tr><th>sample</th><th>label</th><th class="num">certified radius</th>
<th class="num">attack radius</th><th>attack</th><th class="num">gap</th></tr></thead>
<tbody>
{% for b in part.widest %}
<tr><td>#{{ b.index }}</td><td>{{ b.label }}</td><td class="num">{{ b.certified | num }}</td>
<td class="num">{{ b.attack_norm | num }}</td><td>{{ b.attack }}</td><td class="num">{{ b.gap | num }}</td></tr>
{% endfor %}
</tbody>
</table>
{% endif %}
{% endfor %}
</section>
"""


def certified_section(ev: Evaluation, extra: Mapping[str, Any]) -> str:
    """Certified radius against the smallest adversarial example, per sample; empty when the
    evaluation was not certified."""
    if not ev.bounds or not ev.certified:
        return ""
    method = ev.certified[0].method
    parts = []
    for norm, bounds in ev.bounds.items():
        part = bounds_summary(bounds, norm)
        part["uri"] = plots.bounds_plot(bounds, norm, method) if part["correct"] else None
        parts.append(part)
    return fragment(_CERTIFIED, parts=parts, method=method,
                    steps=ev.certified[0].params.get("steps", "?"))  # fmt: skip


_TRANSFER = """
<section id="transfer">
<h2>Transferability</h2>
<img src="{{ uri }}" class="plot narrow" alt="transfer matrix: {{ metric }} of source models' adversarial examples on target models">
<p class="note">Rows: the model the adversarial examples were crafted on; columns: the model
they were sent to; each cell: {{ metric }} in percent.{% if note %} {{ note }}{% endif %}</p>
</section>
"""


def render_transfer_matrix(
    matrix: Sequence[Sequence[float]],
    sources: Sequence[str],
    targets: Sequence[str],
    *,
    metric: str = "success rate",
    note: str = "",
) -> str:
    """The transferability section: a heat map of ``matrix[i][j]``, the ``metric`` (a fraction
    in ``[0, 1]``) of adversarial examples crafted on ``sources[i]`` when sent to ``targets[j]``.

    Raises:
        ValueError: the matrix is not ``len(sources) x len(targets)`` or holds values outside
            ``[0, 1]``.
    """
    rows = [[float(v) for v in row] for row in matrix]
    if len(rows) != len(sources) or any(len(r) != len(targets) for r in rows):
        raise ValueError(
            f"the transfer matrix must have one row per source ({len(sources)}) and one column "
            f"per target ({len(targets)}); got {len(rows)} rows of lengths "
            f"{sorted({len(r) for r in rows})}"
        )
    if any(not (0.0 <= v <= 1.0) for r in rows for v in r if math.isfinite(v)):
        raise ValueError("transfer matrix values are fractions in [0, 1]")
    uri = plots.transfer_plot(rows, [str(s) for s in sources], [str(t) for t in targets], metric)
    return fragment(_TRANSFER, uri=uri, metric=metric, note=note)


def transfer_section(ev: Evaluation, extra: Mapping[str, Any]) -> str:
    """The transfer heat map, when ``extra["transfer"]`` holds a matrix (or a path to a JSON
    file) ``{"matrix": [[...]], "sources": [...], "targets": [...], "metric": ..., "note":
    ...}``; the JSON of ``advlab transfer-matrix`` (one ``families`` list for both axes, cells
    the targets' misclassification rates) is read as it is."""
    t = extra.get("transfer")
    if isinstance(t, str | os.PathLike):
        t = json.loads(Path(t).read_text(encoding="utf-8"))
    if not isinstance(t, Mapping) or not t.get("matrix"):
        return ""
    sources = t.get("sources") or t.get("families") or []  # transfer-matrix: one list
    targets = t.get("targets") or t.get("families") or []
    metric = t.get("metric") or ("misclassification rate" if "families" in t else "success rate")
    return render_transfer_matrix(t["matrix"], sources, targets, metric=str(metric),
                                  note=str(t.get("note") or ""))  # fmt: skip


_TRAINING = """
<section id="training">
<h2>Training curves</h2>
<img src="{{ uri }}" class="plot narrow" alt="accuracy (%) per training epoch">
<p class="note">How the model was trained: recipe <code>{{ recipe }}</code>{% if params %}
({% for k, v in params.items() %}{{ k }}={{ v }}{% if not loop.last %}, {% endif %}{% endfor %}){% endif %},
{{ epochs }} epochs. Training accuracy is on the inputs whose logits the recipe reports (the
adversarial ones for <code>pgd</code>, <code>fast</code> and <code>msd</code>); validation
accuracy, clean and under PGD{% if threat %} ({{ threat }}){% endif %}, is on training samples
held out from training.{% if stopped %} <strong>Stopped early:</strong> {{ stopped }}; the saved
weights are those of the epoch it names, not the last point plotted.{% endif %}</p>
</section>
"""


def training_history(extra: Mapping[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The per-epoch rows saved with a trained model (``advlab train``, the audit's zoo
    models), and its recipe."""
    model = extra.get("model")
    if not isinstance(model, Mapping):
        return [], {}
    training = (model.get("extra") or {}).get("training") or {}
    rows = [r for r in training.get("history") or [] if isinstance(r, Mapping)]
    recipe = model.get("recipe") if isinstance(model.get("recipe"), Mapping) else {}
    return [dict(r) for r in rows], {**dict(recipe or {}), "stopped": training.get("stopped")}


def training_section(ev: Evaluation, extra: Mapping[str, Any]) -> str:
    """Training curves (accuracy per epoch) of a trained model; empty when the model file
    carries no training history."""
    rows, recipe = training_history(extra)
    rows = [r for r in rows if "epoch" in r]
    if not rows:
        return ""
    threat = next((r.get("val_threat") for r in rows if r.get("val_threat")), None)
    return fragment(
        _TRAINING, uri=plots.training_plot(rows), recipe=recipe.get("recipe", "?"),
        params=recipe.get("recipe_params") or {}, epochs=len(rows), threat=threat,
        stopped=recipe.get("stopped"),
    )  # fmt: skip


# -- images ------------------------------------------------------------------------------------

_EXAMPLES = """
<section id="examples">
<h2>Adversarial examples</h2>
{% if groups %}
{% for g in groups %}
<h3>{{ g.title }}</h3>
<div class="cards">
{% for c in g.cards %}
<figure class="card">
  <div class="tiles3">
    <div><img src="{{ c.clean }}" class="px" alt="clean input #{{ c.index }}"><span>clean</span></div>
    <div><img src="{{ c.adv }}" class="px" alt="adversarial input #{{ c.index }}"><span>{{ 'adversarial' if c.flipped else 'best attempt' }}</span></div>
    <div><img src="{{ c.delta }}" class="px" alt="perturbation of #{{ c.index }}, amplified"><span>perturbation ×{{ c.amp }}</span></div>
  </div>
  <figcaption>#{{ c.index }} · label <b>{{ c.label }}</b> · {{ c.attack }}, norm {{ c.norm }}<br>
  clean: <b>{{ c.clean_pred }}</b>{% if c.clean_conf %} ({{ c.clean_conf }}){% endif %} →
  attacked: <b class="{{ 'flip' if c.flipped else 'held' }}">{{ c.adv_pred }}</b>{% if c.adv_conf %} ({{ c.adv_conf }}){% endif %}</figcaption>
</figure>
{% endfor %}
</div>
<p class="note">{{ g.note }}</p>
{% endfor %}
<p class="note">Each card: the clean input, the attacked input, and the perturbation (attacked
minus clean) amplified by the factor shown{{ ', red where the input grew brighter and blue where it grew darker' if gray else ', centred at grey' }}.
{% if conf %}In brackets: the model's softmax probability of the class it predicts.{% endif %}</p>
{% else %}
<p class="note">{{ reason }}</p>
{% endif %}
</section>
"""


def _tile(t: torch.Tensor, lo: float, hi: float) -> str:
    t = t.double()
    if t.dim() == 3 and t.shape[0] == 3:
        return image_data_uri(t.permute(1, 2, 0).numpy(), vmin=lo, vmax=hi)
    return image_data_uri((t[0] if t.dim() == 3 else t).numpy(), vmin=lo, vmax=hi)


def _delta_tile(d: torch.Tensor) -> tuple[str, float]:
    """The perturbation amplified to fill the colour range, and the factor."""
    d = d.double()
    top = max(float(d.abs().max()), 1e-12)
    if d.dim() == 3 and d.shape[0] == 3:
        return image_data_uri((0.5 + 0.5 * d / top).permute(1, 2, 0).numpy()), 0.5 / top
    return image_data_uri((d[0] if d.dim() == 3 else d).numpy(), cmap="RdBu_r", vmin=-top,
                          vmax=top), 0.5 / top  # fmt: skip


def _conf(p: Any) -> str:
    return f"{100 * float(p):.0f}%" if isinstance(p, int | float) and math.isfinite(p) else ""


def _card(e: Example, names: Sequence[str], conf: Mapping[Any, Any], lo: float,
          hi: float) -> dict[str, Any]:  # fmt: skip
    delta, amp = _delta_tile(e.x_adv - e.x)
    c = conf.get(e.index) or conf.get(str(e.index)) or (None, None)
    return {
        "index": e.index, "clean": _tile(e.x, lo, hi), "adv": _tile(e.x_adv, lo, hi),
        "delta": delta, "amp": f"{amp:.3g}", "label": _label(e.label, names),
        "clean_pred": _label(e.clean_pred, names), "adv_pred": _label(e.adv_pred, names),
        "flipped": e.adv_pred != e.label, "clean_conf": _conf(c[0]), "adv_conf": _conf(c[1]),
        "attack": attack_label(e.attack),
        "norm": fmt_num(float(lp_norms((e.x_adv - e.x)[None].double(), e.norm)[0]), 3),
    }  # fmt: skip


def examples_section(ev: Evaluation, extra: Mapping[str, Any]) -> str:
    """The image grids at the example eps: samples the attacks flipped and samples they did not
    (with the strongest bounded attack's best attempt), each as clean input, attacked input and
    amplified perturbation, with the label, both predictions and (where given) their
    confidences."""
    ex, held = ev.examples, ev.failures
    if not ex and not held:
        if not any(e > 0 for e in ev.eps_grid(ev.norm)):
            return ""
        reason = "No sample was flipped at the middle eps of the grid, so there is nothing to show."
        return fragment(_EXAMPLES, groups=[], reason=reason, conf=False, gray=True)
    first = (ex or held)[0]
    shape = tuple(first.x.shape)
    if not (len(shape) == 2 or (len(shape) == 3 and shape[0] in (1, 3))):
        reason = (
            f"The inputs have shape {shape}, not images with 1 or 3 channels; "
            "examples are listed in the JSON report."
        )
        return fragment(_EXAMPLES, groups=[], reason=reason, conf=False, gray=True)
    names = class_names(ev, extra)
    conf = extra.get("example_confidence")
    conf = conf if isinstance(conf, Mapping) else {}
    lo, hi = ev.threats[0].lower, ev.threats[0].upper
    eps = _eps_label(ev.norm, ev.example_eps or 0.0)
    groups = []
    if ex:
        groups.append({
            "title": f"Flipped at {eps}", "cards": [_card(e, names, conf, lo, hi) for e in ex],
            "note": f"The first {len(ex)} samples (by dataset index) that the worst case of the "
                    "attacks flips, each with the attack that flipped it.",
        })  # fmt: skip
    if held:
        groups.append({
            "title": f"Withstood every attack at {eps}",
            "cards": [_card(e, names, conf, lo, hi) for e in held],
            "note": f"The first {len(held)} samples no attack flips, with the best attempt of "
                    f"{attack_label(held[0].attack)}, the bounded attack that flipped the most "
                    "samples at this eps.",
        })  # fmt: skip
    return fragment(_EXAMPLES, groups=groups, reason="", conf=bool(conf), gray=len(shape) == 2
                    or shape[0] == 1)  # fmt: skip


_TARGETED = """
<section id="targeted">
<h2>Targeted examples: source by target</h2>
<table class="tgrid">
<thead><tr><th>source \\ target</th>{% for t in targets %}<th>{{ t }}</th>{% endfor %}</tr></thead>
<tbody>
{% for row in rows %}
<tr><th scope="row">{{ row.name }}</th>
{% for c in row.cells %}<td class="{{ c.kind }}"><img src="{{ c.uri }}" class="px small" alt="{{ c.alt }}"><span>{{ c.caption }}</span></td>{% endfor %}
</tr>
{% endfor %}
</tbody>
</table>
<p class="note">As in Carlini &amp; Wagner's figures: row i starts from an input of class i, and
column j holds the adversarial example {{ attack }} crafted to be classified as j (the diagonal
is the input itself). Under each image: the model's prediction; a cell is marked where the
attack missed its target.</p>
</section>
"""


def targeted_section(ev: Evaluation, extra: Mapping[str, Any]) -> str:
    """The C&W-style source x target grid, when ``extra["targeted_grid"]`` holds ``{"x": (C,
    *shape) one input per source class, "x_adv": (C, C, *shape), "pred": (C, C) predictions,
    "attack": name}`` (classes named as elsewhere in the report)."""
    g = extra.get("targeted_grid")
    if not isinstance(g, Mapping):
        return ""
    x, x_adv = torch.as_tensor(g["x"]), torch.as_tensor(g["x_adv"])
    pred = torch.as_tensor(g["pred"])
    k = x.shape[0]
    if x_adv.shape[:2] != (k, k) or pred.shape != (k, k):
        raise ValueError(
            f"targeted_grid needs x_adv of shape ({k}, {k}, ...) and pred ({k}, {k}) for {k} "
            f"source inputs; got {tuple(x_adv.shape)} and {tuple(pred.shape)}"
        )
    names = class_names(ev, extra)
    lo, hi = ev.threats[0].lower, ev.threats[0].upper
    rows = []
    for i in range(k):
        cells = []
        for j in range(k):
            img = x[i] if i == j else x_adv[i, j]
            p = int(pred[i, j])
            kind = "src" if i == j else ("hit" if p == j else "miss")
            cells.append({"uri": _tile(img, lo, hi), "caption": _label(p, names), "kind": kind,
                          "alt": f"source {_label(i, names)}, target {_label(j, names)}"})  # fmt: skip
        rows.append({"name": _label(i, names), "cells": cells})
    return fragment(_TARGETED, rows=rows, targets=[_label(j, names) for j in range(k)],
                    attack=attack_label(str(g.get("attack") or "the attack")))  # fmt: skip


# -- checks and provenance ---------------------------------------------------------------------

_CHECKS = """
<section id="checks">
<h2>Checks</h2>
<p>The evaluation checks its own numbers for signs that the attacks were too weak or that the
numbers are too uncertain to use.</p>
<ul class="checks">
{% for what, found in checks %}
{% if found %}
{% for d in found %}
{% if d.level == "na" %}
<li class="na"><span class="mark">–</span> {{ what }}: not applicable, {{ d.detail }}.</li>
{% else %}
<li class="{{ d.level }}"><span class="mark">{{ marks[d.level] }}</span> <strong>{{ d.title }}</strong>
{{ d.detail }} <span class="remedy">What to do: {{ d.remedy }}</span></li>
{% endif %}
{% endfor %}
{% else %}
<li class="ok"><span class="mark">✓</span> {{ what }}</li>
{% endif %}
{% endfor %}
</ul>
</section>
"""


def checks_section(ev: Evaluation, extra: Mapping[str, Any]) -> str:
    """Every check (:mod:`advlab.report.diagnostics`): what passed, and each finding in plain
    words with its remedy."""
    return fragment(_CHECKS, checks=diagnose(ev),
                    marks={"error": "✗", "warning": "!", "info": "i"})  # fmt: skip


_PROVENANCE = """
<section id="provenance">
<h2>Provenance</h2>
<dl class="meta">
{% for k, v in items %}<dt>{{ k }}</dt><dd>{{ v }}</dd>
{% endfor %}
{% if command %}<dt>reproduce</dt><dd><code class="cmd">{{ command }}</code>{% if where %}<br><span class="note">{{ where }}</span>{% endif %}</dd>{% endif %}
</dl>
<details>
<summary>Configuration</summary>
<pre><code>{{ config }}</code></pre>
</details>
</section>
"""


def reproduce_command(provenance: Mapping[str, Any]) -> str:
    """The command line that produced the run (``advlab ...`` when it was the advlab CLI)."""
    argv = provenance.get("command")
    if not isinstance(argv, Sequence) or isinstance(argv, str) or not argv:
        return ""
    argv = [str(a) for a in argv]
    if Path(argv[0]).name == "advlab":
        argv = ["advlab", *argv[1:]]
    return shlex.join(argv)


def _model_facts(model: Mapping[str, Any]) -> list[str]:
    facts = []
    if model.get("arch"):
        facts.append(f"architecture {model['arch']}")
    if model.get("source"):
        facts.append(str(model["source"]))
    if model.get("weights_sha256"):
        facts.append(f"sha256 {str(model['weights_sha256'])[:16]}…")
    recipe = model.get("recipe")
    if isinstance(recipe, Mapping) and recipe.get("recipe"):
        facts.append(
            f"trained with recipe {recipe['recipe']}, {recipe.get('epochs', '?')} epochs, "
            f"{recipe.get('optimizer', '?')} lr {recipe.get('lr', '?')}, seed {recipe.get('seed', '?')}"
        )
    if isinstance(model.get("clean_accuracy"), int | float):
        facts.append(f"test accuracy {100 * model['clean_accuracy']:.1f}% when trained")
    return facts


def provenance_section(ev: Evaluation, extra: Mapping[str, Any]) -> str:
    """Model, data, run, versions, revision, seed, hardware and wall time (from the provenance
    captured when the work ran), the command that reproduces the run, and the configuration in
    a collapsed block."""
    env = ev.provenance
    model, minfo = _named(extra.get("model"), str(ev.config.get("model_class", "model")))
    dataset, dinfo = _named(extra.get("dataset"), ev.dataset)
    items: list[tuple[str, str]] = []
    items.append(("model", " · ".join([model, *_model_facts(minfo)])))
    data = [dataset, f"{ev.n:,} samples evaluated, {ev.num_classes} classes"]
    for k in ("description", "split", "source"):
        if dinfo.get(k):
            data.append(str(dinfo[k]))
    if dinfo.get("split_sha256"):
        data.append(f"split sha256 {str(dinfo['split_sha256'])[:16]}…")
    items.append(("data", " · ".join(data)))
    run = ev.run_id or extra.get("run_id")
    started = extra.get("date") or env.get("started")
    wall = extra.get("wall_time")
    items.append(("run", " · ".join(p for p in (
        f"id {run}" if run else "not stored",
        f"started {started}" if started else "",
        f"wall time {wall:.1f} s" if isinstance(wall, int | float) else "",
    ) if p)))  # fmt: skip
    items.append(("seed", str(ev.config.get("seed", env.get("seed", "?")))))
    items.append(("versions", " · ".join(
        f"{k} {env[k]}" for k in ("advlab", "torch", "numpy", "python", "cuda") if env.get(k)
    ) or "not recorded"))  # fmt: skip
    if env.get("git_revision"):
        items.append(("revision", str(env["git_revision"])))
    hw = [str(env["platform"])] if env.get("platform") else []
    if env.get("cpu_count"):
        hw.append(f"{env['cpu_count']} CPUs ({env.get('torch_threads', '?')} torch threads)")
    hw.append(f"GPU {env['gpu']}" if env.get("gpu") else "no GPU")
    items.append(("hardware", " · ".join(hw)))
    command = reproduce_command(env)
    where = ""
    if command:
        where = "run at revision " + str(env.get("git_revision") or "?")[:12]
        if env.get("cwd"):
            where += f" from {env['cwd']}"
    run_config = extra.get("config")
    if isinstance(run_config, Mapping):
        shown = {k: v for k, v in ev.config.items()
                 if k not in ("threats", "attacks", "dataset", "n", "seed", "num_classes")}  # fmt: skip
        config: dict[str, Any] = {**dict(run_config), "evaluation": shown}
    else:
        config = {k: v for k, v in ev.config.items() if k != "threats"}
        config["eps"] = {n: ev.eps_grid(n) for n in ev.norms}
    return fragment(_PROVENANCE, items=items, command=command, where=where,
                    config=json.dumps(plain(config), indent=2, sort_keys=True))  # fmt: skip


#: The default sections, in page order.
SECTIONS: list[Section] = [
    verdict_section, summary_section, curve_section, norms_section, per_class_section,
    queries_section, certified_section, transfer_section, examples_section, targeted_section,
    training_section, checks_section, provenance_section,
]  # fmt: skip
