"""Compare two stored runs, and export a run's per-sample records.

:func:`compare_runs` puts the rows of two runs side by side, matched by ``(attack, norm, eps)``:
robust accuracy in each, the difference ``B - A`` with a 95% interval, and the samples that
flipped (robust in A and broken in B, and the reverse). Every number is read from the store's
per-sample records (:func:`row_records`), never recomputed with a model.

**Intervals.** When both runs evaluated the same samples (same dataset, same indices, same
labels) the robust indicators are *paired*, and the interval for the difference of the two
proportions is Newcombe's score interval for paired data (method 10 of Newcombe 1998b: Wilson
intervals of the two marginal proportions, combined with the phi correlation of the 2x2 table).
It uses the discordant pairs, so it is much narrower than an unpaired interval when the runs
agree on most samples. Otherwise (other datasets or sample sets) the runs are independent
samples and the interval is Newcombe's hybrid score interval for independent proportions
(method 10 of Newcombe 1998a, "square and add" of the two Wilson intervals).

References:
    Newcombe 1998a, "Interval estimation for the difference between independent proportions:
    comparison of eleven methods", Statistics in Medicine 17, 873-890.
    Newcombe 1998b, "Improved confidence intervals for the difference between binomial
    proportions based on paired data", Statistics in Medicine 17, 2635-2650.
"""

from __future__ import annotations

import csv
import difflib
import io
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from advlab.errors import ConfigError, UnknownNameError
from advlab.evaluate.aggregate import _at_eps
from advlab.evaluate.plan import CERTIFIED, CLEAN, WORST_CASE
from advlab.evaluate.stats import wilson_interval
from advlab.fileio import atomic_write, atomic_write_json, atomic_write_text
from advlab.results import SampleRecord, Summary, worst_case_records
from advlab.serialize import canonical_json, plain, pretty_json
from advlab.store.sqlite import RunInfo, RunStore
from advlab.threat import ThreatModel

RowKey = tuple[str, str, float]

#: How many flipped sample indices a comparison lists per row.
FIRST_FLIPS = 10


# -- intervals ----------------------------------------------------------------------------------


def newcombe_unpaired(
    k_a: int, n_a: int, k_b: int, n_b: int, confidence: float = 0.95
) -> tuple[float, float]:
    """Newcombe's hybrid score interval for ``p_b - p_a`` of two independent proportions.

    With Wilson intervals ``(l_a, u_a)`` and ``(l_b, u_b)`` and ``d = p_b - p_a``:
    ``(d - sqrt((p_b - l_b)^2 + (u_a - p_a)^2), d + sqrt((u_b - p_b)^2 + (p_a - l_a)^2))``.

    Args:
        k_a, n_a: successes and trials of A; k_b, n_b: of B (``n >= 1``).
        confidence: coverage, in ``(0, 1)``.

    Returns:
        ``(low, high)``, within ``[-1, 1]``.

    Reference:
        Newcombe 1998a, method 10.
    """
    if n_a < 1 or n_b < 1:
        raise ConfigError("a difference of proportions needs at least one sample on each side")
    pa, pb = k_a / n_a, k_b / n_b
    la, ua = wilson_interval(k_a, n_a, confidence)
    lb, ub = wilson_interval(k_b, n_b, confidence)
    d = pb - pa
    lo = d - math.sqrt((pb - lb) ** 2 + (ua - pa) ** 2)
    hi = d + math.sqrt((ub - pb) ** 2 + (pa - la) ** 2)
    return max(-1.0, lo), min(1.0, hi)


def newcombe_paired(
    both: int, a_only: int, b_only: int, neither: int, confidence: float = 0.95
) -> tuple[float, float]:
    """Newcombe's score interval for ``p_b - p_a`` of two proportions measured on the same
    samples.

    Args:
        both: samples positive (robust) in both; a_only: in A only; b_only: in B only;
            neither: in neither.
        confidence: coverage, in ``(0, 1)``.

    Returns:
        ``(low, high)`` for ``p_b - p_a = (b_only - a_only) / n``, within ``[-1, 1]``.

    Reference:
        Newcombe 1998b, method 10 (no continuity correction): Wilson limits of the marginal
        proportions, and ``phi = (both * neither - a_only * b_only) / sqrt(product of the
        four margins)`` (0 where a margin is 0).
    """
    n = both + a_only + b_only + neither
    if n < 1:
        raise ConfigError("a paired difference needs at least one sample")
    ka, kb = both + a_only, both + b_only
    pa, pb = ka / n, kb / n
    la, ua = wilson_interval(ka, n, confidence)
    lb, ub = wilson_interval(kb, n, confidence)
    margins = (both + a_only) * (b_only + neither) * (both + b_only) * (a_only + neither)
    phi = (both * neither - a_only * b_only) / math.sqrt(margins) if margins else 0.0
    d = pb - pa
    dlb, dub, dla, dua = pb - lb, ub - pb, pa - la, ua - pa
    lo = d - math.sqrt(max(0.0, dlb**2 - 2 * phi * dlb * dua + dua**2))
    hi = d + math.sqrt(max(0.0, dub**2 - 2 * phi * dub * dla + dla**2))
    return max(-1.0, lo), min(1.0, hi)


