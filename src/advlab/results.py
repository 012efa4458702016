"""Per-sample results: what an attack returns, and the record the engine stores for each sample.

* :class:`AttackResult` is what one attack call returns for a batch: tensors with one row per
  sample, the adversarial inputs included.
* :class:`SampleRecord` is the typed per-sample row that the evaluation engine writes to a sink,
  that the store keeps and that reports and the CLI read: everything of a result but the image.

The worst case over several attacks is one rule, :func:`worst_pick`: per sample, the first
attack that succeeded, or among several successes the one with the smallest perturbation. It is
applied to batches (:func:`worst_case`) and to stored records (:func:`worst_case_records`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

import torch
from torch import Tensor

from advlab.threat import ThreatModel


@dataclass(frozen=True)
class AttackResult:
    """What an attack produced, per sample.

    Attributes:
        attack: registered name of the attack.
        params: the attack's hyper-parameters, defaults filled in.
        threat: the threat model the outputs were projected onto and checked against.
        x_adv: ``(B, *)`` adversarial inputs (the input itself where an attack returns no change).
        success: ``(B,)`` bool, from a fresh query on ``x_adv``: the prediction differs from the
            label (untargeted) or equals the target (targeted).
        norms: ``(B,)`` perturbation size in ``threat.norm``.
        queries: ``(B,)`` int64 images sent to the model for each sample, as counted by the
            oracle: every forward pass (with or without its backward pass) of the attack, plus
            the one verification query per sample that produced ``pred``.
        pred: ``(B,)`` the model's prediction on ``x_adv``.
        label: ``(B,)`` the true labels.
        target: ``(B,)`` target classes for a targeted attack, else ``None``.
        extras: attack-specific per-sample tensors (e.g. ``"features_changed"`` for JSMA).
        stopped: why a query budget cut the search short for some samples (``exhausted``),
            or ``None``; their outputs are the best the attack had found.
        exhausted: ``(B,)`` bool, the samples whose search a budget ended before they
            succeeded (``None``: none).
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
    stopped: str | None = None
    exhausted: Tensor | None = None

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
            exhausted=self.exhausted.to(device) if self.exhausted is not None else None,
        )

    def records(
        self, indices: Sequence[int], clean_pred: Sequence[int], *, shard: int | None = None
    ) -> list[SampleRecord]:
        """One :class:`SampleRecord` per sample; ``indices`` are the samples' dataset indices."""
        if len(indices) != len(self) or len(clean_pred) != len(self):
            raise ValueError("records needs one index and one clean prediction per sample")
        label, adv, success = self.label.tolist(), self.pred.tolist(), self.success.tolist()
        norm, queries = self.norms.double().tolist(), self.queries.tolist()
        target = self.target.tolist() if self.target is not None else [None] * len(self)
        cut = self.exhausted.tolist() if self.exhausted is not None else [False] * len(self)
        extras = {k: v.double().tolist() for k, v in self.extras.items()}
        return [
            SampleRecord(
                index=int(indices[i]),
                label=int(label[i]),
                clean_pred=int(clean_pred[i]),
                adv_pred=int(adv[i]),
                success=bool(success[i]),
                norm=float(norm[i]),
                queries=int(queries[i]),
                target=target[i],
                extras={k: v[i] for k, v in extras.items()},
                stopped=self.stopped if cut[i] else None,
                shard=shard,
            )
            for i in range(len(self))
        ]


def concat(results: Sequence[AttackResult]) -> AttackResult:
    """Concatenate results of the same attack over consecutive batches."""
    if not results:
        raise ValueError("concat needs at least one result")
    first = results[0]
    for r in results[1:]:
        if r.attack != first.attack or r.threat != first.threat or r.targeted != first.targeted:
            raise ValueError("concat needs results of one attack under one threat model")
    target = torch.cat([r.target for r in results]) if first.target is not None else None  # type: ignore[misc]
    stopped = next((r.stopped for r in results if r.stopped), None)
    cut = [r.exhausted if r.exhausted is not None else torch.zeros_like(r.success) for r in results]
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
        stopped=stopped,
        exhausted=torch.cat(cut) if any(r.exhausted is not None for r in results) else None,
    )


