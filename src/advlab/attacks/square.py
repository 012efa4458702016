"""Square attack: score-based random search over square-shaped updates (L-inf and L2).

Reference:
    Andriushchenko, Croce, Flammarion & Hein 2020, "Square Attack: a query-efficient black-box
    adversarial attack via random search" (ECCV), Algorithms 1-3 and Section 3.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from advlab.attacks.base import AttackRun, check_count, margin, register_attack
from advlab.errors import ConfigError
from advlab.oracle import Access
from advlab.threat import ThreatModel

#: Iterations (of 10,000) after which the paper halves the square's area fraction ``p``.
P_MILESTONES = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)
#: Redraws of a window's signs when the candidate would not change the image (L-inf).
_REDRAWS = 20


def p_schedule(p_init: float, it: int, n_iters: int) -> float:
    """The paper's piecewise-constant schedule of ``p``, the fraction of pixels a square covers.

    ``p`` starts at ``p_init`` and is halved at iterations 10, 50, 200, 500, 1000, 2000, 4000,
    6000 and 8000 of a 10,000-query run; other budgets rescale the iteration to ``it / n_iters
    * 10000`` first.
    """
    i = int(it / n_iters * 10000)
    halvings = sum(1 for m in P_MILESTONES if i > m)
    return p_init / 2**halvings


def _as_image(x: Tensor) -> Tensor:
    """``(B, C, H, W)`` view of a batch: images as they are, other inputs as ``1 x 1 x D``."""
    if x.dim() == 4:
        return x
    if x.dim() == 3:
        return x.unsqueeze(1)
    return x.reshape(x.shape[0], 1, 1, -1)


def _side(p: float, h: int, w: int, minimum: int = 1) -> tuple[int, int]:
    """Window height and width covering a fraction ``p`` of an ``h x w`` image: a square of
    side ``round(sqrt(p h w))`` (at most ``min(h, w) - 1``, as in the paper), or a segment of
    ``round(p w)`` for a one-pixel-high input."""
    if h > 1 and w > 1:
        s = max(minimum, round(math.sqrt(p * h * w)))
        s = min(s, max(1, min(h, w) - 1))
        return s, s
    length = h * w
    s = min(max(minimum, round(p * length)), max(1, length - 1))
    return (s, 1) if w == 1 else (1, s)


def _window_index(
    run: AttackRun, rows: Tensor, h: int, w: int, sh: int, sw: int
) -> tuple[Tensor, Tensor]:
    """Per-sample random window positions: ``(n, sh)`` row and ``(n, sw)`` column indices."""
    top = run.rng.integers(h - sh + 1, (), rows)
    left = run.rng.integers(w - sw + 1, (), rows)
    dev = run.x.device
    return (
        top.to(dev)[:, None] + torch.arange(sh, device=dev),
        left.to(dev)[:, None] + torch.arange(sw, device=dev),
    )


def _take(t: Tensor, ri: Tensor, ci: Tensor) -> Tensor:
    """``(n, C, sh, sw)`` windows of ``t`` (``(n, C, H, W)``) at per-sample positions."""
    n = torch.arange(t.shape[0], device=t.device)[:, None, None]
    return t[n, :, ri[:, :, None], ci[:, None, :]].permute(0, 3, 1, 2)


def _put(t: Tensor, ri: Tensor, ci: Tensor, v: Tensor) -> None:
    """Write ``v`` (``(n, C, sh, sw)``) into the windows of ``t`` in place."""
    n = torch.arange(t.shape[0], device=t.device)[:, None, None]
    t[n, :, ri[:, :, None], ci[:, None, :]] = v.permute(0, 2, 3, 1).to(t.dtype)


def _rect_pattern(a: int, b: int, device: torch.device) -> Tensor:
    """``(a, b)`` nested rectangles around the centre: a pixel at Chebyshev distance ``k`` from
    the centre gets ``sum_{j >= k} 1 / (j + 1)^2``, so the mass decays like ``1 / r^2`` from a
    peak in the middle (the paper's L2 update, Section 3.2). Unit L2 norm."""
    if a == 0 or b == 0:
        return torch.zeros(a, b, device=device)
    k = max(a // 2 + 1, b // 2 + 1)
    r = (torch.arange(a, device=device) - a // 2).abs()
    c = (torch.arange(b, device=device) - b // 2).abs()
    cheb = torch.maximum(r[:, None], c[None, :])
    w = 1.0 / torch.arange(1, k + 1, device=device, dtype=torch.float32) ** 2
    tail = w.flip(0).cumsum(0).flip(0)  # tail[j] = sum_{i >= j} w[i]
    out = tail[cheb.clamp(max=k - 1)]
    return out / out.norm()


def _square_pattern(sh: int, sw: int, device: torch.device) -> Tensor:
    """``(sh, sw)`` the L2 update's shape: the two halves of the window carry rectangle
    patterns of opposite sign (the paper's Fig. 2). Unit L2 norm."""
    top = sh // 2
    out = torch.cat([_rect_pattern(top, sw, device), -_rect_pattern(sh - top, sw, device)], dim=0)
    return out / out.norm().clamp(min=1e-12)


def _patterns(run: AttackRun, rows: Tensor, s: int, count: int) -> Tensor:
    """``(n, count, s, s)`` square patterns, each transposed with probability 1/2 (per sample)."""
    base = _square_pattern(s, s, run.x.device)
    flip = run.rng.uniform((count,), rows).to(run.x.device) < 0.5
    pats = base.expand(rows.shape[0], count, s, s)
    return torch.where(flip[:, :, None, None], base.t().expand_as(pats), pats)


def _signs(run: AttackRun, rows: Tensor, shape: tuple[int, ...]) -> Tensor:
    return (run.rng.integers(2, shape, rows).to(run.x.device) * 2 - 1).to(run.x.dtype)


def _loss(logits: Tensor, y: Tensor, target: Tensor | None) -> tuple[Tensor, Tensor]:
    """``(loss, margin)`` per sample, both minimized; success when the margin is below 0.

    Untargeted: the margin ``z_y - max_{j != y} z_j`` is the loss. Targeted: the cross-entropy
    of the target class, with the margin ``max_{j != t} z_j - z_t`` for the success test."""
    m = -margin(logits, y, target)
    if target is None:
        return m, m
    ce = torch.logsumexp(logits, dim=1) - logits.gather(1, target[:, None]).squeeze(1)
    return ce, m


def _init_linf(run: AttackRun, rows: Tensor, x: Tensor) -> Tensor:
    """Vertical stripes of ``+-eps``: one random sign per channel and column (paper, Alg. 2)."""
    c, _, w = x.shape[1:]
    stripes = _signs(run, rows, (c, 1, w)) * run.threat.eps
    return run.threat.clip_box(x + stripes)


def _init_l2(run: AttackRun, rows: Tensor, x: Tensor) -> Tensor:
    """A grid of squares carrying the L2 pattern with random signs, rescaled to norm ``eps``
    (paper, Section 3.2: the initialization of Alg. 3)."""
    n, c, h, w = x.shape
    s = max(1, min(h, w) // 5)
    gh, gw = max(1, h // s), max(1, w // s)
    oh, ow = (h - gh * s) // 2, (w - gw * s) // 2
    pats = _patterns(run, rows, s, gh * gw).view(n, 1, gh, gw, s, s)
    signs = _signs(run, rows, (c, gh, gw)).view(n, c, gh, gw, 1, 1)
    tiles = (pats * signs).permute(0, 1, 2, 4, 3, 5).reshape(n, c, gh * s, gw * s)
    delta = torch.zeros_like(x)
    delta[:, :, oh : oh + gh * s, ow : ow + gw * s] = tiles
    nrm = delta.flatten(1).norm(dim=1).clamp(min=1e-12)
    return run.threat.clip_box(x + delta * (run.threat.eps / nrm).view(-1, 1, 1, 1))


def _step_linf(run: AttackRun, rows: Tensor, x: Tensor, xb: Tensor, p: float) -> Tensor:
    """A candidate: the current perturbation with one random square set to ``+-eps`` per
    channel (paper, Alg. 2). Signs are redrawn where the square would not change the image."""
    n, c, h, w = x.shape
    eps = run.threat.eps
    sh, sw = _side(p, h, w)
    ri, ci = _window_index(run, rows, h, w, sh, sw)
    xw, bw = _take(x, ri, ci), _take(xb, ri, ci)
    sign = _signs(run, rows, (c, 1, 1))
    for _ in range(_REDRAWS):
        same = ((run.threat.clip_box(xw + sign * eps) - bw).abs() < 1e-7).flatten(1).all(dim=1)
        if not bool(same.any()):
            break
        redraw = _signs(run, rows[same], (c, 1, 1))
        sign[same] = redraw
    delta = xb - x
    _put(delta, ri, ci, (sign * eps).expand(n, c, sh, sw))
    return run.threat.clip_box(x + delta)


def _step_l2(run: AttackRun, rows: Tensor, x: Tensor, xb: Tensor, p: float) -> Tensor:
    """A candidate (paper, Alg. 3): the perturbation's mass in a second random square moves
    into a first one, which gets a new pattern of random sign; the whole perturbation is then
    rescaled to norm ``eps`` and clipped to the box."""
    n, c, h, w = x.shape
    eps = run.threat.eps
    s, _ = _side(p, h, w, minimum=3)
    if s % 2 == 0 and s + 1 <= min(h, w):
        s += 1
    if h == 1 or w == 1:
        s = 1
    ri1, ci1 = _window_index(run, rows, h, w, s, s)
    ri2, ci2 = _window_index(run, rows, h, w, s, s)
    delta = xb - x
    in1 = torch.zeros(n, 1, h, w, dtype=torch.bool, device=x.device)
    _put(in1, ri1, ci1, torch.ones(n, 1, s, s, dtype=torch.bool, device=x.device))
    in12 = in1.clone()
    _put(in12, ri2, ci2, torch.ones(n, 1, s, s, dtype=torch.bool, device=x.device))
    w1_norm = _take(delta, ri1, ci1).pow(2).sum(dim=(2, 3), keepdim=True).sqrt()  # (n, C, 1, 1)
    total = delta.flatten(1).pow(2).sum(dim=1).view(n, 1, 1, 1)
    both = (delta * in12).pow(2).sum(dim=(2, 3), keepdim=True)  # (n, C, 1, 1)
    new = _patterns(run, rows, s, 1)[:, :1] * _signs(run, rows, (c, 1, 1))  # (n, C, s, s)
    new = new + _take(delta, ri1, ci1) / (1e-10 + w1_norm)
    budget = ((eps**2 - total).clamp(min=0) / c + both).sqrt()
    new = new / new.pow(2).sum(dim=(2, 3), keepdim=True).sqrt().clamp(min=1e-12) * budget
    _put(delta, ri2, ci2, torch.zeros(n, c, s, s, device=x.device))
    _put(delta, ri1, ci1, new)
    nrm = delta.flatten(1).norm(dim=1).clamp(min=1e-12).view(n, 1, 1, 1)
    return run.threat.clip_box(x + delta / nrm * eps)


def _check(threat: ThreatModel, *, n_queries: int, p_init: float) -> None:
    check_count(n_queries=n_queries)
    if n_queries < 2:
        raise ConfigError(
            f"n_queries must be >= 2 (a search query and the verification), got {n_queries}"
        )
    if isinstance(p_init, bool) or not isinstance(p_init, int | float) or not 0 < p_init <= 1:
        raise ConfigError(f"p_init must be in (0, 1] (the paper: 0.05 to 0.8), got {p_init!r}")
    if not threat.bounded:
        raise ConfigError(
            "square is bounded by eps: give a finite eps, e.g. ThreatModel('linf', 0.3); for "
            "the smallest perturbation use a minimal attack such as 'hopskipjump'"
        )


@register_attack("square", norms=("linf", "l2"), needs=Access.SCORES, check=_check)
def square(run: AttackRun, *, n_queries: int = 10000, p_init: float = 0.8) -> dict[str, Tensor]:
    """Square attack: random search with square-shaped updates, one query per iteration.

    L-inf (Alg. 2): start from vertical stripes of ``+-eps``; each iteration sets a random
    ``s x s`` square to ``+-eps`` (one sign per channel). L2 (Alg. 3): start from a grid of
    squares carrying a ``1/r^2``-like pattern of norm ``eps``; each iteration moves the mass of
    one random square into another that gets a new pattern, keeping the norm at ``eps``. A
    candidate is kept when it lowers the loss: the margin ``z_y - max_{j != y} z_j``
    (untargeted) or the target's cross-entropy (targeted), computed from the scores (the log of
    a probability oracle's answers). The side ``s`` follows the paper's schedule of ``p``, the
    fraction of pixels a square covers (:func:`p_schedule`). A sample stops as soon as its
    margin is negative (it succeeded), and its queries so far are recorded.

    Every sample draws its squares and signs from its own random stream (``run.rng``), so its
    result does not depend on its batch. Budget aware: under a per-sample query budget, a
    sample that cannot pay the next query keeps its best point.

    Args:
        n_queries: the most queries one sample may cost, the final verification included
            (so ``AttackResult.queries <= n_queries``): the initial point, up to
            ``n_queries - 2`` iterations and the verification (the paper's budget: 10,000).
        p_init: the initial fraction ``p`` of pixels a square covers. The paper uses 0.8 on
            MNIST, 0.05 (L-inf) and 0.1 (L2) on ImageNet.

    Call: ``square(model, x, y, ThreatModel("linf", 0.3), n_queries=10000)``; needs scores
    (logits or probabilities), never gradients. ``target=`` makes it targeted.

    Shape:
        x: ``(B, C, H, W)`` images (other inputs are treated as ``1 x 1 x D``); output matches.

    Returns:
        AttackResult, with ``extras["queries_to_success"]``: ``(B,)`` float, the queries a
        sample had spent when its search first succeeded (NaN where it never did).

    Reference:
        Andriushchenko et al. 2020, "Square Attack" (ECCV).
    """
    x0, y, target, threat = run.x, run.y, run.target, run.threat
    x = _as_image(x0)
    n = x.shape[0]
    found = torch.full((n,), math.nan, dtype=torch.float64, device=x.device)
    idx = torch.arange(n, device=x.device)
    if run.limited:
        idx = idx[run.affordable(idx, 1)]
    if idx.numel() == 0:
        return {"queries_to_success": found}
    init = _init_linf if threat.norm == "linf" else _init_l2
    xb = init(run, idx, x[idx])
    loss, marg = _loss(run.scores(xb.reshape(-1, *x0.shape[1:]), idx), y[idx], _sub(target, idx))
    best = torch.empty_like(x)
    best[idx] = xb
    run.best[idx] = xb.reshape(-1, *x0.shape[1:])
    lmin = torch.full((n,), math.inf, dtype=loss.dtype, device=x.device)
    mmin = torch.full((n,), math.inf, dtype=loss.dtype, device=x.device)
    lmin[idx], mmin[idx] = loss, marg
    done = marg < 0
    found[idx[done]] = run.queries[idx[done]].double()
    idx = idx[~done]
    step = _step_linf if threat.norm == "linf" else _step_l2
    for it in range(n_queries - 2):
        if run.limited and idx.numel():
            idx = idx[run.affordable(idx, 1)]
        if idx.numel() == 0:
            break
        cand = step(run, idx, x[idx], best[idx], p_schedule(p_init, it, n_queries))
        loss, marg = _loss(
            run.scores(cand.reshape(-1, *x0.shape[1:]), idx), y[idx], _sub(target, idx)
        )
        better = loss < lmin[idx]
        up = idx[better]
        best[up] = cand[better]
        run.best[up] = cand[better].reshape(-1, *x0.shape[1:])
        lmin[up], mmin[up] = loss[better], marg[better]
        done = mmin[idx] < 0
        found[idx[done]] = run.queries[idx[done]].double()
        idx = idx[~done]
    return {"queries_to_success": found}


def _sub(t: Tensor | None, rows: Tensor) -> Tensor | None:
    return None if t is None else t[rows]