# -- reading a run ------------------------------------------------------------------------------


def resolve_run_id(store: RunStore, text: str) -> str:
    """The run ``text`` names: an exact id or a unique prefix of one.

    Raises:
        UnknownNameError: naming the closest ids (or saying the prefix is ambiguous).
    """
    ids = store.run_ids()
    if text in ids:
        return text
    hits = [i for i in ids if i.startswith(text)] if text else []
    if len(hits) == 1:
        return hits[0]
    if len(hits) > 1:
        raise UnknownNameError(
            f"run {text!r} is ambiguous in {store.path}: it starts {len(hits)} ids "
            f"({', '.join(hits[:4])}{', ...' if len(hits) > 4 else ''}); give more of the id"
        )
    close = difflib.get_close_matches(text, ids, n=3, cutoff=0.5)
    hint = f"; closest: {', '.join(close)}" if close else ""
    raise UnknownNameError(
        f"no run {text!r} in {store.path}{hint}; `advlab runs list` shows the runs"
    )


def run_dataset(run: RunInfo) -> str | None:
    """The dataset a run evaluated, as its summary or configuration names it."""
    for src in (run.summary or {}, run.config):
        for key in ("dataset", "data"):
            v = src.get(key)
            if isinstance(v, str) and v:
                return v
    return None


def row_records(store: RunStore, run_id: str) -> dict[RowKey, list[SampleRecord]]:
    """The per-sample records of every stored row of a run, by ``(attack, norm, eps)``, derived
    from the stored cells as :func:`advlab.evaluate.aggregate.aggregate` derives them: the
    clean pass at ``eps = 0``, an attack's own cell, a minimal attack's ``eps = inf`` cell read
    at the row's eps, and the per-sample worst case over the attacks of the row's threat model.
    Rows whose records are not stored (runs that keep only summaries) are left out; the clean
    pass is under ``("clean", norm, 0.0)``."""
    cells = {c.key: eid for eid, c in store.cells(run_id)}
    cache: dict[int, list[SampleRecord]] = {}

    def recs(key: RowKey) -> list[SampleRecord] | None:
        eid = cells.get(key)
        if eid is None:
            return None
        if eid not in cache:
            cache[eid] = store.records(eid)
        return cache[eid]

    clean = next((recs(k) for k in cells if k[0] == CLEAN), None)
    out: dict[RowKey, list[SampleRecord]] = {}
    if clean is not None:
        out[(CLEAN, next(k for k in cells if k[0] == CLEAN)[1], 0.0)] = clean
    for s in store.summaries(run_id):
        key = (s.attack, s.norm, float(s.eps))
        got: list[SampleRecord] | None = None
        if s.attack == WORST_CASE:
            names = (s.params or {}).get("attacks") or []
            parts = [out.get((a, s.norm, key[2])) for a in names]
            if parts and all(p is not None for p in parts):
                try:
                    got, _ = worst_case_records([p for p in parts if p is not None])
                except ValueError:
                    got = None
        elif key[2] == 0.0 and clean is not None:
            got = [replace(r, queries=0) for r in clean]
        elif (own := recs(key)) is not None:
            got = own
        elif (minimal := recs((s.attack, s.norm, math.inf))) is not None:
            got = _at_eps(minimal, ThreatModel(s.norm, key[2]))
        if got is not None:
            out[key] = got
    return out


@dataclass(frozen=True)
class StoredRun:
    """A run as a comparison reads it: its row, summaries and per-row records."""

    info: RunInfo
    summaries: dict[RowKey, Summary]
    records: dict[RowKey, list[SampleRecord]]
    #: per ``("certified", norm, eps)``: the certifier's parameters and, per sample (index,
    #: certified at eps: correct clean and certified radius >= eps), where the run certified
    certified: dict[RowKey, tuple[dict[str, Any], list[tuple[int, bool]]]] = field(
        default_factory=dict
    )

    @property
    def dataset(self) -> str | None:
        return run_dataset(self.info)

    @property
    def clean(self) -> list[SampleRecord] | None:
        return next((v for k, v in self.records.items() if k[0] == CLEAN), None)


