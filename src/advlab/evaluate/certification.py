"""Certified radii and certified accuracy over a dataset: :mod:`advlab.certify` (sound bounds on
one batch) brought to the evaluation engine, the audit and ``advlab certify``.

* :func:`certifiable` checks, before any work, that a model can be certified: a white-box torch
  module of supported layers returning logits.
* :func:`certify_records` is the certification of one batch as the engine stores it: one
  :class:`~advlab.results.SampleRecord` per sample whose ``certified`` field is its certified
  radius (the records of a :data:`~advlab.evaluate.plan.CERTIFIED` cell).
* :func:`certified_radii` and :func:`certified_accuracy` run over a whole dataset in batches
  (``advlab certify``).

Definitions (also used by the aggregation and the reports): a sample's **certified radius** ``r``
is a radius at which every margin bound of the certifier is positive, so no perturbation of norm
``<= r`` inside the input box changes its (correct) prediction: a sound lower bound on its
smallest adversarial perturbation. It is found by bisection
(:func:`advlab.certify.certified_radius`) and is ``0`` for a sample the model misclassifies. A sample is **certified at
eps** when it is classified correctly and ``r >= eps``; **certified accuracy** is the fraction of
all ``n`` samples certified at eps, so it is at most the robust accuracy under any attack.

Certification reads the model's weights; it sends no queries through the oracle and is not
counted in ``queries``.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import Tensor, nn

from advlab.errors import ConfigError
from advlab.evaluate.plan import CERTIFIABLE_NORMS
from advlab.evaluate.stats import wilson_interval
from advlab.oracle import Access, ModuleOracle, Oracle, as_oracle
from advlab.registry import CERTIFIERS
from advlab.results import Cell, SampleRecord
from advlab.threat import ThreatModel, within

Progress = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class CertifiedSummary:
    """Certified accuracy at one threat model of a grid.

    Attributes:
        method: the certifier (``crown``, ...).
        norm, eps: the threat model.
        params: the certification's parameters (``method``, bisection ``steps``).
        n: samples.
        certified: samples classified correctly and certified at ``eps``.
        certified_accuracy: ``certified / n``, with its Wilson 95% interval ``ci_low, ci_high``.
        wall_time: seconds the certification took (for radii found once and read at every eps:
            that one run's time, as for a minimal attack).
    """

    method: str
    norm: str
    eps: float
    params: dict[str, Any]
    n: int
    certified: int
    certified_accuracy: float
    ci_low: float
    ci_high: float
    wall_time: float

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class SampleBounds:
    """One sample's smallest adversarial perturbation in one norm, bracketed: at least its
    certified radius (no perturbation within it changes the prediction) and at most the
    smallest adversarial example any attack found.

    Attributes:
        index, label: the sample.
        correct: classified correctly clean; a misclassified sample needs no perturbation
            (both bounds ``0``).
        certified: the certified radius, the lower bound.
        attack_norm: the norm of the smallest verified adversarial example over every attack
            of the norm (a minimal attack's perturbation, or a bounded attack's at any radius
            of the grid), the upper bound; ``None`` where no attack succeeded.
        attack: the attack that found it.
    """

    index: int
    label: int
    correct: bool
    certified: float
    attack_norm: float | None
    attack: str | None

    @property
    def gap(self) -> float | None:
        """``attack_norm - certified``: how far apart the bounds are (``None`` without an
        upper bound)."""
        return None if self.attack_norm is None else self.attack_norm - self.certified

    def sound(self, norm: str) -> bool:
        """The bounds are consistent: the certified radius does not exceed an adversarial
        example's norm (up to :func:`advlab.threat.within`'s round-off). ``False`` means the
        certifier (or the attack's verification) is wrong for this sample."""
        if self.attack_norm is None:
            return True
        lower = torch.tensor([self.certified], dtype=torch.float64)
        return bool(within(lower, norm, self.attack_norm)[0])

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index, "label": self.label, "correct": self.correct,
            "certified": self.certified, "attack_norm": self.attack_norm, "attack": self.attack,
            "gap": self.gap,
        }  # fmt: skip


def sample_bounds(
    clean: Sequence[SampleRecord],
    certified: Sequence[SampleRecord],
    attacked: Sequence[tuple[str, Sequence[SampleRecord]]],
) -> list[SampleBounds]:
    """Per sample, the certified radius and the smallest adversarial example of one norm.

    Args:
        clean: the clean records; certified: the certification cell's records; attacked:
            ``(attack name, records)`` of every attack cell of the norm. All on the same
            samples in the same order.
    """
    out = []
    for j, c in enumerate(clean):
        best: tuple[float, str] | None = None
        if c.clean_pred == c.label:
            for name, recs in attacked:
                r = recs[j]
                if r.success and (best is None or r.norm < best[0]):
                    best = (r.norm, name)
        ok = c.clean_pred == c.label
        out.append(
            SampleBounds(
                index=c.index,
                label=c.label,
                correct=ok,
                certified=float(certified[j].certified or 0.0) if ok else 0.0,
                attack_norm=(best[0] if best else None) if ok else 0.0,
                attack=best[1] if best else None,
            )
        )
    return out


