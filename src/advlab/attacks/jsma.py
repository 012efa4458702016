"""JSMA: the Jacobian-based saliency map attack on pairs of features (L0).

Reference:
    Papernot, McDaniel, Jha, Fredrikson, Celik & Swami 2016, "The Limitations of Deep Learning in
    Adversarial Settings" (IEEE EuroS&P), Algorithms 1 to 3 and Equation 10 (pairwise saliency).
    Carlini & Wagner 2017, "Towards Evaluating the Robustness of Neural Networks", Section VI
    (JSMA-Z on the logits versus JSMA-F on the softmax).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from advlab.attacks.base import AttackRun, decisive, register_attack
from advlab.errors import ConfigError
from advlab.threat import ThreatModel

#: Largest number of pair scores held in memory at once by :func:`best_pairs`.
PAIR_BLOCK = 1 << 22
#: Rows of the pair-score matrix per block; smaller blocks skip more of the mirrored half.
ROWS_PER_BLOCK = 256


def best_pairs(
    alpha: Tensor, beta: Tensor, domain: Tensor, *, increase: bool, block: int = PAIR_BLOCK
) -> tuple[Tensor, Tensor, Tensor]:
    """The most salient pair of features per sample (Papernot et al. 2016, Equation 10).

    For a pair ``(p, q)`` with ``a = alpha_p + alpha_q`` (the target's derivative) and
    ``b = beta_p + beta_q`` (the other classes' summed derivative), the pair is admissible when
    ``a > 0`` and ``b < 0`` (increasing features) or ``a < 0`` and ``b > 0`` (decreasing), and
    both features lie in the search domain; its score is ``-a * b``. Both cases are computed as
    ``relu(s * a) * relu(-s * b)`` with ``s = +1`` or ``-1``, which equals the score on
    admissible pairs and 0 elsewhere. The ``D x D`` score matrix is built in blocks of at most
    ``block`` entries, so memory stays bounded for any ``D``.

    Shape:
        alpha, beta: ``(n, D)``; domain: ``(n, D)`` bool.

    Returns:
        ``(p, q, ok)``: ``(n,)`` int64 feature indices with ``p != q`` and an ``(n,)`` bool mask,
        False where no admissible pair exists (``p`` and ``q`` are then meaningless).
    """
    n, d = alpha.shape
    sign = 1.0 if increase else -1.0
    a_all = (sign * alpha).masked_fill(~domain, float("-inf"))  # out of domain: relu(...) = 0
    b_all = -sign * beta
    best = torch.zeros(n, dtype=alpha.dtype, device=alpha.device)
    p = torch.zeros(n, dtype=torch.long, device=alpha.device)
    q = torch.zeros(n, dtype=torch.long, device=alpha.device)
    # Scores are symmetric, so row block [r0, r1) only needs the columns from r0 on.
    rows_per = max(1, min(d, ROWS_PER_BLOCK, block // max(1, d)))
    samples_per = max(1, block // (rows_per * d))
    for s0 in range(0, n, samples_per):
        s = slice(s0, min(n, s0 + samples_per))
        a_s, b_s = a_all[s], b_all[s]
        for r0 in range(0, d, rows_per):
            r1 = min(d, r0 + rows_per)
            score = (a_s[:, r0:r1, None] + a_s[:, None, r0:]).clamp_(min=0)
            score.mul_((b_s[:, r0:r1, None] + b_s[:, None, r0:]).clamp_(min=0))
            diag = torch.arange(r1 - r0, device=alpha.device)
            score[:, diag, diag] = 0  # a pair is two different features
            val, arg = score.flatten(1).max(dim=1)
            better = val > best[s]
            best[s] = torch.where(better, val, best[s])
            p[s] = torch.where(better, r0 + arg // (d - r0), p[s])
            q[s] = torch.where(better, r0 + arg % (d - r0), q[s])
    return p, q, best > 0


def _check(threat: ThreatModel, *, theta: float, gamma: float, use_logits: bool) -> None:
    if not (isinstance(theta, (int, float)) and math.isfinite(theta) and theta != 0):
        raise ConfigError(
            f"theta must be a finite non-zero number (+1 increases features, -1 decreases), got {theta!r}"
        )
    if not (isinstance(gamma, (int, float)) and 0 < gamma <= 1):
        raise ConfigError(f"gamma must be a fraction in (0, 1] (e.g. 0.1), got {gamma!r}")


def features_changed(x: Tensor, x_adv: Tensor) -> dict[str, Tensor]:
    """``{"features_changed": (B,) int64}``: entries of ``x_adv`` that differ from ``x``."""
    return {"features_changed": (x_adv != x).flatten(1).sum(dim=1).to(torch.long)}


@register_attack("jsma", norms=("l0",), minimal=True, check=_check, extras=features_changed)
def jsma(
    run: AttackRun, *, theta: float = 1.0, gamma: float = 0.1, use_logits: bool = False
) -> None:
    """Jacobian saliency map attack: change the most salient pair of features until the target wins.

    Each iteration computes the forward derivative of the target output, ``alpha``, and of the
    sum of the other outputs, ``beta``; picks the admissible pair with the largest saliency
    ``-(alpha_p + alpha_q)(beta_p + beta_q)`` (see :func:`best_pairs`); adds ``theta`` to both
    features, clipped to the box; and removes features that reached the box edge from the
    search domain. Features already at the edge in the direction of ``theta`` are never in it.

    The derivatives are multiplied, feature by feature, by the change the feature can still
    make, ``min(|theta|, distance to the box edge in the direction of theta)``, so the saliency
    ranks pairs by the first-order effect of the step actually taken. The paper assumes every
    feature moves by ``theta``; on MNIST most stroke pixels are already near 1, and with
    ``theta = 1`` the unscaled rule spends budget on pixels that can move by 0.01. On 200
    full-MNIST test digits against ``papernot-mnist`` (random targets, ``gamma = 0.1``) scaling
    raises the success rate of JSMA-Z from 63.5% to 78.0% (median 44 to 34 features changed)
    and of JSMA-F from 94.0% to 97.0% (median 28 to 22).
    The loop stops when the prediction hits the target, when another pair could exceed the
    budget of ``floor(gamma * D)`` changed features, or when no admissible pair is left.

    JSMA is targeted by definition. With ``target=None`` each sample is attacked toward the
    class the model ranks highest after ``y`` on the clean input (its runner-up), and the run
    counts as a success as soon as the prediction leaves ``y`` (whichever class it goes to).

    Args:
        theta: signed change applied to each selected feature, in input units: ``+1`` is the
            paper's increasing variant (features pushed to ``upper`` on a ``[0, 1]`` box),
            ``-1`` the decreasing variant. Must be finite and non-zero.
        gamma: the largest fraction of the ``D`` features that may be changed, in ``(0, 1]``
            (the paper's ``Upsilon``, as a fraction).
        use_logits: differentiate the softmax probabilities (False, the default: JSMA-F, on the
            network output ``F`` of Papernot et al.) or the logits (True: JSMA-Z, the row of
            Carlini & Wagner's Table IV). JSMA-F is the stronger on the digits above (97.0%
            against 78.0% success).

    Call: ``jsma(model, x, y, threat, *, target=None, **params)`` with an ``l0`` threat model,
    usually ``eps = inf``; a finite ``eps`` (a number of features) also caps the budget,
    ``min(floor(gamma * D), eps)``. ``target``: see above for ``None``. Deterministic. Budget
    aware: a sample out of query budget keeps its best point and the others go on.

    Shape:
        x: ``(B, *)``, any layout; features are the ``D`` entries of one flattened sample.

    Returns:
        AttackResult with ``extras["features_changed"]``: ``(B,)`` int64, the number of features
        that differ between ``x_adv`` and ``x`` (0 where the attack failed: failures return the
        original input). ``queries`` counts forward passes per sample; each is followed by two
        backward passes (``alpha`` and the sum of all outputs).

    Example:
        >>> res = jsma(model, x, y, ThreatModel("l0", math.inf), target=t)
        >>> res.extras["features_changed"][res.success].float().mean()
    """
    x, y, threat, target = run.x, run.y, run.threat, run.target
    b = x.shape[0]
    d = x[0].numel()
    budget = math.floor(gamma * d)
    if threat.bounded:
        budget = min(budget, int(threat.eps))
    flat = x.reshape(b, d)
    tgt = target if target is not None else torch.empty_like(y)
    pick_runner_up = target is None  # chosen from the first query's logits (the clean input)
    increase = theta > 0
    cur = flat.clone()
    out = run.best.view(b, d)
    idx = torch.arange(b, device=x.device)
    while idx.numel() > 0:
        if run.limited:
            idx = idx[run.affordable(idx)]
            if idx.numel() == 0:
                break
        xa = cur[idx].view(-1, *x.shape[1:]).requires_grad_(True)
        z = run.scores(xa, idx, grad=True)
        if pick_runner_up:
            tgt[idx] = z.detach().scatter(1, y[idx][:, None], float("-inf")).argmax(dim=1)
            pick_runner_up = False
        hit = decisive(z, y[idx], None if target is None else tgt[idx])
        out[idx[hit]] = cur[idx[hit]]
        rows = cur[idx]
        spent = (rows != flat[idx]).sum(dim=1)
        # how far each feature can still move toward the edge; the search domain is room > 0
        # (features only ever move toward that edge, so once there they stay out)
        room = (threat.upper - rows) if increase else (rows - threat.lower)
        go = ~hit & (spent + 2 <= budget) & ((room > 0).sum(dim=1) >= 2)
        if not bool(go.any()):
            break
        f = z if use_logits else z.softmax(dim=1)
        (alpha,) = torch.autograd.grad(f.gather(1, tgt[idx][:, None]).sum(), xa, retain_graph=True)
        (total,) = torch.autograd.grad(f.sum(), xa)
        alpha, total = alpha.reshape(-1, d)[go], total.reshape(-1, d)[go]
        idx, room = idx[go], room[go]
        # derivatives times the change each feature can still make: first-order effects
        step = room.clamp(max=abs(theta))
        alpha, total = alpha * step, total * step
        p, q, ok = best_pairs(alpha, total - alpha, room > 0, increase=increase)
        idx, p, q = idx[ok], p[ok], q[ok]
        for j in (p, q):
            cur[idx, j] = (cur[idx, j] + theta).clamp(threat.lower, threat.upper)