def load_run(store: RunStore, run_id: str, *, allow_incomplete: bool = False) -> StoredRun:
    """Read a run for :func:`compare_runs`.

    Raises:
        UnknownNameError: no such run (the closest ids are named).
        ConfigError: the run is not complete (unless ``allow_incomplete``), or has no rows.
    """
    rid = resolve_run_id(store, run_id)
    info = store.get_run(rid)
    if info.status != "complete" and not allow_incomplete:
        why = f" ({info.error.splitlines()[0][:120]})" if info.error else ""
        raise ConfigError(
            f"run {rid} is {info.status}, not complete{why}: its rows may be partial; re-run "
            "its command to finish it, or pass --allow-incomplete to compare what is stored"
        )
    summaries = {(s.attack, s.norm, float(s.eps)): s for s in store.summaries(rid)}
    if not summaries:
        raise ConfigError(
            f"run {rid} ({info.kind}, {info.status}) has no result rows to compare; compare "
            "runs of `advlab audit` or `advlab run`"
        )
    certified: dict[RowKey, tuple[dict[str, Any], list[tuple[int, bool]]]] = {}
    for eid, cell in store.cells(rid):
        if cell.attack != CERTIFIED:
            continue
        recs = store.records(eid)
        for eps in sorted({k[2] for k in summaries if k[1] == cell.norm and k[2] > 0}):
            # as aggregate counts it: correct clean and a certified radius of at least eps
            hit = [(r.index, r.clean_pred == r.label and (r.certified or 0.0) >= eps)
                   for r in recs]  # fmt: skip
            certified[(CERTIFIED, cell.norm, eps)] = (dict(cell.params), hit)
    return StoredRun(info, summaries, row_records(store, rid), certified)


# -- comparing ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RowComparison:
    """One ``(attack, norm, eps)`` row of a comparison.

    Attributes:
        attack, norm, eps: the row (``"clean"`` at eps 0 for clean accuracy).
        a, b: the row's numbers in each run: ``robust``, ``n``, ``accuracy``, ``ci``,
            ``params``; ``None`` where the row is only in the other run.
        diff: ``B - A`` robust accuracy, and ``ci`` its 95% interval (``None`` when one side
            is missing).
        method: ``"paired"`` or ``"unpaired"`` (which Newcombe interval).
        broken_in_b: samples robust in A and broken in B (count and first indices);
            fixed_in_b: the reverse. Paired rows only.
        params_differ: the attack ran with other parameters in the two runs.
    """

    attack: str
    norm: str
    eps: float
    a: dict[str, Any] | None
    b: dict[str, Any] | None
    diff: float | None = None
    ci: tuple[float, float] | None = None
    method: str | None = None
    broken_in_b: dict[str, Any] | None = None
    fixed_in_b: dict[str, Any] | None = None
    params_differ: bool = False

    @property
    def only(self) -> str | None:
        """``"A"`` or ``"B"`` for a row in one run only, else ``None``."""
        return "A" if self.b is None else "B" if self.a is None else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "attack": self.attack, "norm": self.norm, "eps": self.eps, "a": self.a, "b": self.b,
            "only_in": self.only, "diff": self.diff,
            "ci": list(self.ci) if self.ci is not None else None, "method": self.method,
            "broken_in_b": self.broken_in_b, "fixed_in_b": self.fixed_in_b,
            "params_differ": self.params_differ,
        }  # fmt: skip


@dataclass(frozen=True)
class Comparison:
    """Two runs side by side (module docstring).

    Attributes:
        a, b: the two runs' stored rows (``b`` is compared against ``a``: ``diff = B - A``).
        paired: the runs evaluated the same samples, so the intervals are paired and flips
            are listed; ``unpaired_reason`` says why not otherwise.
        rows: the clean row first, then every row of either run, by norm, eps and attack.
        warnings: things the reader should know (other datasets, incomplete runs, ...).
    """

    a: StoredRun
    b: StoredRun
    paired: bool
    unpaired_reason: str | None
    rows: tuple[RowComparison, ...]
    warnings: tuple[str, ...] = field(default_factory=tuple)

    def row(self, attack: str, eps: float, norm: str | None = None) -> RowComparison:
        for r in self.rows:
            if r.attack == attack and r.eps == float(eps) and (norm is None or r.norm == norm):
                return r
        raise KeyError(f"no row {attack} eps={eps} in the comparison")

    def to_dict(self) -> dict[str, Any]:
        def side(r: StoredRun) -> dict[str, Any]:
            i = r.info
            return {"id": i.id, "kind": i.kind, "status": i.status, "created": i.created,
                    "dataset": r.dataset, "n": len(r.clean) if r.clean is not None else None,
                    "model": i.config.get("model"), "config": i.config,
                    "provenance": i.provenance}  # fmt: skip

        return plain({
            "format": "advlab-compare", "format_version": 1, "a": side(self.a),
            "b": side(self.b), "paired": self.paired, "unpaired_reason": self.unpaired_reason,
            "interval": ("Newcombe 1998b paired score interval (method 10)" if self.paired
                         else "Newcombe 1998a hybrid score interval (method 10)"),
            "confidence": 0.95, "warnings": list(self.warnings),
            "rows": [r.to_dict() for r in self.rows],
        })  # fmt: skip


