"""The evaluation engine: plan, run, sink, aggregate.

:func:`evaluate` measures the robust accuracy of a model under several attacks over a grid of
threat models, in four steps, each owned by one module:

1. **plan** (:mod:`advlab.evaluate.plan`): the cells to run and the rows to report, over the
   samples' dataset indices;
2. **run** (:mod:`advlab.evaluate.runner`): each cell, batch by batch, as a pure function of
   (model, samples, attack, threat, seed), every query through the model's oracle;
3. **sink** (:mod:`advlab.evaluate.sinks`, :class:`advlab.store.StoreSink`): each finished batch
   of records is written at once; batches the sink already holds are not recomputed, so an
   interrupted evaluation resumes, and ends with exactly the numbers of an uninterrupted one;
4. **aggregate** (:mod:`advlab.evaluate.aggregate`): every number from the stored records.

With ``EvalConfig(certify=method)`` the run step ends with a certification cell per norm
(:mod:`advlab.evaluate.certification`): each correctly classified sample's certified radius,
stored in its record's ``certified`` field, batch by batch and resumed like any cell.

Randomness is keyed by sample (its dataset index) and cell, so results do not depend on the
batch size, the order of the batches, or the shard that computed a sample: up to the model's own
float round-off (a matrix product can change in its last bit with the batch size).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from advlab.data.base import DatasetLike
from advlab.errors import ConfigError, ModelOutputError
from advlab.evaluate.aggregate import Evaluation, aggregate
from advlab.evaluate.certification import certifiable, certify_records
from advlab.evaluate.plan import AttackConfig, EvalConfig, Plan, make_plan
from advlab.evaluate.runner import clean_records, pred_tensor, run_batch
from advlab.evaluate.sinks import MemorySink, ResultSink
from advlab.oracle import Oracle, as_oracle
from advlab.provenance import capture
from advlab.results import Cell, Example, SampleRecord
from advlab.threat import ThreatModel, check_inputs, within

log = logging.getLogger(__name__)

Progress = Callable[[dict[str, Any]], None]


def evaluate(
    model: nn.Module | Oracle,
    data: DatasetLike,
    attacks: Sequence[AttackConfig | str | Mapping[str, Any]] | AttackConfig | str,
    threats: ThreatModel | Sequence[ThreatModel],
    config: EvalConfig | None = None,
    *,
    sink: ResultSink | None = None,
    progress: Progress | None = None,
    provenance: Mapping[str, Any] | None = None,
) -> Evaluation:
    """Robust accuracy of ``model`` on ``data`` under each attack and threat model, and the
    per-sample worst case (module docstring; definitions in :mod:`advlab.evaluate.aggregate`).

    Args:
        model: a torch classifier (used as it is: its mode is not changed; it runs on the
            device the data is on), or an :class:`~advlab.oracle.Oracle`.
        data: a dataset (``.name``, ``.x``, ``.y``, ``.num_classes``); sample ``i`` is
            ``data.x[i]``.
        attacks: attack configurations (an :class:`AttackConfig`, a registered name, or
            ``{"name": ..., "params": {...}}``), each name once. Minimal-perturbation attacks
            (C&W, DeepFool, ...) run once per norm and are read at every radius.
        threats: a threat model or a list: the grid of radii (in one norm or several, one
            input box). ``eps = 0`` gives clean accuracy.
        config: batch size, seed, examples, shard and certification (:class:`EvalConfig`).
        sink: where records go as each batch finishes, and what is resumed from (default: a
            fresh :class:`MemorySink`). Use :class:`advlab.store.StoreSink` for the run store.
        progress: called after each batch with a dict: ``stage`` (``"clean"``, ``"attack"``
            or ``"certify"``), ``attack`` (the certifier for certification), ``norm``,
            ``eps``, ``done``, ``total``, ``batch``, ``batches``, ``resumed`` (read from the
            sink). An exception raised by it stops the evaluation; the batches written so far
            are kept.
        provenance: what produced the run (default: captured now).

    Returns:
        An :class:`~advlab.evaluate.aggregate.Evaluation`.

    Raises:
        UnknownNameError: an unregistered attack.
        ConfigError: bad parameters, a sink whose records come from another model or data, or
            certification of a model that is not a white-box module of supported layers.
        InputError: data outside the box, or of the wrong shape or dtype.
        ModelOutputError: malformed model outputs, or the wrong class count.
        BudgetExhausted: the oracle's total query budget cannot cover the clean pass.

    Example:
        >>> ev = evaluate(model, test_set, ["fgsm", AttackConfig("pgd", {"steps": 50})],
        ...               [ThreatModel("linf", e) for e in (0.0, 0.1, 0.3)])
        >>> ev.row("worst-case", 0.3).robust_accuracy
    """
    config = config or EvalConfig()
    if not isinstance(config, EvalConfig):
        raise ConfigError(f"config must be an advlab EvalConfig, got {type(config).__name__}")
    name = str(getattr(data, "name", "dataset"))
    plan = make_plan(attacks, threats, config, int(data.y.shape[0]))
    check_inputs(data.x, data.y, plan.threats[0], name=f"dataset {name!r}")
    if data.y.device != data.x.device:
        raise ConfigError(f"dataset {name!r} has x on {data.x.device} and y on {data.y.device}")
    oracle = as_oracle(model)
    # certification reads the weights: refuse a model it cannot bound before any work
    module = certifiable(oracle, config.certify) if config.certify is not None else None
    sink = sink if sink is not None else MemorySink()
    cfg = {
        "dataset": name, "n": plan.n_total, "num_classes": int(data.num_classes),
        "threats": [t.to_dict() for t in plan.threats],
        "attacks": [a.to_dict() for a in plan.attacks], **config.to_dict(),
    }  # fmt: skip
    prov = dict(provenance) if provenance is not None else capture(seed=config.seed, config=cfg)
    _Runner(oracle, data, plan, sink, progress, module).run()
    ev = aggregate(
        plan, sink, dataset=name, num_classes=int(data.num_classes), config=cfg,
        provenance=prov, run_id=getattr(sink, "run_id", None),
    )  # fmt: skip
    sink.summarize(ev.summaries)
    return ev


class _Runner:
    """Runs a plan's clean pass and cells into a sink (the "run" and "sink" steps)."""

    def __init__(
        self,
        oracle: Oracle,
        data: DatasetLike,
        plan: Plan,
        sink: ResultSink,
        progress: Progress | None,
        module: nn.Module | None = None,
    ) -> None:
        self.oracle, self.data, self.plan, self.sink = oracle, data, plan, sink
        self.progress = progress
        self.module = module
        self.batches = plan.batches()
        self.done = [int(n) for n in torch.tensor([len(b) for b in self.batches]).cumsum(0)]
        self.shard = plan.config.shard[0] if plan.config.shard else None
        self.clean_pred = torch.empty(0)
        t = plan.threats[0]
        self.lower, self.upper = t.lower, t.upper

    def _emit(self, **event: Any) -> None:
        if self.progress is not None:
            self.progress(event)

    def run(self) -> None:
        self.clean()
        for cell in self.plan.cells:
            self.cell(cell)
        for cell in self.plan.certify:
            self.certify(cell)

    def clean(self) -> None:
        """Clean predictions of every sample, checked against what the sink holds."""
        dev = self.data.y.device
        mine = set(self.plan.indices.tolist())  # other shards may share the sink
        stored = {i: r for i, r in self.sink.stored(self.plan.clean).items() if i in mine}
        pred = torch.empty(self.plan.n_total, dtype=torch.long, device=dev)
        new: list[SampleRecord] = []
        for b, idx in enumerate(self.batches):
            i = idx.to(dev)
            recs = clean_records(self.oracle, self.data.x[i], self.data.y[i], idx, shard=self.shard)
            pred[i] = pred_tensor(recs, dev)
            new.extend(r for r in recs if r.index not in stored)
            self._emit(stage="clean", attack=None, norm=None, eps=None, done=self.done[b],
                       total=self.done[-1], batch=b + 1, batches=len(self.batches),
                       resumed=False)  # fmt: skip
        c = self.oracle.num_classes
        if c is not None and c != int(self.data.num_classes):
            raise ModelOutputError(
                f"the model returns {c} scores but the dataset has {self.data.num_classes} "
                "classes; evaluate a model trained for this dataset"
            )
        if stored:
            old = [
                (r.clean_pred, int(pred[i]), r.label, int(self.data.y[i]))
                for i, r in stored.items()
            ]
            if any(lab != y for _, _, lab, y in old):
                raise ConfigError(
                    "the sink holds other labels than this dataset has; it was made on another "
                    "dataset: start a new run"
                )
            differ = sum(a != b for a, b, _, _ in old)
            if differ > max(0, len(old) // 100):
                raise ConfigError(
                    f"the model's clean predictions differ from those stored on {differ} of "
                    f"{len(old)} samples; that run was made with another model or dataset: "
                    "start a new run"
                )
            if differ:
                log.warning(
                    "clean predictions differ from the stored ones on %d samples "
                    "(non-deterministic model?); continuing", differ,
                )  # fmt: skip
                for j, r in stored.items():
                    pred[j] = r.clean_pred  # keep the stored run consistent with itself
        if new:
            self.sink.write(self.plan.clean, new)
        self.clean_pred = pred

    def cell(self, cell: Cell) -> None:
        """Run ``cell`` on every sample the sink does not hold yet, batch by batch (a batch of
        which some samples are stored attacks only the others: a sample's record does not
        depend on its batch-mates)."""
        ex_threat = self.plan.example_threat
        want_examples = (
            self.plan.config.keep_examples > 0 and ex_threat is not None
            and cell.norm == ex_threat.norm and cell.eps in (ex_threat.eps, float("inf"))
        )  # fmt: skip
        stored = self.sink.examples(cell) if want_examples else []
        kept = {e.index for e in stored if e.adv_pred != e.label}
        kept_failed = {e.index for e in stored if e.adv_pred == e.label}
        for b, idx in self._pending(cell):
            if len(idx):
                i = idx.to(self.data.y.device)
                t0 = time.perf_counter()
                out = run_batch(
                    self.oracle, self.data.x[i], self.data.y[i], idx, self.clean_pred[i], cell,
                    lower=self.lower, upper=self.upper, seed=self.plan.config.seed,
                    shard=self.shard,
                )  # fmt: skip
                wall = time.perf_counter() - t0
                examples: list[Example] = []
                if want_examples and out.result is not None and ex_threat is not None:
                    examples = self._examples(cell, out.result, idx, out.attacked, kept,
                                              kept_failed, ex_threat)  # fmt: skip
                self.sink.write(cell, out.records, wall_time=wall, examples=examples)
            self._batch_done("attack", cell.attack, cell, b, resumed=not len(idx))

    def certify(self, cell: Cell) -> None:
        """Certified radii of every sample the sink does not hold yet for ``cell`` (one
        certification cell per norm), batch by batch."""
        assert self.module is not None
        for b, idx in self._pending(cell):
            if len(idx):
                i = idx.to(self.data.y.device)
                t0 = time.perf_counter()
                recs = certify_records(
                    self.module, self.data.x[i], self.data.y[i], idx, self.clean_pred[i], cell,
                    lower=self.lower, upper=self.upper, shard=self.shard,
                )  # fmt: skip
                self.sink.write(cell, recs, wall_time=time.perf_counter() - t0)
            self._batch_done("certify", cell.params["method"], cell, b, resumed=not len(idx))

    def _pending(self, cell: Cell) -> Iterator[tuple[int, Tensor]]:
        """``(batch number, indices of its samples the sink does not hold for cell)``."""
        stored = self.sink.stored(cell)
        for b, batch in enumerate(self.batches):
            yield b, torch.tensor([i for i in batch.tolist() if i not in stored], dtype=torch.long)

    def _batch_done(self, stage: str, attack: str, cell: Cell, b: int, resumed: bool) -> None:
        self._emit(stage=stage, attack=attack, norm=cell.norm, eps=cell.eps, done=self.done[b],
                   total=self.done[-1], batch=b + 1, batches=len(self.batches),
                   resumed=resumed)  # fmt: skip

    def _examples(
        self,
        cell: Cell,
        res: Any,
        idx: torch.Tensor,
        attacked: torch.Tensor,
        kept: set[int],
        kept_failed: set[int],
        threat: ThreatModel,
    ) -> list[Example]:
        """Keep the first flipped samples (within the example eps) of this batch, until the
        cell holds ``keep_examples`` of them: the worst case's first flips are among them. A
        bounded attack at the example eps also keeps as many of the samples it failed on (its
        best attempt; ``adv_pred == label``), for the report's failures."""
        out = []
        hit = res.success & within(res.norms, threat.norm, threat.eps)
        picks = [(j, kept) for j in hit.nonzero().squeeze(1).tolist()]
        if cell.eps == threat.eps:
            picks += [(j, kept_failed) for j in (~res.success).nonzero().squeeze(1).tolist()]
        for j, into in picks:
            if len(into) >= self.plan.config.keep_examples:
                continue
            i = int(idx[int(attacked[j])])
            if i in into:
                continue
            into.add(i)
            out.append(
                Example(
                    index=i,
                    attack=cell.attack,
                    norm=cell.norm,
                    eps=cell.eps,
                    x=self.data.x[i].detach().cpu().float(),
                    x_adv=res.x_adv[j].detach().cpu().float(),
                    label=int(res.label[j]),
                    clean_pred=int(self.clean_pred[i]),
                    adv_pred=int(res.pred[j]),
                )
            )
        return out


def summary(ev: Evaluation) -> dict[str, Any]:
    """The short summary stored with a run: clean accuracy and the worst case per threat (and
    the certified accuracy, where certified)."""
    out: dict[str, Any] = {
        "dataset": ev.dataset,
        "n": ev.n,
        "clean_accuracy": ev.clean_accuracy,
        "worst_case": [
            {"norm": s.norm, "eps": s.eps, "robust_accuracy": s.robust_accuracy}
            for norm in ev.norms
            for s in ev.curve(norm=norm)
        ],
    }
    if ev.certified:
        out["certified"] = [
            {"method": c.method, "norm": c.norm, "eps": c.eps,
             "certified_accuracy": c.certified_accuracy}
            for c in ev.certified
        ]  # fmt: skip
    return out