def bounds_summary(bounds: Sequence[SampleBounds], norm: str, *, top: int = 10) -> dict[str, Any]:
    """What the reports show of one norm's :class:`SampleBounds`: counts, medians, the
    ``top`` samples with the widest gaps, and the unsound ones (certified radius above an
    adversarial example's norm; there should be none).

    Medians are over the correctly classified samples (certified radius) and over those an
    attack broke (attack radius, gap).
    """
    correct = [b for b in bounds if b.correct]
    broken = [b for b in correct if b.attack_norm is not None]
    widest = sorted(broken, key=lambda b: (-(b.gap or 0.0), b.index))[:top]

    def median(v: list[float]) -> float | None:
        return statistics.median(v) if v else None

    return {
        "norm": norm,
        "n": len(bounds),
        "correct": len(correct),
        "certified_positive": sum(b.certified > 0 for b in correct),
        "broken": len(broken),
        "median_certified": median([b.certified for b in correct]),
        "median_attack_norm": median([b.attack_norm for b in broken if b.attack_norm is not None]),
        "median_gap": median([b.gap for b in broken if b.gap is not None]),
        "widest": [b.to_dict() for b in widest],
        "unsound": [b.to_dict() for b in broken if not b.sound(norm)],
    }


def summarize_certified(
    method: str,
    threat: ThreatModel,
    params: dict[str, Any],
    certified: int,
    n: int,
    wall_time: float,
) -> CertifiedSummary:
    """A :class:`CertifiedSummary` from a count, with its Wilson interval."""
    lo, hi = wilson_interval(certified, n)
    return CertifiedSummary(
        method=method, norm=threat.norm, eps=threat.eps, params=dict(params), n=n,
        certified=certified, certified_accuracy=certified / n if n else math.nan, ci_low=lo,
        ci_high=hi, wall_time=wall_time,
    )  # fmt: skip


def certifiable(model: nn.Module | Oracle, method: str) -> nn.Module:
    """The torch module behind ``model``, checked for certification before any work.

    Raises:
        UnknownNameError: ``method`` is not a registered certifier.
        ConfigError: the model is not a white-box torch module returning logits, or it has a
            layer the bounds do not support (named in the message).
    """
    from advlab.certify import graph

    CERTIFIERS.entry(method)
    if isinstance(model, Oracle):
        if not isinstance(model, ModuleOracle):
            raise ConfigError(
                f"certification bounds a torch module's layers; this {type(model).__name__} "
                "hides them: pass the nn.Module itself"
            )
        model.require(Access.GRADIENTS, "certification")
        if model.output != "logits":
            raise ConfigError(
                "certification bounds logits, but this model returns probabilities; certify "
                "the network without its final softmax"
            )
        model = model.model
    if not isinstance(model, nn.Module):
        raise ConfigError(f"certification needs a torch nn.Module, got {type(model).__name__}")
    graph(model)  # ConfigError naming the first unsupported layer
    return model


def _radii(
    model: nn.Module, x: Tensor, y: Tensor, norm: str, lower: float, upper: float,
    method: str, steps: int,
) -> Tensor:  # fmt: skip
    """``(B,)`` certified radii of correctly classified inputs (bisection, no autograd graph
    kept: alpha-CROWN manages its own)."""
    from advlab.certify import certified_radius

    threat = ThreatModel(norm, 0.0, lower, upper)
    r = certified_radius(model, x, y, threat, method=method, steps=steps)
    return r.detach()


def certify_records(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    indices: Tensor,
    clean_pred: Tensor,
    cell: Cell,
    *,
    lower: float,
    upper: float,
    shard: int | None = None,
) -> list[SampleRecord]:
    """The certification of one batch under ``cell`` (a :data:`~advlab.evaluate.plan.CERTIFIED`
    cell: its norm, and ``method`` and ``steps`` in its parameters).

    Each record is the sample left as it is (prediction the clean one, no perturbation, no
    queries) with ``certified`` set: the certified radius of a correctly classified sample,
    ``0.0`` for a misclassified one (which is not certified at any radius and is not bounded).

    Shape: ``x: (B, *)``; ``y``, ``indices``, ``clean_pred``: ``(B,)``.
    """
    ok = clean_pred == y
    radius = torch.zeros(y.shape[0], dtype=torch.float64)
    pos = ok.nonzero().squeeze(1)
    if pos.numel():
        r = _radii(model, x[pos], y[pos], cell.norm, lower, upper, str(cell.params["method"]),
                   int(cell.params["steps"]))  # fmt: skip
        radius[pos.cpu()] = r.double().cpu()
    return [
        SampleRecord(
            index=int(i),
            label=int(lab),
            clean_pred=int(p),
            adv_pred=int(p),
            success=p != lab,
            norm=0.0,
            queries=0,
            certified=float(rad),
            shard=shard,
        )
        for i, lab, p, rad in zip(
            indices.tolist(), y.tolist(), clean_pred.tolist(), radius.tolist(), strict=True
        )
    ]