def _side(s: Summary | None) -> dict[str, Any] | None:
    if s is None:
        return None
    return {"robust": s.robust, "n": s.n, "accuracy": s.robust_accuracy,
            "ci": [s.ci_low, s.ci_high], "params": dict(s.params)}  # fmt: skip


def _pairing(a: StoredRun, b: StoredRun) -> str | None:
    """Why the two runs' samples cannot be paired, or ``None`` when they can."""
    if a.dataset != b.dataset:
        return f"the runs evaluated different datasets (A: {a.dataset}, B: {b.dataset})"
    ca, cb = a.clean, b.clean
    if ca is None or cb is None:
        return "a run holds no per-sample records"
    ia, ib = [r.index for r in ca], [r.index for r in cb]
    if ia != ib:
        return (f"the runs evaluated different samples (A: {len(ia)}, B: {len(ib)}, "
                f"{len(set(ia) & set(ib))} in common)")  # fmt: skip
    if any(x.label != y.label for x, y in zip(ca, cb, strict=True)):
        return "the runs' labels differ on the same indices (different data files?)"
    return None


def _indicators(
    run: StoredRun, key: RowKey
) -> tuple[list[tuple[int, bool]] | None, dict[str, Any] | None]:
    """Per sample ``(index, positive)`` of one row (``None`` without per-sample records), and
    the row's numbers (``None`` when the run has no such row). Positive means correct for
    the clean row, robust for an attack row, certified for a certified row."""
    if key[0] == CLEAN:
        recs = run.clean
        if recs is None:
            return None, None
        ind = [(r.index, r.clean_pred == r.label) for r in recs]
        params: dict[str, Any] = {}
    elif key[0] == CERTIFIED:
        if key not in run.certified:
            return None, None
        params, ind = run.certified[key]
    else:
        side = _side(run.summaries.get(key))
        rows = run.records.get(key)
        return (None if rows is None else [(r.index, r.robust) for r in rows]), side
    k, n = sum(x for _, x in ind), len(ind)
    return ind, {"robust": k, "n": n, "accuracy": k / n if n else math.nan,
                 "ci": list(wilson_interval(k, n)), "params": params}  # fmt: skip


def compare_runs(
    store: RunStore, run_a: str, run_b: str, *, allow_incomplete: bool = False
) -> Comparison:
    """Compare run ``run_b`` against ``run_a`` (module docstring).

    Args:
        store: the run store holding both.
        run_a, run_b: run ids, or unique prefixes of them.
        allow_incomplete: compare runs that are not complete (their stored rows), with a
            warning, instead of refusing.

    Raises:
        UnknownNameError: an unknown id (the closest ones are named).
        ConfigError: an incomplete run (without ``allow_incomplete``), or a run without rows.
    """
    a = load_run(store, run_a, allow_incomplete=allow_incomplete)
    b = load_run(store, run_b, allow_incomplete=allow_incomplete)
    warnings = [f"run {r.info.id} is {r.info.status}, not complete: its rows may be partial"
                for r in (a, b) if r.info.status != "complete"]  # fmt: skip
    reason = _pairing(a, b)
    if reason is not None and a.dataset != b.dataset:
        warnings.append(f"{reason}: the numbers are not comparable sample by sample")
    paired = reason is None
    keys: list[RowKey] = []
    if a.clean is not None and b.clean is not None:
        keys.append((CLEAN, "", 0.0))
    order = {k: i for i, k in enumerate([*a.summaries, *b.summaries])}
    # at eps = 0 every row is the clean accuracy, which the first row already compares; the
    # certified accuracy follows the worst case of its eps
    rest = sorted((k for k in {*a.summaries, *b.summaries, *a.certified, *b.certified}
                   if k[2] > 0),
                  key=lambda k: (k[1], k[2], (k[0] == WORST_CASE) + 2 * (k[0] == CERTIFIED),
                                 order.get(k, 0)))  # fmt: skip
    keys.extend(rest)
    rows = []
    for key in keys:
        ia, sa = _indicators(a, key)
        ib, sb = _indicators(b, key)
        if sa is None or sb is None:
            rows.append(RowComparison(*key, a=sa, b=sb))
            continue
        diff = sb["accuracy"] - sa["accuracy"]
        differ = canonical_json(sa["params"]) != canonical_json(sb["params"])
        if (
            paired
            and ia is not None
            and ib is not None
            and [i for i, _ in ia] == [i for i, _ in ib]
        ):
            broken = [i for (i, x), (_, y) in zip(ia, ib, strict=True) if x and not y]
            fixed = [i for (i, x), (_, y) in zip(ia, ib, strict=True) if y and not x]
            both = sum(x and y for (_, x), (_, y) in zip(ia, ib, strict=True))
            neither = len(ia) - both - len(broken) - len(fixed)
            ci = newcombe_paired(both, len(broken), len(fixed), neither)
            rows.append(RowComparison(
                *key, a=sa, b=sb, diff=diff, ci=ci, method="paired",
                broken_in_b={"count": len(broken), "first": broken[:FIRST_FLIPS]},
                fixed_in_b={"count": len(fixed), "first": fixed[:FIRST_FLIPS]},
                params_differ=differ,
            ))  # fmt: skip
        else:
            ci = newcombe_unpaired(sa["robust"], sa["n"], sb["robust"], sb["n"])
            rows.append(RowComparison(*key, a=sa, b=sb, diff=diff, ci=ci, method="unpaired",
                                      params_differ=differ))  # fmt: skip
    return Comparison(a, b, paired, reason, tuple(rows), tuple(warnings))


