"""DeepFool: the nearest decision boundary by repeated linearization (L2 and L-inf).

Reference:
    Moosavi-Dezfooli, Fawzi & Frossard 2016, "DeepFool: a simple and accurate method to fool deep
    neural networks" (CVPR), Algorithm 2 (multi-class) and Section 3.3 (general Lp).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from advlab.attacks.base import AttackRun, check_count, decisive, noise_floor, register_attack
from advlab.errors import ConfigError
from advlab.threat import ThreatModel

_TINY = 1e-12


def _check(
    threat: ThreatModel, *, steps: int, overshoot: float, candidates: int, refine: int
) -> None:
    check_count(steps=steps, candidates=candidates)
    if isinstance(refine, bool) or not (isinstance(refine, int) and refine >= 0):
        raise ConfigError(f"refine must be an integer >= 0 (0 disables it), got {refine!r}")
    if not (isinstance(overshoot, (int, float)) and math.isfinite(overshoot) and overshoot >= 0):
        raise ConfigError(f"overshoot must be a finite number >= 0 (e.g. 0.02), got {overshoot!r}")


@register_attack("deepfool", norms=("l2", "linf"), minimal=True, targeted=False, check=_check)
def deepfool(
    run: AttackRun,
    *,
    steps: int = 50,
    overshoot: float = 0.02,
    candidates: int = 10,
    refine: int = 6,
) -> None:
    """DeepFool: step to the nearest linearized decision boundary until the label flips.

    At the iterate ``x_i``, each candidate class ``k`` defines a linearized boundary with
    ``w_k = grad z_k - grad z_y`` and ``f_k = z_k - z_y``; the closest one in the threat norm,
    ``l = argmin_k |f_k| / ||w_k||_q`` (``q`` the dual norm: 2 for L2, 1 for L-inf), gives the
    step ``r = -f_l / ||w_l||_2^2 * w_l`` (L2) or ``r = -f_l / ||w_l||_1 * sign(w_l)`` (L-inf),
    the paper's ``|f_l| / ||w_l||_q^q * |w_l|^(q-1) * sign(w_l)`` while ``f_l < 0``. The steps
    add up to ``r_tot``, and the returned point is ``x + (1 + overshoot) * r_tot``.

    Three details that matter in practice:

    * The overshoot multiplies the **total** perturbation, as in the paper (Section 3.2), not
      each step. Scaling each step instead only adds ``overshoot`` times the last, ever shorter
      step, so iterates creep up to the boundary without crossing it.
    * The stopping test runs on the overshot point ``clip(x + (1 + overshoot) * r_tot)``, and so
      does the forward pass whose gradients give ``w``; the values ``f`` are carried to the
      iterate ``x_i = clip(x + r_tot)`` to first order, ``f(x_i) ~ f + w . (x_i - overshot)``.
      That is one forward pass per step, and the fixed point has ``x_i`` on the linearized
      boundary with the overshot point beyond it. (Linearizing at the overshot point and
      stepping from there, as the authors' code does, has its fixed point with the *overshot*
      point on the boundary; that code adds ``1e-4`` to every step to get across.)
    * Iterates are clipped to the input box. Before each new step is added, the running total is
      replaced by its box-feasible part, ``clip(x + r_tot) - x``; the new step itself is added
      unclipped. So coordinates pinned at the box do not build up a hidden excess that later
      steps would first have to undo, and the overshoot still acts on the whole perturbation.

    DeepFool is untargeted by design: it crosses the nearest boundary, whatever class lies beyond.

    A point counts as past the boundary when its margin clears the noise floor ``tau``
    (:func:`~advlab.attacks.base.decisive`), so the answer stays adversarial in any batch; the
    linearized boundaries are accordingly ``f_k = tau`` rather than ``f_k = 0``.

    Args:
        steps: maximum number of linearization steps.
        overshoot: ``eta >= 0``; the returned point is ``x + (1 + eta) * r_tot``.
        candidates: the number of classes other than ``y`` considered, the top ones by the
            clean logits (the authors' code uses the top 10 classes including the predicted one).
        refine: after the label flips, bisect ``refine`` times for the smallest scale ``s`` of
            the final ``r_tot`` in ``[1 - eta, 1 + eta]`` at which ``clip(x + s * r_tot)`` is
            still adversarial (one query per sample per bisection; a bracket query at
            ``1 - eta`` first), and return that point; ``0`` returns the paper's point
            ``x + (1 + eta) * r_tot``. The overshoot exists to get across the boundary; any part
            of it beyond that is distance the attack does not need. 6 steps place the answer
            within ``2 eta / 64`` (0.06% for ``eta = 0.02``) of the boundary along ``r_tot``.

    Call: ``deepfool(model, x, y, threat, **params)`` with an ``l2`` or ``linf`` threat model,
    usually ``eps = inf`` (read ``norms``); with a finite ``eps`` the perturbation is projected
    onto the ball and success re-checked. No ``target``: DeepFool is untargeted. Deterministic.
    Budget aware: under a per-sample query budget, a sample that runs out keeps its best point.

    Shape:
        x: ``(B, *)``; the output matches.

    Returns:
        AttackResult. Samples where no label flip is found within ``steps`` keep the original
        input. ``queries`` counts the images sent per sample (each step's image is followed by
        ``candidates`` backward passes for the gradient differences, which are not queries).

    Example:
        >>> res = deepfool(model, x, y, ThreatModel("l2", math.inf))
        >>> res.norms[res.success].median()
    """
    x, y, threat, x_adv = run.x, run.y, run.threat, run.best
    b = x.shape[0]
    r_tot = torch.zeros_like(x)
    idx = torch.arange(b, device=x.device)
    q = x.clone()  # the paper's iterate x_i = clip(x + r_tot)
    xi = x.clone()  # the overshot point clip(x + (1 + overshoot) * r_tot), where the model is run
    cand = torch.empty(0)
    for t in range(steps + 1):
        if run.limited:
            fits = run.affordable(idx)
            idx, q, xi = idx[fits], q[fits], xi[fits]
        if idx.numel() == 0:
            break
        last = t == steps
        xi = xi.detach().requires_grad_(not last)
        logits = run.scores(xi, idx, grad=not last)
        if t == 0:  # the clean logits rank the candidate classes
            k = min(candidates, logits.shape[1] - 1)
            cand = torch.zeros(b, k, dtype=torch.long, device=x.device)
            cand[idx] = (
                logits.detach().scatter(1, y[idx][:, None], float("-inf")).topk(k, 1).indices
            )
        fooled = decisive(logits, y[idx])
        x_adv[idx[fooled]] = xi.detach()[fooled]
        if last or bool(fooled.all()):
            break
        keep = ~fooled
        ys, cs = y[idx][:, None], cand[idx]
        z_y = logits.gather(1, ys)
        # distances to the decisive boundary f_k = floor rather than f_k = 0 (decisive())
        need = noise_floor(logits, y[idx])[keep, None]
        f = (logits.gather(1, cs) - z_y).detach()[keep] - need  # (n, k) at the overshot point
        ws = []
        for j in range(cs.shape[1]):
            diff = (logits.gather(1, cs[:, j : j + 1]) - z_y).sum()
            (g,) = torch.autograd.grad(diff, xi, retain_graph=j < cs.shape[1] - 1)
            ws.append(g[keep].flatten(1))
        w = torch.stack(ws, dim=1)  # (n, k, D)
        # First-order values at x_i itself: f(x_i) ~ f(overshot) + w . (x_i - overshot).
        f = f + (w * (q[keep] - xi.detach()[keep]).flatten(1)[:, None, :]).sum(dim=2)
        idx, xs, q = idx[keep], x[idx[keep]], q[keep]
        dual = w.norm(dim=2) if threat.norm == "l2" else w.abs().sum(dim=2)
        best = (f.abs() / (dual + _TINY)).argmin(dim=1)
        rows = torch.arange(len(idx), device=x.device)
        wl, fl, nl = w[rows, best], f[rows, best][:, None], dual[rows, best][:, None]
        if threat.norm == "l2":
            r = -fl / (nl.pow(2) + _TINY) * wl
        else:
            r = -fl / (nl + _TINY) * wl.sign()
        r_tot[idx] = (q - xs) + r.view_as(xs)
        q = threat.clip_box(xs + r_tot[idx])
        xi = threat.clip_box(xs + (1.0 + overshoot) * r_tot[idx])
    if refine > 0 and overshoot > 0:
        _least_overshoot(run, r_tot, overshoot, refine)


def _least_overshoot(run: AttackRun, r_tot: Tensor, overshoot: float, refine: int) -> None:
    """Bisect for the smallest scale ``s`` in ``[1 - overshoot, 1 + overshoot]`` at which
    ``clip(x + s * r_tot)`` is decisively adversarial, and put that point in ``run.best``.

    Only samples whose answer is ``clip(x + (1 + overshoot) * r_tot)`` are refined (the upper
    end is adversarial by construction); the answer only ever moves to a point found
    adversarial, so the search never loses a success.
    """
    x, y, x_adv, threat = run.x, run.y, run.best, run.threat
    with torch.no_grad():
        full = threat.clip_box(x + (1.0 + overshoot) * r_tot)
        sel = torch.nonzero(
            (x_adv != x).flatten(1).any(dim=1) & (x_adv == full).flatten(1).all(dim=1)
        ).squeeze(1)
        hi = torch.full((sel.numel(),), 1.0 + overshoot, dtype=torch.float64, device=x.device)
        lo = torch.full_like(hi, max(0.0, 1.0 - overshoot))
        probes = [lo.clone()] + [None] * refine  # the bracket's lower end, then bisections
        for probe in probes:
            if run.limited and sel.numel():
                fits = run.affordable(sel)
                sel, lo, hi = sel[fits], lo[fits], hi[fits]
            if sel.numel() == 0:
                return
            s = lo if probe is not None else (lo + hi) / 2
            shape = (-1,) + (1,) * (x.dim() - 1)
            cand = threat.clip_box(x[sel] + s.to(x.dtype).view(shape) * r_tot[sel])
            adv = decisive(run.scores(cand, sel), y[sel])
            if probe is not None:  # the bracket: an adversarial lower end means start from 0
                x_adv[sel[adv]] = cand[adv]
                hi = torch.where(adv, lo, hi)
                lo = torch.where(adv, torch.zeros_like(lo), lo)
                continue
            x_adv[sel[adv]] = cand[adv]
            hi = torch.where(adv, s, hi)
            lo = torch.where(adv, lo, s)