def _batches(n: int, batch_size: int) -> list[slice]:
    return [slice(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]


def certified_radii(
    model: nn.Module | Oracle,
    x: Tensor,
    y: Tensor,
    norm: str,
    *,
    method: str = "crown",
    steps: int = 15,
    lower: float = 0.0,
    upper: float = 1.0,
    batch_size: int = 250,
    progress: Progress | None = None,
) -> Tensor:
    """Per-sample certified radius of ``model`` on ``x``, ``0`` where misclassified.

    Args:
        model: a torch module of supported layers, in eval mode, or its
            :class:`~advlab.oracle.ModuleOracle` (see :func:`certifiable`); the clean
            predictions are queried through it.
        x, y: inputs in ``[lower, upper]`` and their labels.
        norm: ``linf``, ``l2`` or ``l1``.
        method: a registered certifier.
        steps: bisection steps (the radius is found to ``width / 2**steps``).
        batch_size: samples bounded at once.
        progress: called after each batch with ``stage="certify"``, ``method``, ``norm``,
            ``eps=inf``, ``done``, ``total``.

    Shape: ``x: (N, *)``, ``y: (N,)`` -> ``(N,)`` float64 on the CPU.
    """
    _check_norm(norm)
    oracle = as_oracle(model)
    module = certifiable(oracle, method)
    pred = _predict(oracle, x, batch_size)
    out = torch.zeros(x.shape[0], dtype=torch.float64)
    for s in _batches(x.shape[0], batch_size):
        ok = (pred[s] == y[s]).nonzero().squeeze(1)
        if ok.numel():
            r = _radii(module, x[s][ok], y[s][ok], norm, lower, upper, method, steps)
            out[s][ok.cpu()] = r.double().cpu()
        _emit(progress, stage="certify", method=method, norm=norm, eps=math.inf,
              done=s.stop, total=x.shape[0])  # fmt: skip
    return out


def certified_accuracy(
    model: nn.Module | Oracle,
    x: Tensor,
    y: Tensor,
    threats: Sequence[ThreatModel],
    *,
    method: str = "crown",
    batch_size: int = 250,
    progress: Progress | None = None,
) -> list[CertifiedSummary]:
    """Certified accuracy at each threat model: the fraction of samples classified correctly
    whose margin bounds under ``method`` are all positive at ``threat.eps`` (checked at that
    radius directly, so at least the accuracy read off bisected radii). ``eps = 0`` needs no
    bound: it is the clean accuracy.

    Shape: ``x: (N, *)``, ``y: (N,)``.
    """
    from advlab.certify import certified

    for t in threats:
        _check_norm(t.norm)
    oracle = as_oracle(model)
    module = certifiable(oracle, method)
    correct = clean_correct(oracle, x, y, batch_size)
    n = int(y.shape[0])
    out = []
    for t in threats:
        t0 = time.perf_counter()
        ok = correct.clone()
        if t.eps > 0:
            for s in _batches(n, batch_size):
                pos = ok[s].nonzero().squeeze(1)
                if pos.numel():
                    got = certified(module, x[s][pos], y[s][pos], t, methods=(method,),
                                    batch_size=batch_size)  # fmt: skip
                    ok[s][pos] = got
                _emit(progress, stage="certify", method=method, norm=t.norm, eps=t.eps,
                      done=s.stop, total=n)  # fmt: skip
        params = {"method": method}
        out.append(summarize_certified(method, t, params, int(ok.sum()), n,
                                       time.perf_counter() - t0))  # fmt: skip
    return out


def clean_correct(model: nn.Module | Oracle, x: Tensor, y: Tensor, batch_size: int = 250) -> Tensor:
    """``(N,)`` bool: which samples the model classifies correctly (queried through its
    oracle)."""
    return _predict(as_oracle(model), x, batch_size) == y


def _check_norm(norm: str) -> None:
    if norm not in CERTIFIABLE_NORMS:
        raise ConfigError(
            f"certification bounds {', '.join(CERTIFIABLE_NORMS)} balls, not {norm!r}"
        )


def _predict(oracle: Oracle, x: Tensor, batch_size: int) -> Tensor:
    """Clean predictions, through the oracle like every prediction an evaluation makes."""
    return oracle.labels(x, batch_size=batch_size)


def _emit(progress: Progress | None, **event: Any) -> None:
    if progress is not None:
        progress(event)