# -- the HTML comparison --------------------------------------------------------------------------

_PAGE = """
<section id="compare">
<h1>{{ title }}</h1>
<p class="lead">B compared with A: robust accuracy per attack and eps in each run, the
difference B − A with its 95% interval, and the samples that flipped.</p>
<table class="facts">
<thead><tr><th></th><th>run</th><th>kind</th><th>status</th><th>model</th><th>data</th><th class="num">n</th><th>created</th></tr></thead>
<tbody>
{% for s in sides %}
<tr><th>{{ s.name }}</th><td><code>{{ s.id }}</code></td><td>{{ s.kind }}</td><td>{{ s.status }}</td><td>{{ s.model }}</td><td>{{ s.dataset }}</td><td class="num">{{ s.n }}</td><td>{{ s.created }}</td></tr>
{% endfor %}
</tbody>
</table>
{% for w in warnings %}<div class="banner">{{ w }}</div>{% endfor %}
<p class="sentence">{{ sentence }}</p>
<p class="note">{{ method }}</p>
</section>
<section id="compare-table">
<h2>Side by side</h2>
<table class="grid">
<thead><tr><th>attack</th><th class="num">eps</th><th class="num">A</th><th class="num">B</th><th class="num">B − A</th><th class="num">95% interval</th><th class="num">broken in B</th><th class="num">fixed in B</th></tr></thead>
<tbody>
{% for r in rows %}
<tr class="{{ r.cls }}"><th>{{ r.label }}</th><td class="num">{{ r.eps }}</td>
<td class="num">{{ r.a }}</td><td class="num">{{ r.b }}</td><td class="num">{{ r.diff }}</td>
<td class="num">{{ r.ci }}</td><td class="num">{{ r.broken }}</td><td class="num">{{ r.fixed }}</td></tr>
{% endfor %}
</tbody>
</table>
<p class="note">A and B are robust accuracies (clean accuracy in the first row) with the number
of samples; "broken in B" counts samples robust in A and not in B, "fixed in B" the reverse
(paired runs only). Rows in one run only say so.</p>
</section>
{% if plots %}
<section id="compare-curve">
<h2>Worst-case robust accuracy against eps</h2>
{% for norm, uri in plots %}
<img src="{{ uri }}" class="plot narrow" alt="worst-case robust accuracy (%) against {{ norm }} eps in runs A and B">
{% endfor %}
</section>
{% endif %}
{% if flips %}
<section id="compare-flips">
<h2>Samples that flipped</h2>
<table class="facts">
<thead><tr><th>row</th><th>robust in A, broken in B (first)</th><th>broken in A, robust in B (first)</th></tr></thead>
<tbody>
{% for f in flips %}
<tr><th>{{ f.label }}</th><td>{{ f.broken }}</td><td>{{ f.fixed }}</td></tr>
{% endfor %}
</tbody>
</table>
</section>
{% endif %}
<section id="compare-provenance">
<h2>Provenance</h2>
{% for s in sides %}
<details><summary>Run {{ s.name }} ({{ s.id }}): configuration</summary>
<pre>{{ s.config }}</pre></details>
{% endfor %}
</section>
"""


