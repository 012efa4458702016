"""Running one batch of one cell: a pure function of (model, samples, attack, threat, seed).

The runner attacks the samples of a batch that the model classifies correctly clean (the others
already fool it: success, norm 0, no queries) and returns one
:class:`~advlab.results.SampleRecord` per sample. Each sample's random stream is keyed by its
dataset index and the cell (:class:`~advlab.rng.SampleRNG`), so a sample's record does not
depend on the batch it was in, on its neighbours, or on the shard that computed it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from advlab.attacks.base import get_attack
from advlab.oracle import Oracle
from advlab.results import AttackResult, Cell, SampleRecord
from advlab.rng import SampleRNG, derive_seed
from advlab.threat import ThreatModel


@dataclass(frozen=True, eq=False)
class BatchOutput:
    """What :func:`run_batch` computed.

    Attributes:
        records: one per sample of the batch, in the batch's order.
        result: the attack's result on the attacked samples (``None`` if none was attacked).
        attacked: ``(m,)`` positions in the batch of the samples ``result`` covers.
    """

    records: list[SampleRecord]
    result: AttackResult | None
    attacked: Tensor


def clean_records(
    oracle: Oracle, x: Tensor, y: Tensor, indices: Tensor, *, shard: int | None = None
) -> list[SampleRecord]:
    """The clean pass: one label query per sample."""
    return _unattacked(indices, y, oracle.labels(x), queries=1, shard=shard)


def _unattacked(
    indices: Tensor, y: Tensor, pred: Tensor, *, queries: int, shard: int | None
) -> list[SampleRecord]:
    """Records of samples left as they are: the prediction is the clean one, success means
    misclassified clean, no perturbation."""
    return [
        SampleRecord(
            index=int(i),
            label=int(lab),
            clean_pred=int(p),
            adv_pred=int(p),
            success=p != lab,
            norm=0.0,
            queries=queries,
            shard=shard,
        )
        for i, lab, p in zip(indices.tolist(), y.tolist(), pred.tolist(), strict=True)
    ]


def run_batch(
    oracle: Oracle,
    x: Tensor,
    y: Tensor,
    indices: Tensor,
    clean_pred: Tensor,
    cell: Cell,
    *,
    lower: float,
    upper: float,
    seed: int,
    shard: int | None = None,
) -> BatchOutput:
    """Attack one batch under ``cell``.

    Args:
        oracle: the model.
        x, y: ``(B, *)`` inputs and ``(B,)`` labels of the batch.
        indices: ``(B,)`` their dataset indices (the keys of their random streams).
        clean_pred: ``(B,)`` the model's clean predictions.
        cell: the attack, its parameters and the threat model (``eps = inf`` for a minimal
            attack's single run).
        lower, upper: the input box.
        seed: the evaluation's root seed.
        shard: recorded in each record.
    """
    ok = clean_pred == y
    records = _unattacked(indices, y, clean_pred, queries=0, shard=shard)
    pos = ok.nonzero().squeeze(1)
    if pos.numel() == 0:
        return BatchOutput(records, None, pos)
    threat = ThreatModel(cell.norm, cell.eps, lower, upper)
    rng = SampleRNG(derive_seed(seed, *cell.key), indices[pos].to(x.device))
    spec = get_attack(cell.attack)
    res = spec(oracle, x[pos], y[pos], threat, seed=rng, **dict(cell.params))
    if len(res) != pos.numel():
        raise RuntimeError(f"internal error: {cell.attack} returned {len(res)} of {pos.numel()} results")  # fmt: skip
    attacked = res.records(indices[pos].tolist(), clean_pred[pos].tolist(), shard=shard)
    for j, r in zip(pos.tolist(), attacked, strict=True):
        records[j] = r
    return BatchOutput(records, res, pos)


def pred_tensor(records: list[SampleRecord], device: torch.device) -> Tensor:
    """``(B,)`` clean predictions of ``records``."""
    return torch.tensor([r.clean_pred for r in records], dtype=torch.long, device=device)