def worst_pick(success: Tensor, norms: Tensor) -> Tensor:
    """Which of ``A`` attacks is the worst case for each of ``N`` samples.

    The first attack that succeeded on a sample wins, unless a later one also succeeded with a
    strictly smaller perturbation; where none succeeded, attack 0 is picked.

    Shape:
        success: ``(A, N)`` bool; norms: ``(A, N)``. Returns ``(N,)`` int64 attack indices.
    """
    if success.shape != norms.shape or success.dim() != 2 or success.shape[0] == 0:
        raise ValueError("worst_pick needs (A, N) success and norms with A >= 1")
    key = torch.where(
        success, norms.double(), torch.full_like(norms, math.inf, dtype=torch.float64)
    )
    best = key.min(dim=0, keepdim=True).values
    # the first attack reaching the smallest key; ties and total failure go to the earliest
    hit = (key == best) & (success | ~success.any(dim=0, keepdim=True))
    return hit.to(torch.int8).argmax(dim=0)


def worst_case(results: Sequence[AttackResult]) -> AttackResult:
    """Per sample, the worst case among ``results`` (all on the same inputs; :func:`worst_pick`).

    The returned result is named ``"worst-case(a+b+...)"``; its ``queries`` add up over the
    attacks.
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
    pick = worst_pick(
        torch.stack([r.success for r in results]), torch.stack([r.norms for r in results])
    )

    def gather(ts: list[Tensor]) -> Tensor:
        stacked = torch.stack(ts)
        idx = pick.view(1, -1, *([1] * (stacked.dim() - 2))).expand(1, *stacked.shape[1:])
        return stacked.gather(0, idx.to(stacked.device)).squeeze(0)

    return AttackResult(
        attack="worst-case(" + "+".join(r.attack for r in results) + ")",
        params={r.attack: r.params for r in results},
        threat=first.threat,
        x_adv=gather([r.x_adv for r in results]),
        success=gather([r.success for r in results]),
        norms=gather([r.norms for r in results]),
        queries=torch.stack([r.queries for r in results]).sum(dim=0),
        pred=gather([r.pred for r in results]),
        label=first.label,
        target=first.target,
        stopped=next((r.stopped for r in results if r.stopped), None),
        exhausted=_any_cut(results, pick),
    )


def _any_cut(results: Sequence[AttackResult], pick: Tensor) -> Tensor | None:
    """Worst-case samples that no attack broke and that some budget cut short."""
    cuts = [r.exhausted for r in results if r.exhausted is not None]
    if not cuts:
        return None
    broken = torch.stack([r.success for r in results]).any(dim=0)
    return torch.stack(cuts).any(dim=0) & ~broken


@dataclass(frozen=True)
class SampleRecord:
    """The outcome of one attack (or the clean pass) on one sample: one row of the run store.

    Attributes:
        index: the sample's index in the dataset.
        label: its true label.
        clean_pred: the model's prediction on the clean input.
        adv_pred: the prediction on the adversarial input (``clean_pred`` if not attacked).
        success: the attack succeeded (for samples misclassified clean: True, norm 0).
        norm: the perturbation's size in the threat model's norm.
        queries: images the attack sent to the model for this sample.
        target: the target class of a targeted attack, else ``None``.
        extras: attack-specific numbers (e.g. ``features_changed``).
        stopped: why a query budget ended the attack on this sample before it succeeded,
            else ``None``.
        certified: a certified lower bound on the sample's robust radius, where computed.
        shard: the shard that computed the record, in a sharded evaluation.
    """

    index: int
    label: int
    clean_pred: int
    adv_pred: int
    success: bool
    norm: float
    queries: int
    target: int | None = None
    extras: Mapping[str, float] = field(default_factory=dict)
    stopped: str | None = None
    certified: float | None = None
    shard: int | None = None

    @property
    def robust(self) -> bool:
        """Correct clean and under attack."""
        return self.clean_pred == self.label and self.adv_pred == self.label

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index, "label": self.label, "clean_pred": self.clean_pred,
            "adv_pred": self.adv_pred, "success": self.success, "norm": self.norm,
            "queries": self.queries, "target": self.target, "extras": dict(self.extras),
            "stopped": self.stopped, "certified": self.certified, "shard": self.shard,
        }  # fmt: skip


def worst_case_records(
    per_attack: Sequence[Sequence[SampleRecord]],
) -> tuple[list[SampleRecord], list[int]]:
    """The per-sample worst case over several attacks' records (:func:`worst_pick`).

    Every sequence holds the same samples in the same order. The worst case's ``queries`` add
    up over the attacks; its other fields are the picked attack's.

    Returns:
        The worst-case records and, per sample, the index of the attack picked.
    """
    if not per_attack:
        raise ValueError("worst_case_records needs at least one attack")
    n = len(per_attack[0])
    for recs in per_attack:
        if len(recs) != n or any(
            a.index != b.index for a, b in zip(recs, per_attack[0], strict=True)
        ):
            raise ValueError("worst_case_records needs records of the same samples in one order")
    if n == 0:
        return [], []
    success = torch.tensor([[r.success for r in recs] for recs in per_attack])
    norms = torch.tensor([[r.norm for r in recs] for recs in per_attack], dtype=torch.float64)
    pick = worst_pick(success, norms).tolist()
    out = []
    for i, a in enumerate(pick):
        r = per_attack[a][i]
        total = sum(recs[i].queries for recs in per_attack)
        cut = None if r.success else next((s[i].stopped for s in per_attack if s[i].stopped), None)
        out.append(replace(r, queries=total, target=None, extras={}, stopped=cut))
    return out, pick


@dataclass(frozen=True)
class Cell:
    """One attack under one threat model over a set of samples: the unit an evaluation runs,
    stores and resumes.

    Attributes:
        attack: a registered attack's name, or ``"clean"`` for the clean pass.
        norm: the threat model's norm.
        eps: its radius; ``inf`` for the single run of a minimal-perturbation attack.
        params: the attack's hyper-parameters (defaults filled in).
    """

    attack: str
    norm: str
    eps: float
    params: Mapping[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, str, float]:
        return (self.attack, self.norm, float(self.eps))

    def __hash__(self) -> int:
        return hash((self.key, repr(sorted(self.params.items()))))

    def __str__(self) -> str:
        return f"{self.attack} {self.norm} eps={self.eps:g}"


@dataclass(frozen=True, eq=False)
class Example:
    """One adversarial example kept from a run for the report's image grid.

    Attributes:
        index: the sample's dataset index.
        attack, norm, eps: the cell that produced it.
        x, x_adv: ``(*)`` the clean and adversarial input (on the CPU).
        label, clean_pred, adv_pred: the true label and the model's two predictions.
    """

    index: int
    attack: str
    norm: str
    eps: float
    x: Tensor
    x_adv: Tensor
    label: int
    clean_pred: int
    adv_pred: int


@dataclass(frozen=True)
class Summary:
    """Aggregate numbers of one row of an evaluation (an attack, or the worst case, at one
    threat model), computed from its :class:`SampleRecord` s.

    Attributes:
        attack, norm, eps, params: what the row is about.
        n: samples.
        robust: samples classified correctly clean and under attack.
        robust_accuracy: ``robust / n``, with its Wilson 95% interval ``ci_low, ci_high``.
        success_rate: among samples correct clean, the fraction the attack flipped (NaN if none
            was correct).
        mean_norm, median_norm: over the flipped samples (NaN if none).
        queries: images sent to the model, over all samples.
        wall_time: seconds spent computing the row's records.
        stopped: samples whose attack a query budget ended before it succeeded.
    """

    attack: str
    norm: str
    eps: float
    params: Mapping[str, Any]
    n: int
    robust: int
    robust_accuracy: float
    ci_low: float
    ci_high: float
    success_rate: float
    mean_norm: float
    median_norm: float
    queries: int
    wall_time: float
    stopped: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}