def row_label(r: RowComparison) -> str:
    """A row's readable name: ``"PGD-40 (L∞)"``, ``"worst case (L2)"``, ``"certified (crown,
    L∞)"``; where the runs used other parameters, both (``"PGD-40 / PGD-100 (L∞)"``)."""
    from advlab.report.fmt import NORM_NAMES, attack_label

    if r.attack == CLEAN:
        return "clean accuracy"
    norm = NORM_NAMES.get(r.norm, r.norm)

    def name(side: Mapping[str, Any]) -> str:
        if r.attack == CERTIFIED:
            return f"certified ({side.get('params', {}).get('method', '?')})"
        if r.attack == WORST_CASE:
            return "worst case"
        return attack_label(r.attack, side.get("params"))

    if r.params_differ and r.a and r.b and name(r.a) != name(r.b):
        return f"{name(r.a)} / {name(r.b)} ({norm})"
    return f"{name(r.a or r.b or {})} ({norm})"


def _acc(side: dict[str, Any] | None) -> str:
    from advlab.report.fmt import fmt_pct

    return "–" if side is None else f"{fmt_pct(side['accuracy'])} ({side['robust']}/{side['n']})"


def sentence(cmp: Comparison) -> str:
    """One plain sentence on the worst case where the two runs differ most (the largest eps
    among ties)."""
    from advlab.report.fmt import NORM_NAMES, fmt_pct

    worst = [r for r in cmp.rows if r.attack == WORST_CASE and r.diff is not None and r.eps > 0]
    if not worst:
        return "The runs share no attacked row."
    r = max(worst, key=lambda r: (abs(r.diff or 0.0), r.norm == worst[0].norm, r.eps))
    assert r.ci is not None and r.diff is not None and r.a is not None and r.b is not None
    where = f"{NORM_NAMES.get(r.norm, r.norm)} ε = {r.eps:g}"
    lo, hi = r.ci
    sig = "a real change" if lo > 0 or hi < 0 else "not distinguishable from no change"
    if r.diff == 0:
        return (f"Worst-case robust accuracy is the same in both runs at every shared ε (at "
                f"{where}: {fmt_pct(r.a['accuracy'])}, 95% interval of the difference "
                f"{100 * lo:+.1f} to {100 * hi:+.1f} points).")  # fmt: skip
    change = (f"{'rises' if r.diff > 0 else 'falls'} from {fmt_pct(r.a['accuracy'])} in A to "
              f"{fmt_pct(r.b['accuracy'])} in B")  # fmt: skip
    return (f"The runs differ most at {where}: worst-case robust accuracy {change} "
            f"({100 * r.diff:+.1f} points, 95% interval {100 * lo:+.1f} to {100 * hi:+.1f}): "
            f"{sig}.")  # fmt: skip


def _plot(cmp: Comparison, norm: str) -> str | None:
    from advlab.report.fmt import figure, png_data_uri
    from advlab.report.plots import _style

    # clean accuracy is the worst case at eps = 0
    pts = {side: [(r.eps if r.attack != CLEAN else 0.0, (r.a if side == "A" else r.b))
                  for r in cmp.rows if r.attack == CLEAN or (r.attack == WORST_CASE
                                                             and r.norm == norm)]
           for side in ("A", "B")}  # fmt: skip
    if not any(s for _, s in pts["A"] + pts["B"]):
        return None
    with _style():
        fig = figure(6.4, 3.6)
        ax = fig.add_subplot()
        for i, (side, run) in enumerate((("A", cmp.a), ("B", cmp.b))):
            xs = [(e, s) for e, s in pts[side] if s is not None]
            if not xs:
                continue
            eps = [e for e, _ in xs]
            ax.fill_between(eps, [100 * s["ci"][0] for _, s in xs],
                            [100 * s["ci"][1] for _, s in xs], color=f"C{i}", alpha=0.12,
                            linewidth=0)  # fmt: skip
            ax.plot(eps, [100 * s["accuracy"] for _, s in xs], color=f"C{i}",
                    marker="os"[i], linestyle=("-", "--")[i], linewidth=1.8,
                    label=f"{side}: {run.info.id}")  # fmt: skip
        ax.set_xlabel(f"eps ({norm})")
        ax.set_ylabel("worst-case robust accuracy (%)")
        ax.set_ylim(0.0, 102.0)
        ax.grid(True, alpha=0.3)
        ax.legend(loc="best", frameon=False)
        return png_data_uri(fig)


