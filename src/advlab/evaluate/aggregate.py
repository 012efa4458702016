"""Aggregation: every number of an evaluation, computed from stored records.

:func:`aggregate` reads the records of a :class:`~advlab.evaluate.plan.Plan`'s cells from one or
more sinks (one per shard, or one for the whole run), derives the reported rows and returns an
:class:`Evaluation`. It never runs a model, so a report can be rebuilt from the store, and shards
computed apart merge into the numbers one process would have produced.

Definitions (also used by the reports):

* a sample is **robust** to an attack at ``eps`` when the model classifies it correctly both
  clean and on the attack's output. Samples misclassified clean are never robust; they are not
  attacked (success, norm 0, no queries).
* **worst case** (``"worst-case"``): per sample, robust only if robust to every attack; its
  perturbation is the smallest successful one (:func:`advlab.results.worst_case_records`).
* **success rate**: among the samples classified correctly clean, the fraction the attack
  flipped. Mean and median norm are taken over those flipped samples.
* a minimal-perturbation attack runs once with ``eps = inf``; at each ``eps`` of the grid it
  succeeds on a sample when its perturbation has norm ``<= eps`` (:func:`advlab.threat.within`).
  Its rows report the queries and wall time of that single run. At ``eps = 0`` no attack runs.
* with certification (``EvalConfig(certify=...)``), each sample's certified radius in a norm is
  stored once, in the records of that norm's certification cell, and copied into the
  ``certified`` field of every record of that norm in :attr:`Evaluation.records` (clean, each
  attack, worst case). A sample is **certified at eps** when it is classified correctly and its
  radius is ``>= eps`` (:mod:`advlab.evaluate.certification`); :attr:`Evaluation.certified`
  holds the certified accuracy at each threat model, and :attr:`Evaluation.bounds` each
  sample's certified radius beside the smallest adversarial example the attacks found.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor

from advlab.errors import CheckpointError
from advlab.evaluate.certification import (
    CertifiedSummary,
    SampleBounds,
    sample_bounds,
    summarize_certified,
)
from advlab.evaluate.plan import WORST_CASE, AttackConfig, Plan, Row
from advlab.evaluate.sinks import ResultSink
from advlab.evaluate.stats import wilson_interval
from advlab.results import Example, SampleRecord, Summary, worst_case_records
from advlab.threat import ThreatModel, within

log = logging.getLogger(__name__)

RowKey = tuple[str, str, float]


@dataclass(frozen=True, eq=False)
class Evaluation:
    """The outcome of an evaluation.

    Attributes:
        dataset: the dataset's name.
        n: samples evaluated (one shard's, or all).
        num_classes: the dataset's class count.
        threats: the threat models of the grid, by norm and ascending eps.
        attacks: the attacks, in the order given.
        clean_accuracy: fraction of samples classified correctly without attack, with its
            Wilson 95% interval ``clean_ci``.
        summaries: one :class:`~advlab.results.Summary` per row: per threat model, each attack
            that supports its norm and then ``"worst-case"``.
        records: the per-sample records of every row, by ``(attack, norm, eps)``, and of the
            clean pass under ``("clean", norm, 0.0)``.
        examples: adversarial examples of the first samples the worst case flips at
            ``example_eps`` (for the image grid), kept from the run.
        failures: the first samples no attack flips at ``example_eps``, with the failed
            attempt of the strongest bounded attack there (``adv_pred == label``).
        config: the evaluation's configuration.
        provenance: what produced it (:func:`advlab.provenance.capture`).
        run_id: the run in the store, if it was stored there.
        certified: with certification, the certified accuracy at each threat model of the
            grid, in the grid's order (else empty).
        bounds: with certification, per norm, each sample's certified radius and smallest
            adversarial example found (:class:`~advlab.evaluate.certification.SampleBounds`),
            by ascending dataset index.
        cell_records: the records of every attack cell that ran, by ``(attack, norm, eps)``:
            a bounded attack's at each radius, a minimal attack's once at ``eps = inf`` (the
            size of each perturbation it found, before it is read at the grid's radii).
    """

    dataset: str
    n: int
    num_classes: int
    threats: tuple[ThreatModel, ...]
    attacks: tuple[AttackConfig, ...]
    clean_accuracy: float
    clean_ci: tuple[float, float]
    summaries: tuple[Summary, ...]
    records: Mapping[RowKey, list[SampleRecord]]
    examples: tuple[Example, ...] = ()
    failures: tuple[Example, ...] = ()
    example_eps: float | None = None
    config: Mapping[str, Any] = field(default_factory=dict)
    provenance: Mapping[str, Any] = field(default_factory=dict)
    run_id: str | None = None
    certified: tuple[CertifiedSummary, ...] = ()
    bounds: Mapping[str, tuple[SampleBounds, ...]] = field(default_factory=dict)
    cell_records: Mapping[RowKey, list[SampleRecord]] = field(default_factory=dict)

    @property
    def norms(self) -> list[str]:
        """The norms of the grid, in order."""
        return list(dict.fromkeys(t.norm for t in self.threats))

    @property
    def norm(self) -> str:
        """The first norm of the grid (the only one for most evaluations)."""
        return self.threats[0].norm

    def eps_grid(self, norm: str | None = None) -> list[float]:
        """The radii of one norm (default the first), ascending."""
        norm = norm or self.norm
        return [t.eps for t in self.threats if t.norm == norm]

    @property
    def attack_names(self) -> list[str]:
        """The attacks' names followed by ``"worst-case"``."""
        return [a.name for a in self.attacks] + [WORST_CASE]

    def row(self, attack: str, eps: float, norm: str | None = None) -> Summary:
        """The row of ``attack`` (or ``"worst-case"``) at ``eps`` (in ``norm``, default first)."""
        norm = norm or self.norm
        for s in self.summaries:
            if s.attack == attack and s.eps == float(eps) and s.norm == norm:
                return s
        raise KeyError(f"no row for attack {attack!r} at {norm} eps={eps}")

    def curve(self, attack: str = WORST_CASE, norm: str | None = None) -> list[Summary]:
        """The rows of one attack in one norm, by ascending eps."""
        norm = norm or self.norm
        return [s for s in self.summaries if s.attack == attack and s.norm == norm]

    def certified_row(self, eps: float, norm: str | None = None) -> CertifiedSummary:
        """The certified accuracy at ``eps`` (in ``norm``, default the first)."""
        norm = norm or self.norm
        for c in self.certified:
            if c.eps == float(eps) and c.norm == norm:
                return c
        raise KeyError(f"no certified accuracy at {norm} eps={eps} (certify was not requested?)")

    def robust(self, attack: str, eps: float, norm: str | None = None) -> Tensor:
        """``(n,)`` bool: which samples are robust in a row, by ascending dataset index."""
        recs = self.records[(attack, norm or self.norm, float(eps))]
        return torch.tensor([r.robust for r in recs], dtype=torch.bool)

    @property
    def indices(self) -> list[int]:
        """The dataset indices evaluated, ascending."""
        return [r.index for r in self.records[("clean", self.norm, 0.0)]]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly form (per-sample records stay in the sink)."""
        return {
            "dataset": self.dataset,
            "n": self.n,
            "num_classes": self.num_classes,
            "threats": [t.to_dict() for t in self.threats],
            "attacks": [a.to_dict() for a in self.attacks],
            "clean_accuracy": self.clean_accuracy,
            "clean_ci": list(self.clean_ci),
            "rows": [s.to_dict() for s in self.summaries],
            "example_eps": self.example_eps,
            "examples": [
                {
                    "index": e.index,
                    "attack": e.attack,
                    "label": e.label,
                    "clean_pred": e.clean_pred,
                    "adv_pred": e.adv_pred,
                }
                for e in self.examples
            ],
            "failures": [
                {"index": e.index, "attack": e.attack, "label": e.label, "adv_pred": e.adv_pred}
                for e in self.failures
            ],
            "config": dict(self.config),
            "provenance": dict(self.provenance),
            "run_id": self.run_id,
            "certified": [c.to_dict() for c in self.certified],
            "bounds": {n: [b.to_dict() for b in bs] for n, bs in self.bounds.items()},
        }


def summarize(row: Row, records: Sequence[SampleRecord], wall_time: float) -> Summary:
    """The :class:`~advlab.results.Summary` of one row from its records."""
    n = len(records)
    robust = sum(r.robust for r in records)
    lo, hi = wilson_interval(robust, n)
    n_ok = sum(r.clean_pred == r.label for r in records)
    flipped = [r.norm for r in records if r.clean_pred == r.label and r.success]
    norms = torch.tensor(flipped, dtype=torch.float64)
    return Summary(
        attack=row.attack, norm=row.threat.norm, eps=row.threat.eps, params=dict(row.params),
        n=n, robust=robust, robust_accuracy=robust / n if n else math.nan, ci_low=lo,
        ci_high=hi, success_rate=len(flipped) / n_ok if n_ok else math.nan,
        mean_norm=float(norms.mean()) if flipped else math.nan,
        median_norm=float(norms.quantile(0.5)) if flipped else math.nan,
        queries=sum(r.queries for r in records), wall_time=wall_time,
        stopped=sum(r.stopped is not None for r in records),
    )  # fmt: skip


def _at_eps(records: list[SampleRecord], threat: ThreatModel) -> list[SampleRecord]:
    """A minimal attack's records read at ``threat.eps``: longer perturbations are failures."""
    ok = within(torch.tensor([r.norm for r in records], dtype=torch.float64), threat.norm,
                threat.eps).tolist()  # fmt: skip
    return [
        r if hit or not r.success else replace(r, success=False, adv_pred=r.clean_pred, norm=0.0)
        # (a success found beyond eps was not cut short by a budget: stopped stays as it was)
        for r, hit in zip(records, ok, strict=True)
    ]


def _collect(plan: Plan, sinks: Sequence[ResultSink], cell: Any) -> list[SampleRecord]:
    merged: dict[int, SampleRecord] = {}
    for s in sinks:
        merged.update(s.stored(cell))
    want = plan.indices.tolist()
    missing = [i for i in want if i not in merged]
    if missing:
        raise CheckpointError(
            f"the sinks hold no records of {cell} for {len(missing)} of {len(want)} samples "
            f"(first: {missing[:5]}); run the missing shards first"
        )
    return [merged[i] for i in want]


def aggregate(
    plan: Plan,
    sinks: ResultSink | Sequence[ResultSink],
    *,
    dataset: str,
    num_classes: int,
    config: Mapping[str, Any] | None = None,
    provenance: Mapping[str, Any] | None = None,
    run_id: str | None = None,
) -> Evaluation:
    """Every row of ``plan`` from the records in ``sinks`` (module docstring).

    Args:
        plan: the evaluation's plan; with ``config.shard = None`` it covers all samples, so
            passing every shard's sink merges the shards.
        sinks: one sink, or several whose records are merged (later sinks win on overlap).
        dataset, num_classes, config, provenance, run_id: carried into the result.

    Raises:
        CheckpointError: a sample of the plan has no record in any sink.
    """
    if not isinstance(sinks, Sequence):
        sinks = [sinks]
    clean = _collect(plan, sinks, plan.clean)
    by_cert = {cell.norm: _collect(plan, sinks, cell) for cell in plan.certify}
    radius = {
        norm: {r.index: float(r.certified or 0.0) for r in recs} for norm, recs in by_cert.items()
    }

    def certified(recs: list[SampleRecord], norm: str) -> list[SampleRecord]:
        """``recs`` with the samples' certified radii in ``norm``, where certified."""
        if norm not in radius:
            return recs
        return [replace(r, certified=radius[norm][r.index]) for r in recs]

    records: dict[RowKey, list[SampleRecord]] = {plan.clean.key: certified(clean, plan.clean.norm)}
    summaries: list[Summary] = []
    by_cell = {cell.key: _collect(plan, sinks, cell) for cell in plan.cells}
    walls = {cell.key: sum(s.wall_time(cell) for s in sinks) for cell in plan.cells}
    picks: dict[RowKey, list[int]] = {}
    for threat in plan.threats:
        rows = plan.rows_for(threat)
        attack_rows = [r for r in rows if r.attack != WORST_CASE]
        for row in rows:
            if row.attack != WORST_CASE:
                assert row.source is not None
                if row.source.key == plan.clean.key:
                    recs = [replace(r, queries=0) for r in clean]
                    wall = 0.0
                else:
                    recs = by_cell[row.source.key]
                    if row.source.eps != threat.eps:
                        recs = _at_eps(recs, threat)
                    wall = walls[row.source.key]
            else:
                recs, picks[row.key] = worst_case_records([records[r.key] for r in attack_rows])
                wall = sum(s.wall_time for s in summaries if s.norm == threat.norm
                           and s.eps == threat.eps and s.attack != WORST_CASE)  # fmt: skip
            if row.attack != WORST_CASE:  # (the worst case takes its records from these)
                recs = certified(recs, threat.norm)
            records[row.key] = recs
            summaries.append(summarize(row, recs, wall))
    cert_rows, bounds = _certification(plan, sinks, clean, by_cert, by_cell)
    n = len(clean)
    k = sum(r.clean_pred == r.label for r in clean)
    ex_threat = plan.example_threat
    examples: tuple[Example, ...] = ()
    failures: tuple[Example, ...] = ()
    if ex_threat is not None and plan.config.keep_examples > 0:
        examples = _examples(plan, sinks, ex_threat, records, picks)
        failures = _failures(plan, sinks, ex_threat, records)
    return Evaluation(
        dataset=dataset, n=n, num_classes=num_classes, threats=plan.threats,
        attacks=plan.attacks, clean_accuracy=k / n if n else math.nan,
        clean_ci=wilson_interval(k, n), summaries=tuple(summaries), records=records,
        examples=examples, failures=failures, example_eps=ex_threat.eps if ex_threat is not None else None,
        config=dict(config or {}), provenance=dict(provenance or {}),
        run_id=run_id, certified=cert_rows, bounds=bounds, cell_records=by_cell,
    )  # fmt: skip


def _certification(
    plan: Plan,
    sinks: Sequence[ResultSink],
    clean: list[SampleRecord],
    by_cert: Mapping[str, list[SampleRecord]],
    by_cell: Mapping[RowKey, list[SampleRecord]],
) -> tuple[tuple[CertifiedSummary, ...], dict[str, tuple[SampleBounds, ...]]]:
    """Certified accuracy at each threat model of a certified norm, and per sample the
    certified radius beside the smallest adversarial example of every attack cell of that
    norm (module docstring)."""
    rows: list[CertifiedSummary] = []
    bounds: dict[str, tuple[SampleBounds, ...]] = {}
    for cell in plan.certify:
        recs = by_cert[cell.norm]
        wall = sum(s.wall_time(cell) for s in sinks)
        for threat in plan.threats:
            if threat.norm != cell.norm:
                continue
            k = sum(r.clean_pred == r.label and (r.certified or 0.0) >= threat.eps for r in recs)
            rows.append(summarize_certified(str(cell.params["method"]), threat,
                                            dict(cell.params), k, len(recs), wall))  # fmt: skip
        attacked = [(c.attack, by_cell[c.key]) for c in plan.cells if c.norm == cell.norm]
        bounds[cell.norm] = tuple(sample_bounds(clean, recs, attacked))
    return tuple(rows), bounds


def _examples(
    plan: Plan,
    sinks: Sequence[ResultSink],
    threat: ThreatModel,
    records: Mapping[RowKey, list[SampleRecord]],
    picks: Mapping[RowKey, list[int]],
) -> tuple[Example, ...]:
    """The kept examples of the first samples the worst case flips at ``threat``."""
    key = (WORST_CASE, threat.norm, threat.eps)
    if key not in records:
        return ()
    attack_rows = [r for r in plan.rows_for(threat) if r.attack != WORST_CASE]
    out: list[Example] = []
    kept_by: dict[RowKey, dict[int, Example]] = {}
    for j, r in enumerate(records[key]):
        if len(out) >= plan.config.keep_examples:
            break
        if r.clean_pred != r.label or not r.success:
            continue
        source = attack_rows[picks[key][j]].source
        assert source is not None
        if source.key not in kept_by:
            kept_by[source.key] = {e.index: e for s in sinks for e in s.examples(source)}
        kept = kept_by[source.key]
        if r.index in kept:
            out.append(kept[r.index])
        else:
            log.warning("no kept example for sample %d of %s", r.index, source)
    return tuple(out)


def _failures(
    plan: Plan,
    sinks: Sequence[ResultSink],
    threat: ThreatModel,
    records: Mapping[RowKey, list[SampleRecord]],
) -> tuple[Example, ...]:
    """The first samples the worst case does not flip at ``threat``, with the failed attempt
    kept by the bounded attack that flipped the most samples there (the strongest)."""
    key = (WORST_CASE, threat.norm, threat.eps)
    bounded = [r for r in plan.rows_for(threat) if r.attack != WORST_CASE and r.source is not None
               and r.source.eps == threat.eps]  # fmt: skip
    if key not in records or not bounded:
        return ()
    row = min(bounded, key=lambda r: sum(x.robust for x in records[r.key]))
    assert row.source is not None
    kept = {e.index: e for s in sinks for e in s.examples(row.source) if e.adv_pred == e.label}
    held = [r.index for r in records[key] if r.robust and r.index in kept]
    return tuple(kept[i] for i in held[: plan.config.keep_examples])
