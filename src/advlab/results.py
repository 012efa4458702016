"""Per-sample attack results.

An :class:`AttackResult` holds one row per input sample, so the worst case over several attacks
is an elementwise operation (:func:`worst_case`) and a sharded or resumed run is a concatenation
(:func:`concat`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor

from advlab.threat import ThreatModel


@dataclass(frozen=True)
class AttackResult:
    """What an attack produced, per sample.

    Attributes:
        attack: registered name of the attack.
        params: the attack's hyper-parameters, as given.
        threat: the threat model the outputs were projected onto and checked against.
        x_adv: ``(B, *)`` adversarial inputs (the input itself where an attack returns no change).
        success: ``(B,)`` bool, from a fresh forward pass on ``x_adv``: the prediction differs
            from the label (untargeted) or equals the target (targeted).
        norms: ``(B,)`` perturbation size in ``threat.norm``.
        queries: ``(B,)`` int64 number of model evaluations (forward or forward+backward) the
            algorithm spent on each sample.
        pred: ``(B,)`` the model's prediction on ``x_adv``.
        label: ``(B,)`` the true labels.
        target: ``(B,)`` target classes for a targeted attack, else ``None``.
        extras: attack-specific per-sample tensors (e.g. ``"features_changed"`` for JSMA).
    """

    attack: str
    params: dict[str, Any]
    threat: ThreatModel
    x_adv: Tensor
    success: Tensor
    norms: Tensor
    queries: Tensor
    pred: Tensor
    label: Tensor
    target: Tensor | None = None
    extras: dict[str, Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.success.shape[0])

    @property
    def targeted(self) -> bool:
        return self.target is not None

    @property
    def success_rate(self) -> float:
        """Fraction of samples on which the attack succeeded."""
        return float(self.success.float().mean()) if len(self) else float("nan")

    @property
    def robust(self) -> Tensor:
        """``(B,)`` bool: the model still predicts the true label on ``x_adv``."""
        return self.pred == self.label

    @property
    def robust_accuracy(self) -> float:
        """Fraction of samples still classified correctly after the attack."""
        return float(self.robust.float().mean()) if len(self) else float("nan")

    def to(self, device: torch.device | str) -> AttackResult:
        """The same result with every tensor on ``device``."""
        t = self.target.to(device) if self.target is not None else None
        return replace(
            self,
            x_adv=self.x_adv.to(device),
            success=self.success.to(device),
            norms=self.norms.to(device),
            queries=self.queries.to(device),
            pred=self.pred.to(device),
            label=self.label.to(device),
            target=t,
            extras={k: v.to(device) for k, v in self.extras.items()},
        )


def concat(results: Sequence[AttackResult]) -> AttackResult:
    """Concatenate results of the same attack over consecutive batches."""
    if not results:
        raise ValueError("concat needs at least one result")
    first = results[0]
    for r in results[1:]:
        if r.attack != first.attack or r.threat != first.threat or r.targeted != first.targeted:
            raise ValueError("concat needs results of one attack under one threat model")
    target = torch.cat([r.target for r in results]) if first.target is not None else None  # type: ignore[misc]
    return replace(
        first,
        x_adv=torch.cat([r.x_adv for r in results]),
        success=torch.cat([r.success for r in results]),
        norms=torch.cat([r.norms for r in results]),
        queries=torch.cat([r.queries for r in results]),
        pred=torch.cat([r.pred for r in results]),
        label=torch.cat([r.label for r in results]),
        target=target,
        extras={k: torch.cat([r.extras[k] for r in results]) for k in first.extras},
    )


def worst_case(results: Sequence[AttackResult]) -> AttackResult:
    """Per sample, the first successful attack among ``results`` (all on the same inputs).

    Where several succeed, the one with the smallest perturbation norm wins. The returned result
    is named ``"worst-case(a+b+...)"``; its ``queries`` add up over the attacks.
    """
    if not results:
        raise ValueError("worst_case needs at least one result")
    first = results[0]
    n = len(first)
    for r in results:
        if len(r) != n or not torch.equal(r.label, first.label):
            raise ValueError("worst_case needs results on the same samples in the same order")
        if r.threat.norm != first.threat.norm:
            raise ValueError("worst_case needs results measured in the same norm")
    best = first
    x_adv, success, norms, pred = best.x_adv, best.success, best.norms, best.pred
    for r in results[1:]:
        better = (r.success & ~success) | (r.success & success & (r.norms < norms))
        m = better.view(-1, *([1] * (x_adv.dim() - 1)))
        x_adv = torch.where(m, r.x_adv, x_adv)
        norms = torch.where(better, r.norms, norms)
        pred = torch.where(better, r.pred, pred)
        success = success | r.success
    queries = torch.stack([r.queries for r in results]).sum(dim=0)
    return AttackResult(
        attack="worst-case(" + "+".join(r.attack for r in results) + ")",
        params={r.attack: r.params for r in results},
        threat=first.threat,
        x_adv=x_adv,
        success=success,
        norms=norms,
        queries=queries,
        pred=pred,
        label=first.label,
        target=first.target,
    )