def render_compare_html(cmp: Comparison) -> str:
    """The comparison as one self-contained HTML page (the report's stylesheet and footer)."""
    import advlab
    from advlab.report.fmt import env, fragment

    def side(name: str, r: StoredRun) -> dict[str, Any]:
        i = r.info
        return {"name": name, "id": i.id, "kind": i.kind, "status": i.status,
                "model": str(i.config.get("model", "–")), "dataset": r.dataset or "–",
                "n": len(r.clean) if r.clean is not None else "–", "created": i.created,
                "config": pretty_json(i.config)}  # fmt: skip

    rows = []
    flips = []
    for r in cmp.rows:
        label = row_label(r)
        cls = "worst" if r.attack == WORST_CASE else ""
        if r.only is not None:
            diff = ci = f"only in {r.only}"
            broken = fixed = "–"
        else:
            assert r.diff is not None and r.ci is not None
            diff = f"{100 * r.diff:+.1f} pts"
            ci = f"{100 * r.ci[0]:+.1f} to {100 * r.ci[1]:+.1f}"
            broken = str(r.broken_in_b["count"]) if r.broken_in_b else "–"
            fixed = str(r.fixed_in_b["count"]) if r.fixed_in_b else "–"
            if r.broken_in_b and (r.broken_in_b["count"] or (r.fixed_in_b or {}).get("count")):
                fb, ff = r.broken_in_b, r.fixed_in_b or {"count": 0, "first": []}
                flips.append({"label": f"{label}, eps {r.eps:g}",
                              "broken": _first(fb), "fixed": _first(ff)})  # fmt: skip
        rows.append({"label": label, "eps": "–" if r.attack == CLEAN else f"{r.eps:g}",
                     "a": _acc(r.a), "b": _acc(r.b), "diff": diff, "ci": ci, "broken": broken,
                     "fixed": fixed, "cls": cls})  # fmt: skip
    norms = list(dict.fromkeys(r.norm for r in cmp.rows if r.attack == WORST_CASE))
    plots = [(n, uri) for n in norms if (uri := _plot(cmp, n)) is not None]
    method = (
        "Paired samples (same dataset, indices and labels): the interval is Newcombe's paired "
        "score interval (1998b, method 10)." if cmp.paired else
        f"Not paired ({cmp.unpaired_reason}): the interval is Newcombe's score interval for "
        "independent proportions (1998a, method 10); no flips are listed."
    )  # fmt: skip
    title = f"advlab comparison: {cmp.b.info.id} against {cmp.a.info.id}"
    body = fragment(_PAGE, title=title, sides=[side("A", cmp.a), side("B", cmp.b)],
                    warnings=cmp.warnings, sentence=sentence(cmp), method=method, rows=rows,
                    plots=plots, flips=flips)  # fmt: skip
    return (
        env()
        .get_template("report.html")
        .render(
            title=title,
            sections=[body],
            version=advlab.__version__,
            generated=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        )
    )


def _first(f: Mapping[str, Any]) -> str:
    if not f["count"]:
        return "none"
    more = ", …" if f["count"] > len(f["first"]) else ""
    return f"{f['count']}: " + ", ".join(map(str, f["first"])) + more


def write_compare_html(path: str | os.PathLike[str], cmp: Comparison) -> Path:
    """Write :func:`render_compare_html` to ``path`` atomically."""
    return atomic_write_text(path, render_compare_html(cmp))


# -- export -------------------------------------------------------------------------------------

#: The columns of an export, in order.
EXPORT_COLUMNS = (
    "run_id", "row", "attack", "norm", "eps", "index", "label", "clean_pred", "adv_pred",
    "success", "robust", "perturbation", "queries", "target", "stopped", "certified", "shard",
    "params", "extras",
)  # fmt: skip
FORMATS = ("csv", "json", "parquet")


