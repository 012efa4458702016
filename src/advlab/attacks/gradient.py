"""Gradient attacks bounded by eps: FGSM and PGD in L-inf, L2 and L1.

References:
    Goodfellow, Shlens & Szegedy 2015, "Explaining and Harnessing Adversarial Examples" (FGSM).
    Kurakin, Goodfellow & Bengio 2017, "Adversarial Examples in the Physical World" (BIM).
    Madry et al. 2018, "Towards Deep Learning Models Resistant to Adversarial Attacks" (PGD).
    Tramer & Boneh 2019, "Adversarial Training and Robustness for Multiple Perturbations"
    (sparse L1 steepest descent, SLIDE).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from advlab.attacks.base import (
    LOSSES,
    AttackRun,
    attack_loss,
    check_count,
    check_positive,
    margin,
    register_attack,
)
from advlab.errors import ConfigError
from advlab.threat import ThreatModel


def _bcast(v: Tensor, like: Tensor) -> Tensor:
    return v.view(-1, *([1] * (like.dim() - 1)))


def steepest_step(g: Tensor, x: Tensor, threat: ThreatModel, l1_sparsity: float) -> Tensor:
    """Unit-size steepest-ascent direction for ``g`` in the threat model's norm.

    * ``linf``: ``sign(g)``;
    * ``l2``: ``g / ||g||_2``;
    * ``l1``: sign of ``g`` on the top ``(1 - l1_sparsity)`` fraction of coordinates by ``|g|``,
      ignoring coordinates already at the box edge in the direction of ascent, scaled to L1
      norm 1 (Tramer & Boneh 2019).

    Shape: ``g, x: (B, *)`` -> ``(B, *)``.
    """
    if threat.norm == "linf":
        return g.sign()
    if threat.norm == "l2":
        # Gradients of a saturated cross-entropy can be ~1e-16: rescale by the largest entry
        # first, so that no norm floor shortens the step (an all-zero gradient stays zero).
        flat = g.reshape(g.shape[0], -1)
        g = g / _bcast(flat.abs().amax(dim=1).clamp(min=torch.finfo(g.dtype).tiny), g)
        n = g.reshape(g.shape[0], -1).norm(dim=1).clamp(min=1e-12)
        return g / _bcast(n, g)
    # l1: sparse steepest descent
    flat_g = g.reshape(g.shape[0], -1)
    flat_x = x.reshape(x.shape[0], -1)
    blocked = ((flat_x >= threat.upper) & (flat_g > 0)) | ((flat_x <= threat.lower) & (flat_g < 0))
    score = flat_g.abs().masked_fill(blocked, -1.0)
    k = max(1, round((1.0 - l1_sparsity) * flat_g.shape[1]))
    top = score.topk(k, dim=1)
    d = torch.zeros_like(flat_g)
    d.scatter_(1, top.indices, flat_g.gather(1, top.indices).sign() * (top.values > 0))
    n = d.abs().sum(dim=1, keepdim=True).clamp(min=1.0)
    return (d / n).view_as(g)


def _check_common(threat: ThreatModel, loss: str, l1_sparsity: float) -> None:
    if loss not in LOSSES:
        raise ConfigError(f"unknown loss {loss!r}; use one of {', '.join(LOSSES)}")
    if not 0.0 <= l1_sparsity < 1.0:
        raise ConfigError(f"l1_sparsity must be in [0, 1), got {l1_sparsity!r}")
    if not threat.bounded:
        raise ConfigError(f"{threat.norm} gradient attacks need a finite eps, got eps=inf")


def _check_fgsm(
    threat: ThreatModel, *, loss: str, l1_sparsity: float, random_start: bool,
    step_size: float | None,
) -> None:  # fmt: skip
    _check_common(threat, loss, l1_sparsity)
    if not isinstance(random_start, bool):
        raise ConfigError(f"random_start must be True or False, got {random_start!r}")
    if step_size is not None:
        check_positive(step_size=step_size)
        if not math.isfinite(step_size):
            raise ConfigError(f"step_size must be finite, got {step_size!r}")


@register_attack("fgsm", norms=("linf", "l2", "l1"), check=_check_fgsm)
def fgsm(
    run: AttackRun,
    *,
    loss: str = "ce",
    l1_sparsity: float = 0.95,
    random_start: bool = False,
    step_size: float | None = None,
) -> None:
    """Fast gradient (sign) method: one steepest-ascent step of size eps (Goodfellow et al. 2015).

    In L-inf this is FGSM, ``x + eps * sign(grad)``; in L2 and L1 it is the fast gradient
    method with the norm's steepest direction (see :func:`steepest_step`). With
    ``random_start`` the step is taken from a uniform random point of the ball and projected
    back onto it: R+FGSM (Tramer et al. 2018) and the FGSM of fast adversarial training (Wong,
    Rice & Kolter 2020, step ``1.25 * eps``).

    Args:
        loss: ``"ce"`` (cross-entropy) or ``"margin"`` (C&W logit margin).
        l1_sparsity: for L1, the fraction of coordinates left out of the step.
        random_start: step from a random point of the threat set instead of ``x``.
        step_size: absolute step length in the threat norm; ``None``: ``eps``.

    Call: ``fgsm(model, x, y, threat, *, target=None, seed=0, **params)`` (every attack's call;
    see :mod:`advlab.attacks.base`): ``model`` a torch classifier returning logits (used as is,
    its train/eval mode untouched) or a white-box oracle; ``x`` ``(B, *)`` inputs in the box;
    ``y`` ``(B,)`` labels; ``target`` ``(B,)`` target classes for a targeted attack (step down
    the target's loss). ``seed`` draws the random start (unused without one).

    Returns:
        AttackResult; ``queries`` is 2 per sample (the gradient query and the verification).

    Example:
        >>> res = fgsm(model, x, y, ThreatModel("linf", 0.1))
        >>> res.robust_accuracy
    """
    x, threat = run.x, run.threat
    step = threat.eps if step_size is None else step_size
    x0 = threat.random_start(x, run.rng) if random_start else x.clone()
    x0.requires_grad_(True)
    obj = attack_loss(run.scores(x0, grad=True), run.y, run.target, loss).sum()
    (g,) = torch.autograd.grad(obj, x0)
    x0 = x0.detach()
    run.best.copy_(threat.project(x0 + step * steepest_step(g, x0, threat, l1_sparsity), x))


def _check_pgd(
    threat: ThreatModel, *, steps: int, step_size: float | None, restarts: int,
    random_start: bool, loss: str, early_stop: bool, l1_sparsity: float,
) -> None:  # fmt: skip
    _check_common(threat, loss, l1_sparsity)
    check_count(steps=steps, restarts=restarts)
    if step_size is not None:
        check_positive(step_size=step_size)
        if not math.isfinite(step_size):
            raise ConfigError(f"step_size must be finite, got {step_size!r}")


def _resolve_pgd(threat: ThreatModel | None, params: dict[str, Any]) -> dict[str, Any]:
    if threat is not None and params["step_size"] is None:
        return {**params, "step_size": 2.5 * threat.eps / params["steps"]}
    return params


@register_attack("pgd", norms=("linf", "l2", "l1"), check=_check_pgd, resolve=_resolve_pgd)
def pgd(
    run: AttackRun,
    *,
    steps: int = 40,
    step_size: float | None = None,
    restarts: int = 1,
    random_start: bool = True,
    loss: str = "ce",
    early_stop: bool = True,
    l1_sparsity: float = 0.95,
) -> None:
    """Projected gradient descent in L-inf, L2 or L1 (Madry et al. 2018).

    Each step moves by ``step_size`` along the steepest-ascent direction of the loss in the
    threat model's norm and projects back onto the ball and the box. Every iterate's logits
    (computed anyway for the gradient) score it by the C&W margin, and the best iterate per
    sample over all steps and restarts is returned, so an attack never loses a success it found.
    With ``random_start=False`` and ``restarts=1`` this is BIM / iterative FGSM (Kurakin et al.).

    Args:
        steps: gradient steps per restart.
        step_size: absolute step length in the threat norm; ``None``: ``2.5 * eps / steps``.
        restarts: independent runs; restarts after the first begin at random points.
        random_start: begin the first run at a random point of the threat set.
        loss: ``"ce"`` (cross-entropy) or ``"margin"`` (C&W logit margin).
        early_stop: stop working on a sample once it is misclassified (or hits its target).
            Robust accuracy is unchanged; it saves time on weak models.
        l1_sparsity: for L1, the fraction of coordinates left out of each step.

    Call: ``pgd(model, x, y, threat, *, target=None, seed=0, **params)``: ``threat`` with a
    finite eps; ``target`` ``(B,)`` for a targeted attack; ``seed`` an int or a
    :class:`~advlab.rng.SampleRNG` for the random starts (each sample draws from its own stream,
    so its start does not depend on the batch it is in). Same seed, same output.

    Shape:
        x: ``(B, C, H, W)`` or any ``(B, *)``; outputs match.

    Returns:
        AttackResult; ``queries`` counts the images sent per sample (one per iterate: ``steps
        + 1`` per restart, fewer with early stop) plus the verification.

    Example:
        >>> res = pgd(model, x, y, ThreatModel("linf", 0.3), steps=40, step_size=0.01)
        >>> res.robust_accuracy
    """
    x, y, threat, target, best = run.x, run.y, run.threat, run.target, run.best
    assert step_size is not None  # resolved at the door
    b = x.shape[0]
    best_score = torch.full((b,), float("-inf"), device=x.device, dtype=x.dtype)
    for r in range(restarts):
        idx = torch.arange(b, device=x.device)
        if early_stop:
            idx = idx[best_score <= 0]
        if idx.numel() == 0:
            break
        xs, ys = x[idx], y[idx]
        ts = target[idx] if target is not None else None
        start = random_start or r > 0
        xr = threat.random_start(xs, run.rng, idx) if start else xs.clone()
        for t in range(steps + 1):
            if run.limited:  # samples out of query budget stop here, keeping their best iterate
                fits = run.affordable(idx)
                if not bool(fits.all()):
                    idx, xs, ys, xr = idx[fits], xs[fits], ys[fits], xr[fits]
                    ts = ts[fits] if ts is not None else None
                    if idx.numel() == 0:
                        break
            last = t == steps
            xr.requires_grad_(not last)
            logits = run.scores(xr, idx, grad=not last)
            score = margin(logits.detach(), ys, ts)
            better = score > best_score[idx]
            best_score[idx] = torch.where(better, score, best_score[idx])
            best[idx] = torch.where(_bcast(better, xr), xr.detach(), best[idx])
            if last:
                break
            (g,) = torch.autograd.grad(attack_loss(logits, ys, ts, loss).sum(), xr)
            xr = threat.project(
                xr.detach() + step_size * steepest_step(g, xr, threat, l1_sparsity), xs
            )
            if early_stop:
                keep = score <= 0
                if not bool(keep.all()):
                    idx, xs, ys, xr = idx[keep], xs[keep], ys[keep], xr[keep]
                    ts = ts[keep] if ts is not None else None
                    if idx.numel() == 0:
                        break