def export_rows(store: RunStore, run_id: str, *, derived: bool = False) -> list[dict[str, Any]]:
    """One dict per sample and stored cell of a run (:data:`EXPORT_COLUMNS`): the clean pass,
    every attack cell (a minimal attack's once, at ``eps = inf``) and certification cells,
    exactly as stored (``row = "cell"``). With ``derived``, also the reported rows derived from
    them (``row = "row"``: a minimal attack read at each eps, the worst case)."""
    cells = store.cells(run_id)
    out: list[dict[str, Any]] = []

    def emit(kind: str, attack: str, norm: str, eps: float, params: Any,
             recs: Sequence[SampleRecord]) -> None:  # fmt: skip
        text = canonical_json(params or {})
        for r in recs:
            out.append({
                "run_id": run_id, "row": kind, "attack": attack, "norm": norm, "eps": eps,
                "index": r.index, "label": r.label, "clean_pred": r.clean_pred,
                "adv_pred": r.adv_pred, "success": r.success, "robust": r.robust,
                "perturbation": r.norm, "queries": r.queries, "target": r.target,
                "stopped": r.stopped, "certified": r.certified, "shard": r.shard,
                "params": text, "extras": canonical_json(dict(r.extras)) if r.extras else "",
            })  # fmt: skip

    for eid, c in cells:
        emit("cell", c.attack, c.norm, c.eps, c.params, store.records(eid))
    if derived:
        stored = {c.key for _, c in cells}
        params = {(s.attack, s.norm, float(s.eps)): s.params for s in store.summaries(run_id)}
        for key, recs in row_records(store, run_id).items():
            if key not in stored:
                emit("row", *key, params.get(key), recs)
    return out


def export_run(
    store: RunStore, run_id: str, fmt: str, out: str | os.PathLike[str] | None = None, *,
    derived: bool = False,
) -> tuple[Path | None, str | None, int]:  # fmt: skip
    """Write a run's per-sample records (:func:`export_rows`) and its metadata.

    ``json``: one document ``{"format", "run", "rows", "records"}``. ``csv``: the records, and
    the metadata beside them in ``<out>.meta.json``. ``parquet`` (needs ``pyarrow``): the
    records, with the metadata as JSON in the file's key-value metadata under ``advlab``. Every
    file is written atomically.

    Args:
        out: the destination; default ``<run id>-records.<fmt>``; ``"-"`` returns the text
            (csv or json) instead of writing it.

    Returns:
        ``(path written or None, text for "-" or None, number of records)``.

    Raises:
        ConfigError: an unknown format, parquet without pyarrow, or parquet to ``-``.
        UnknownNameError: an unknown run (the closest ids are named).
    """
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}; use one of {', '.join(FORMATS)}")
    rid = resolve_run_id(store, run_id)
    info = store.get_run(rid)
    records = export_rows(store, rid, derived=derived)
    meta = plain({
        "format": "advlab-export", "format_version": 1, "run": info.to_dict(),
        "rows": [s.to_dict() for s in store.summaries(rid)], "columns": list(EXPORT_COLUMNS),
        "exported": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    })  # fmt: skip
    dest = Path(out) if out not in (None, "-") else None
    if out is None:
        dest = Path(f"{rid}-records.{fmt}")
    if fmt == "parquet":
        try:
            import pyarrow as pa  # type: ignore[import-not-found,unused-ignore]
            import pyarrow.parquet as pq  # type: ignore[import-not-found,unused-ignore]
        except ImportError:
            raise ConfigError(
                "parquet export needs pyarrow: `pip install pyarrow` (or `pip install "
                "advlab[parquet]`), or export --format csv or json"
            ) from None
        if dest is None:
            raise ConfigError("parquet is binary: pass --out FILE.parquet, not -")
        table = pa.Table.from_pylist(records, schema=_parquet_schema(pa)).replace_schema_metadata(
            {"advlab": pretty_json(meta)}
        )
        atomic_write(dest, lambda p: pq.write_table(table, p))
        return dest, None, len(records)
    if fmt == "json":
        doc = {**meta, "records": plain(records)}
        if dest is None:
            return None, pretty_json(doc), len(records)
        return atomic_write_json(dest, doc), None, len(records)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(EXPORT_COLUMNS), lineterminator="\n")
    w.writeheader()
    for r in records:
        w.writerow({k: _csv_value(v) for k, v in r.items()})
    if dest is None:
        return None, buf.getvalue(), len(records)
    atomic_write_json(dest.with_name(dest.name + ".meta.json"), meta)
    return atomic_write_text(dest, buf.getvalue()), None, len(records)


def _csv_value(v: Any) -> Any:
    if v is None:
        return ""
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, float) and not math.isfinite(v):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
    return v


def _parquet_schema(pa: Any) -> Any:
    types = {"run_id": pa.string(), "row": pa.string(), "attack": pa.string(),
             "norm": pa.string(), "eps": pa.float64(), "index": pa.int64(), "label": pa.int64(),
             "clean_pred": pa.int64(), "adv_pred": pa.int64(), "success": pa.bool_(),
             "robust": pa.bool_(), "perturbation": pa.float64(), "queries": pa.int64(),
             "target": pa.int64(), "stopped": pa.string(), "certified": pa.float64(),
             "shard": pa.int64(), "params": pa.string(), "extras": pa.string()}  # fmt: skip
    return pa.schema([(c, types[c]) for c in EXPORT_COLUMNS])
