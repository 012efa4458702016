"""Score-based black-box attacks by zeroth-order gradient estimation: ZOO and AutoZOOM.

Both minimize the C&W objective ``||x' - x||_2^2 + c * f(x')`` (minimal-perturbation L2
attacks) using only the oracle's scores, with the loss of ZOO on log-probabilities::

    f(x') = max(log p_y(x') - max_{j != y} log p_j(x'), -kappa)        (untargeted)
    f(x') = max(max_{j != t} log p_j(x') - log p_t(x'), -kappa)        (targeted)

written here as ``max(kappa' - margin(x'), 0)`` (the same function shifted by ``kappa``), where
``margin`` is the log-probability margin of :func:`advlab.attacks.base.margin` (a difference of
log-probabilities of one softmax equals the difference of its logits, so logits and
probabilities give the same ``f``), and ``kappa' = max(kappa, noise floor)`` is the margin a
success must have (:func:`advlab.attacks.base.decisive`), as in advlab's C&W.

* :func:`zoo` estimates the gradient one coordinate at a time by symmetric differences
  (:func:`coordinate_probes`, :func:`coordinate_estimate`) and takes coordinate Adam steps,
  128 coordinates per iteration, with a per-sample binary search over ``c`` (ZOO-ADAM).
* :func:`autozoom` estimates it along random unit directions (:func:`random_probes`,
  :func:`random_estimate`) in a reduced space (bilinear resizing or an autoencoder's decoder),
  with one direction until the first success and ``q`` after it.

**Queries.** Every image goes through :meth:`~advlab.attacks.base.AttackRun.scores` with its
sample's row: all probes of an iteration, of all samples, in one call. Each sample's count is
exact and a per-sample budget is honoured by dropping, before an iteration, the samples that
cannot pay for all of it (:meth:`~advlab.attacks.base.AttackRun.affordable`); they keep their
best point. Every probe is a real image whose scores come back, so every probe (not only the
current iterate) is checked for success, and the successful image with the smallest distortion
is kept in :attr:`~advlab.attacks.base.AttackRun.best`. Both attacks return the per-sample
extra ``queries_to_success``: the queries spent when the first success came back (``NaN`` for
samples never successful); ``AttackResult.queries`` counts everything spent, fine-tuning and
the final verification included.

**Threat model.** Every probe is projected onto the threat set (the box, and the L2 ball when
``eps`` is finite) before it is sent, so a finite ``eps`` is respected by every query and by
the answer.

References:
    Chen, Zhang, Sharma, Yi & Hsieh 2017, "ZOO: Zeroth Order Optimization Based Black-box
    Attacks to Deep Neural Networks without Training Substitute Models", AISec (Algorithm 2,
    ZOO-ADAM; Section III-E, attack-space dimension reduction, hierarchical attack and
    importance sampling).
    Tu, Ting, Chen, Liu, Zhang, Yi, Hsieh & Cheng 2019, "AutoZOOM: Autoencoder-based Zeroth
    Order Optimization Method for Attacking Black-box Neural Networks", AAAI (random gradient
    estimate, Eq. 3; dimension reduction; the two stages).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from advlab.attacks.base import (
    AttackRun,
    check_count,
    check_positive,
    decisive,
    margin,
    noise_floor,
    register_attack,
)
from advlab.errors import ConfigError
from advlab.oracle import Access
from advlab.rng import SampleRNG
from advlab.threat import ThreatModel

_B1, _B2, _ADAM_EPS = 0.9, 0.999, 1e-8
#: Upper end of the binary search over ``c`` before any success (as C&W's reference).
_C_UNBOUNDED = 1e10
#: AutoZOOM stops multiplying ``c`` by 10 above this (the reference's cap).
_C_CAP = 1e8
#: Abort rule of C&W: stop a binary-search step when the loss fell by less than this fraction.
_ABORT_RTOL = 1e-4

REDUCTIONS = ("bilinear", "ae", "none")


# ---------------------------------------------------------------------------------------------
# the loss and the two estimators


def log_prob_loss(
    logits: Tensor, y: Tensor, target: Tensor | None, confidence: float = 0.0
) -> Tensor:
    """ZOO's loss ``max(kappa' - margin, 0)`` on log-probabilities (module docstring).

    Shape:
        logits: ``(n, K)`` (logits or log-probabilities); y, target: ``(n,)`` -> ``(n,)``.
    """
    need = noise_floor(logits, y, target).clamp(min=confidence)
    return (need - margin(logits, y, target)).clamp(min=0)


def coordinate_probes(v: Tensor, coords: Tensor, h: float) -> Tensor:
    """The points of ZOO's symmetric differences: ``v``, then ``v + h e_i``, then ``v - h e_i``.

    Shape:
        v: ``(n, d)``; coords: ``(n, k)`` coordinate indices -> ``(n, 1 + 2k, d)`` (row 0 the
        point, rows ``1..k`` the plus probes, rows ``k+1..2k`` the minus probes).
    """
    n, k = coords.shape
    out = v[:, None, :].repeat(1, 1 + 2 * k, 1)
    step = torch.full((n, k, 1), h, dtype=v.dtype, device=v.device)
    idx = coords[:, :, None]
    out[:, 1 : 1 + k].scatter_add_(2, idx, step)
    out[:, 1 + k :].scatter_add_(2, idx, -step)
    return out


def coordinate_estimate(losses: Tensor, h: float) -> Tensor:
    """ZOO's coordinate-wise derivative estimates ``(L(v + h e_i) - L(v - h e_i)) / 2h``.

    Shape:
        losses: ``(n, 1 + 2k)`` the loss at :func:`coordinate_probes`'s points -> ``(n, k)``.
    """
    k = (losses.shape[1] - 1) // 2
    return (losses[:, 1 : 1 + k] - losses[:, 1 + k :]) / (2 * h)


def unit_directions(rng: SampleRNG, rows: Tensor, q: int, d: int, like: Tensor) -> Tensor:
    """``(len(rows), q, d)`` directions uniform on the unit sphere, from each row's stream."""
    u = rng.normal((q, d), rows, dtype=like.dtype, device=like.device)
    return u / u.norm(dim=2, keepdim=True).clamp_min(torch.finfo(like.dtype).tiny)


def random_probes(v: Tensor, u: Tensor, beta: float) -> Tensor:
    """AutoZOOM's probe points: ``v``, then ``v + beta u_j`` for each direction.

    Shape:
        v: ``(n, d)``; u: ``(n, q, d)`` -> ``(n, 1 + q, d)``.
    """
    return torch.cat([v[:, None, :], v[:, None, :] + beta * u], dim=1)


def random_estimate(losses: Tensor, u: Tensor, beta: float, count: Tensor | None = None) -> Tensor:
    """AutoZOOM's random gradient estimate ``(d / q) sum_j (L(v + beta u_j) - L(v)) / beta u_j``.

    With ``u`` uniform on the unit sphere, ``E[d u u^T] = I``, so the estimate is unbiased up
    to the ``O(beta)`` curvature term (the scale ``b = d`` of the paper's Eq. 3).

    Args:
        losses: ``(n, 1 + q)`` the loss at :func:`random_probes`'s points.
        u: ``(n, q, d)`` the directions.
        beta: the smoothing parameter.
        count: ``(n,)`` how many of the ``q`` directions each row uses (the rest are ignored);
            default all.

    Shape:
        -> ``(n, d)``.
    """
    n, q, d = u.shape
    diff = (losses[:, 1:] - losses[:, :1]) / beta
    if count is None:
        count = torch.full((n,), q, device=u.device)
    used = torch.arange(q, device=u.device)[None, :] < count[:, None]
    diff = torch.where(used, diff, torch.zeros_like(diff))
    return (d / count.to(u.dtype))[:, None] * torch.einsum("nq,nqd->nd", diff.to(u.dtype), u)


# ---------------------------------------------------------------------------------------------
# shared machinery


class _Rows:
    """Named per-row tensors of the samples still being attacked, filtered together."""

    def __init__(self, **t: Tensor | None) -> None:
        self.t: dict[str, Tensor | None] = dict(t)

    def __getitem__(self, k: str) -> Tensor:
        v = self.t[k]
        assert v is not None
        return v

    def get(self, k: str) -> Tensor | None:
        return self.t[k]

    def __setitem__(self, k: str, v: Tensor | None) -> None:
        self.t[k] = v

    def keep(self, mask: Tensor) -> None:
        self.t = {k: (v[mask] if v is not None else None) for k, v in self.t.items()}

    @property
    def n(self) -> int:
        return int(self["idx"].shape[0])


def _resize(v: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resizing of ``(n, C, h, w)`` to ``(n, C, *size)`` (identity at the same size)."""
    if tuple(v.shape[-2:]) == size:
        return v
    return F.interpolate(v, size=size, mode="bilinear", align_corners=False)


class _Tracker:
    """The best successful probe of every sample and the queries to its first success."""

    def __init__(self, run: AttackRun) -> None:
        b, dev = run.n, run.x.device
        self.run = run
        self.best_d = torch.full((b,), math.inf, device=dev, dtype=torch.float64)
        self.first = torch.full((b,), math.nan, device=dev, dtype=torch.float64)

    def update(self, rows: Tensor, imgs: Tensor, dist: Tensor, ok: Tensor, group: int) -> Tensor:
        """Record the successes of one call; ``imgs, dist, ok`` hold ``group`` probes per row
        (``ok`` False for probes not sent). Returns ``(n,)`` bool: a success in this call."""
        n = rows.shape[0]
        d = torch.where(ok, dist.double(), torch.full_like(dist, math.inf, dtype=torch.float64))
        d = d.view(n, group)
        dmin, j = d.min(dim=1)
        hit = torch.isfinite(dmin)
        new = hit & torch.isnan(self.first[rows])
        if bool(new.any()):
            self.first[rows[new]] = self.run.queries[rows[new]].double()
        better = hit & (dmin < self.best_d[rows])
        if bool(better.any()):
            r = rows[better]
            self.best_d[r] = dmin[better]
            pick = (torch.arange(n, device=rows.device) * group + j)[better]
            self.run.best[r] = imgs[pick].to(self.run.best.dtype)
        return hit


def _start(run: AttackRun, confidence: float, tracker: _Tracker) -> Tensor:
    """One query per sample at ``x``: ``(B,)`` bool, the samples that need no perturbation."""
    rows = torch.arange(run.n, device=run.x.device)
    if run.limited:
        rows = rows[run.affordable(rows, 1)]
    done = torch.zeros(run.n, dtype=torch.bool, device=run.x.device)
    if rows.numel() == 0:
        return done
    logits = run.scores(run.x[rows], rows)
    ok = decisive(logits, run.y[rows], _take(run.target, rows), confidence)
    tracker.update(rows, run.x[rows], torch.zeros(rows.shape, device=rows.device), ok, 1)
    done[rows[ok]] = True
    return done


def _take(t: Tensor | None, rows: Tensor) -> Tensor | None:
    return None if t is None else t[rows]


def _evaluate(
    run: AttackRun, imgs: Tensor, rows: Tensor, x_rows: Tensor, confidence: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Send ``imgs`` (one per entry of ``rows``): ``(f, squared distance, success)``."""
    logits = run.scores(imgs, rows)
    y, t = run.y[rows], _take(run.target, rows)
    f = log_prob_loss(logits, y, t, confidence)
    dist = (imgs - x_rows).flatten(1).pow(2).sum(dim=1)
    return f, dist, decisive(logits, y, t, confidence)


def _check_common(confidence: float, c_init: float, steps: int, lr: float) -> None:
    if not (isinstance(confidence, int | float) and math.isfinite(confidence) and confidence >= 0):
        raise ConfigError(f"confidence must be a finite number >= 0, got {confidence!r}")
    check_count(steps=steps)
    check_positive(c_init=c_init, lr=lr)
    if not (math.isfinite(c_init) and math.isfinite(lr)):
        raise ConfigError("c_init and lr must be finite")


# ---------------------------------------------------------------------------------------------
# ZOO


def _check_zoo(
    threat: ThreatModel, *, confidence: float, c_init: float, binary_search_steps: int,
    steps: int, coordinates: int, h: float, lr: float, abort_early: bool, importance: bool,
    importance_every: int, regions: int, space_sizes: Sequence[int] | None,
    grow_at: Sequence[int] | None,
) -> None:  # fmt: skip
    _check_common(confidence, c_init, steps, lr)
    check_count(binary_search_steps=binary_search_steps, coordinates=coordinates,
                importance_every=importance_every, regions=regions)  # fmt: skip
    check_positive(h=h)
    if not math.isfinite(h):
        raise ConfigError(f"h must be finite, got {h!r}")
    sizes = list(space_sizes) if space_sizes is not None else []
    grow = list(grow_at) if grow_at is not None else []
    if space_sizes is not None and (
        not sizes
        or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in sizes)
        or sizes != sorted(set(sizes))
    ):
        raise ConfigError(
            f"space_sizes must be increasing integers >= 1 (attack-space heights, e.g. [14, 28]), "
            f"got {space_sizes!r}"
        )
    if (
        len(grow) != max(0, len(sizes) - 1)
        or grow != sorted(set(grow))
        or any(isinstance(g, bool) or not isinstance(g, int) or g < 1 for g in grow)
    ):
        raise ConfigError(
            f"grow_at must list one increasing iteration >= 1 per step up in space_sizes "
            f"({max(0, len(sizes) - 1)} for {space_sizes!r}), got {grow_at!r}"
        )


def _importance(delta: Tensor, shape: tuple[int, int, int], regions: int) -> Tensor:
    """ZOO's importance sampling probabilities: the largest ``|delta|`` of each of
    ``regions x regions`` regions (max pooling), spread over its coordinates and normalized;
    uniform for a sample whose ``delta`` is all zero. ``(n, d)``."""
    n = delta.shape[0]
    c, h, w = shape
    a = delta.abs().view(n, c, h, w)
    kh, kw = max(1, math.ceil(h / regions)), max(1, math.ceil(w / regions))
    pooled = F.max_pool2d(a, (kh, kw), ceil_mode=True)
    up = pooled.repeat_interleave(kh, dim=2).repeat_interleave(kw, dim=3)[:, :, :h, :w]
    p = up.reshape(n, -1)
    s = p.sum(dim=1, keepdim=True)
    uniform = torch.full_like(p, 1.0 / p.shape[1])
    return torch.where(s > 0, p / s.clamp_min(torch.finfo(p.dtype).tiny), uniform)


def _sample_coords(
    rng: SampleRNG, rows: Tensor, d: int, k: int, prob: Tensor | None, like: Tensor
) -> Tensor:
    """``(n, k)`` distinct coordinates per row: uniform, or weighted by ``prob`` without
    replacement (Efraimidis-Spirakis keys ``log(u) / p``)."""
    u = rng.uniform((d,), rows, dtype=torch.float64, device=like.device)
    if k >= d:
        return torch.arange(d, device=like.device).expand(rows.shape[0], d).contiguous()
    keys = u if prob is None else torch.log(u) / prob.double()
    return keys.topk(k, dim=1).indices


@register_attack("zoo", norms=("l2",), needs=Access.SCORES, minimal=True, check=_check_zoo)
def zoo(
    run: AttackRun,
    *,
    confidence: float = 0.0,
    c_init: float = 1.0,
    binary_search_steps: int = 9,
    steps: int = 1000,
    coordinates: int = 128,
    h: float = 1e-4,
    lr: float = 0.01,
    abort_early: bool = True,
    importance: bool = False,
    importance_every: int = 100,
    regions: int = 8,
    space_sizes: Sequence[int] | None = None,
    grow_at: Sequence[int] | None = None,
) -> dict[str, Tensor]:
    """ZOO: coordinate-wise zeroth-order C&W L2 attack with coordinate Adam (Chen et al. 2017).

    Each iteration picks ``coordinates`` distinct coordinates of the attack space per sample,
    sends the current point and its ``2 * coordinates`` symmetric probes ``v +- h e_i`` (one
    oracle call for all samples), estimates each coordinate's derivative of
    ``||x' - x||^2 + c f(x')`` by symmetric differences, and takes one Adam step on each of
    those coordinates with its own moment estimates and step count (the paper's ZOO-ADAM,
    Algorithm 2). Without a resized attack space the perturbation is kept inside the box after
    every step (the paper's projection). Every binary-search step restarts from ``x`` with fresh
    Adam state; ``c`` follows C&W's per-sample search (``10 c`` until a first success, then
    bisection). The smallest-distortion success of every probe is the answer.

    Args:
        confidence: ``kappa >= 0``, the log-probability margin a success must have.
        c_init: first ``c``.
        binary_search_steps: values of ``c`` tried per sample.
        steps: iterations per binary-search step (each costs ``1 + 2 * coordinates`` queries
            per sample).
        coordinates: coordinates estimated per iteration (the paper: 128).
        h: the finite-difference step (the paper: 1e-4).
        lr: Adam's learning rate (the paper: 0.01).
        abort_early: C&W's rule: end a sample's binary-search step when its loss fell by less
            than 0.01% over the last ``steps // 10`` iterations.
        importance: ZOO's importance sampling: every ``importance_every`` iterations (and when
            the attack space grows) coordinates are drawn with probabilities proportional to
            the largest ``|perturbation|`` of their region, the image cut in ``regions x
            regions`` regions (the paper: 8 x 8). Images only.
        importance_every: see ``importance``.
        regions: see ``importance``.
        space_sizes: the hierarchical attack: attack-space heights, increasing (e.g.
            ``[14, 28]`` on MNIST, ``[32, 64, 128]`` on ImageNet in the paper), widths scaled
            with the image; the perturbation is the bilinear upsampling of the attack-space
            variable. Default: the image itself (the paper uses no hierarchy on MNIST).
        grow_at: the iterations (of each binary-search step) at which the attack space moves
            to the next size: the variable is resized and Adam restarts.

    Call: ``zoo(model, x, y, threat, *, target=None, seed=0, **params)`` with an ``l2`` threat
    model (usually ``eps = inf``) and a model revealing scores. Randomness (the coordinates)
    comes from each sample's own stream.

    Shape:
        x: ``(B, *)``; images ``(B, C, H, W)`` for ``importance`` and ``space_sizes``.

    Returns:
        AttackResult with the extra ``queries_to_success`` (module docstring).

    Reference:
        Chen et al. 2017, Algorithm 2 and Section III-E.
    """
    x, threat = run.x, run.threat
    b, dev, dt = x.shape[0], x.device, x.dtype
    image = x.dim() == 4
    if (importance or space_sizes is not None) and not image:
        raise ConfigError(
            "importance sampling and space_sizes need (B, C, H, W) images; pass images or drop "
            "these options"
        )
    full_d = x[0].numel()
    if image:
        C, H, W = (int(s) for s in x.shape[1:])
        sizes = [int(s) for s in space_sizes] if space_sizes is not None else [H]
        if sizes[-1] > H:
            raise ConfigError(f"space_sizes {list(sizes)} exceed the image height {H}")
        shapes = [(C, s, max(1, round(s * W / H))) for s in sizes]
    else:
        shapes = [(full_d, 1, 1)]
    grows = [int(g) for g in grow_at] if grow_at is not None else []
    tracker = _Tracker(run)
    todo = torch.nonzero(~_start(run, confidence, tracker)).squeeze(1)
    c = torch.full((b,), float(c_init), device=dev, dtype=torch.float64)
    lo, hi = torch.zeros_like(c), torch.full_like(c, _C_UNBOUNDED)
    lower = (threat.lower - x).flatten(1)
    upper = (threat.upper - x).flatten(1)
    every = steps // 10

    def decode(v: Tensor, shape: tuple[int, int, int]) -> Tensor:
        if not image:
            return v
        small = v.view(-1, *shape)
        return _resize(small, (H, W)).reshape(v.shape[0], full_d)

    for _bs in range(binary_search_steps):
        if todo.numel() == 0:
            break
        level = 0
        shape = shapes[0]
        d = math.prod(shape)
        k = min(coordinates, d)
        rs = _Rows(
            idx=todo, delta=torch.zeros(todo.numel(), d, device=dev, dtype=dt),
            m=torch.zeros(todo.numel(), d, device=dev, dtype=dt),
            v=torch.zeros(todo.numel(), d, device=dev, dtype=dt),
            t=torch.zeros(todo.numel(), d, device=dev, dtype=dt),
            prev=torch.full((todo.numel(),), math.inf, device=dev, dtype=torch.float64),
            prob=None,
        )  # fmt: skip
        found = torch.zeros(b, dtype=torch.bool, device=dev)
        for it in range(steps):
            if level + 1 < len(shapes) and it == grows[level]:
                level += 1
                new = shapes[level]
                n = rs.n
                grown = _resize(rs["delta"].view(n, *shape), new[1:]).reshape(n, -1)
                shape, d = new, math.prod(new)
                k = min(coordinates, d)
                rs["delta"] = grown
                for name in ("m", "v", "t"):
                    rs[name] = torch.zeros_like(grown)
                if importance:
                    rs["prob"] = _importance(grown, shape, regions)
            elif importance and it > 0 and it % importance_every == 0:
                rs["prob"] = _importance(rs["delta"], shape, regions)
            group = 1 + 2 * k
            if run.limited:
                fits = run.affordable(rs["idx"], group)
                if not bool(fits.all()):
                    rs.keep(fits)
            if rs.n == 0:
                break
            idx = rs["idx"]
            n = idx.shape[0]
            coords = _sample_coords(run.rng, idx, d, k, rs.get("prob"), x)
            probes = coordinate_probes(rs["delta"], coords, h)  # (n, group, d)
            rows = idx.repeat_interleave(group)
            x_rows = x[rows]
            imgs = threat.project(
                x_rows + decode(probes.view(n * group, d), shape).view_as(x_rows), x_rows
            )
            f, dist, ok = _evaluate(run, imgs, rows, x_rows, confidence)
            found[idx] |= tracker.update(idx, imgs, dist, ok, group)
            loss = (dist.double() + c[rows] * f.double()).view(n, group)
            g = coordinate_estimate(loss, h).to(dt)
            # coordinate Adam (each coordinate with its own step count)
            t = rs["t"].gather(1, coords) + 1
            m = _B1 * rs["m"].gather(1, coords) + (1 - _B1) * g
            v = _B2 * rs["v"].gather(1, coords) + (1 - _B2) * g * g
            rs["t"].scatter_(1, coords, t)
            rs["m"].scatter_(1, coords, m)
            rs["v"].scatter_(1, coords, v)
            corr = torch.sqrt(1 - _B2**t) / (1 - _B1**t)
            step = lr * corr * m / (v.sqrt() + _ADAM_EPS)
            delta = rs["delta"]
            delta.scatter_(1, coords, delta.gather(1, coords) - step)
            if d == full_d:  # the box, in the attack space (the paper's projection)
                torch.maximum(delta, lower[idx], out=delta)
                torch.minimum(delta, upper[idx], out=delta)
            if abort_early and every > 0 and it % every == 0:
                cur = loss[:, 0]
                keep = cur <= rs["prev"] * (1 - _ABORT_RTOL)
                rs["prev"] = cur
                if not bool(keep.all()):
                    rs.keep(keep)
        hi = torch.where(found, torch.minimum(hi, c), hi)
        lo = torch.where(found, lo, torch.maximum(lo, c))
        c = torch.where(found | (hi < _C_UNBOUNDED / 10), (lo + hi) / 2, c * 10)
        todo = todo[~run.exhausted[todo]]
    return {"queries_to_success": tracker.first.to(torch.float32)}


# ---------------------------------------------------------------------------------------------
# AutoZOOM


def _resolve_autozoom(threat: ThreatModel | None, params: dict[str, Any]) -> dict[str, Any]:
    if params["reduction"] is None:
        return {**params, "reduction": "ae" if params["codec"] is not None else "bilinear"}
    return params


def _check_autozoom(
    threat: ThreatModel, *, reduction: str, codec: str | None, reduced_size: int | None,
    confidence: float, c_init: float, steps: int, switch_every: int, lr: float, q: int,
    beta: float | None, exact_distortion: bool,
) -> None:  # fmt: skip
    _check_common(confidence, c_init, steps, lr)
    check_count(switch_every=switch_every, q=q)
    if reduction not in REDUCTIONS:
        raise ConfigError(f"unknown reduction {reduction!r}; use one of {', '.join(REDUCTIONS)}")
    if reduction == "ae":
        if codec is None:
            raise ConfigError(
                "reduction='ae' needs codec='path/to/codec.safetensors' (train one with "
                "`advlab train-codec`)"
            )
        if not isinstance(codec, str | Path) or not Path(codec).expanduser().exists():
            raise ConfigError(f"codec file {codec!r} does not exist; check the path")
    elif codec is not None:
        raise ConfigError(f"codec= is used only with reduction='ae', not {reduction!r}")
    if reduced_size is not None:
        check_count(reduced_size=reduced_size)
        if reduction != "bilinear":
            raise ConfigError("reduced_size applies to reduction='bilinear' only")
    if beta is not None and not (isinstance(beta, int | float) and 0 < beta < math.inf):
        raise ConfigError(f"beta must be a finite number > 0 or None (1/d), got {beta!r}")


@register_attack(
    "autozoom", norms=("l2",), needs=Access.SCORES, minimal=True, check=_check_autozoom,
    resolve=_resolve_autozoom,
)  # fmt: skip
def autozoom(
    run: AttackRun,
    *,
    reduction: str | None = None,
    codec: str | None = None,
    reduced_size: int | None = None,
    confidence: float = 0.0,
    c_init: float = 1.0,
    steps: int = 2000,
    switch_every: int = 100,
    lr: float = 0.01,
    q: int = 4,
    beta: float | None = None,
    exact_distortion: bool = True,
) -> dict[str, Tensor]:
    """AutoZOOM: random-direction zeroth-order C&W L2 attack in a reduced space (Tu et al. 2019).

    The perturbation is ``D(z)`` for a variable ``z`` of a reduced space of dimension ``d``:
    bilinear upsampling of a small image (AutoZOOM-BiLIN), an autoencoder's decoder
    (AutoZOOM-AE, ``D(z) = dec(z) - dec(0)`` so that ``z = 0`` is no perturbation), or the
    identity. Each iteration sends the current point and ``q'`` probes ``z + beta u_j`` along
    random unit directions, estimates the gradient of ``c f`` with :func:`random_estimate`, adds
    the gradient of the distortion ``||x' - x||^2`` (computed exactly: it needs no query; with
    ``exact_distortion=False`` it is estimated with the rest, as in the paper) and takes an Adam
    step on ``z``.

    **Two stages.** Until a sample's first success ``q' = 1`` (the cheapest estimate, to find
    an adversarial example fast); at the first success Adam restarts and ``q' = q`` for the
    fine-tuning of the distortion. ``c`` follows the reference's per-sample schedule: every
    ``switch_every`` iterations it is bisected if the window found a success, else raised
    (``10 c`` until a success bounds it), without restarting ``z``; in the second stage Adam
    restarts at each switch.

    Args:
        reduction: ``"bilinear"``, ``"ae"`` or ``"none"``; default ``"ae"`` when ``codec`` is
            given, else ``"bilinear"``.
        codec: path of an autoencoder saved by ``advlab train-codec``
            (:func:`advlab.models.codec.save_codec`), for ``reduction="ae"``; its input shape
            must be the images'.
        reduced_size: height of the bilinear reduced space (default: half the image's, 14 on
            MNIST); the width is scaled with the image.
        confidence: ``kappa >= 0``.
        c_init: first ``c``.
        steps: iterations per sample (each costs ``1 + q'`` queries).
        switch_every: iterations between updates of ``c``.
        lr: Adam's learning rate.
        q: directions per iteration after the first success.
        beta: the smoothing parameter; default ``1 / d`` (the paper's choice).
        exact_distortion: compute the distortion's gradient exactly (default) rather than
            estimate it from the probes.

    Call: ``autozoom(model, x, y, threat, *, target=None, seed=0, **params)`` with an ``l2``
    threat model (usually ``eps = inf``) and a model revealing scores.

    Shape:
        x: ``(B, C, H, W)`` for ``"bilinear"`` and ``"ae"``; any ``(B, *)`` for ``"none"``.

    Returns:
        AttackResult with the extra ``queries_to_success`` (module docstring).

    Reference:
        Tu et al. 2019, Algorithm 1, Eq. 3 (random gradient estimate), Section 3 (dimension
        reduction, the two stages).
    """
    x, threat = run.x, run.threat
    dev, dt = x.device, x.dtype
    assert reduction is not None  # resolved at the door
    if reduction != "none" and x.dim() != 4:
        raise ConfigError(
            f"reduction={reduction!r} needs (B, C, H, W) images; use reduction='none' for "
            f"inputs of shape {tuple(x.shape[1:])}"
        )
    full_d = x[0].numel()
    decoder = None
    if reduction == "ae":
        from advlab.models.codec import load_codec

        assert codec is not None
        ae = load_codec(codec, map_location=dev).to(dt)
        if tuple(ae.in_shape) != tuple(x.shape[1:]):
            raise ConfigError(
                f"the codec takes images of shape {tuple(ae.in_shape)}, not "
                f"{tuple(x.shape[1:])}; train one on this data with `advlab train-codec`"
            )
        decoder = ae.decoder
        for p in decoder.parameters():
            p.requires_grad_(False)
        zshape: tuple[int, ...] = ae.latent_shape
        with torch.no_grad():
            base = decoder(torch.zeros(1, *zshape, device=dev, dtype=dt))
    elif reduction == "bilinear":
        C, H, W = (int(s) for s in x.shape[1:])
        s = reduced_size if reduced_size is not None else max(1, H // 2)
        if s > H:
            raise ConfigError(f"reduced_size {s} exceeds the image height {H}")
        zshape = (C, s, max(1, round(s * W / H)))
    else:
        zshape = (full_d,)
    d = math.prod(zshape)
    bt = float(beta) if beta is not None else 1.0 / d

    def decode(z: Tensor) -> Tensor:
        if reduction == "none":
            return z.view(-1, *x.shape[1:])
        small = z.view(-1, *zshape)
        if decoder is not None:
            return decoder(small) - base
        return _resize(small, (int(x.shape[2]), int(x.shape[3])))

    tracker = _Tracker(run)
    todo = torch.nonzero(~_start(run, confidence, tracker)).squeeze(1)
    nt = todo.numel()
    rs = _Rows(
        idx=todo, z=torch.zeros(nt, d, device=dev, dtype=dt),
        m=torch.zeros(nt, d, device=dev, dtype=dt), v=torch.zeros(nt, d, device=dev, dtype=dt),
        t=torch.zeros(nt, device=dev, dtype=dt),
        c=torch.full((nt,), float(c_init), device=dev, dtype=torch.float64),
        lo=torch.zeros(nt, device=dev, dtype=torch.float64),
        hi=torch.full((nt,), _C_UNBOUNDED, device=dev, dtype=torch.float64),
        stage2=torch.zeros(nt, dtype=torch.bool, device=dev),
        window=torch.zeros(nt, dtype=torch.bool, device=dev),
    )  # fmt: skip
    for it in range(steps):
        if run.limited and rs.n:
            cost = torch.where(rs["stage2"], 1 + q, 2)
            fits = torch.ones_like(rs["stage2"])
            for k in (2, 1 + q):
                sel = cost == k
                if bool(sel.any()):
                    fits[sel] = run.affordable(rs["idx"][sel], k)
            if not bool(fits.all()):
                rs.keep(fits)
        if rs.n == 0:
            break
        idx, s2 = rs["idx"], rs["stage2"]
        n = idx.shape[0]
        count = torch.where(s2, q, 1)
        u = torch.zeros(n, q, d, device=dev, dtype=dt)
        if bool((~s2).any()):
            u[~s2, :1] = unit_directions(run.rng, idx[~s2], 1, d, x)
        if bool(s2.any()):
            u[s2] = unit_directions(run.rng, idx[s2], q, d, x)
        z = rs["z"]
        probes = random_probes(z, u, bt)  # (n, 1 + q, d)
        sent = torch.arange(1 + q, device=dev)[None, :] <= count[:, None]  # (n, 1 + q)
        x_all = x[idx].repeat_interleave(1 + q, dim=0)
        with torch.no_grad():
            imgs_all = threat.project(x_all + decode(probes.reshape(n * (1 + q), d)), x_all)
        mask = sent.flatten()
        rows = idx.repeat_interleave(1 + q)[mask]
        imgs = imgs_all[mask]
        f_s, dist_s, ok_s = _evaluate(run, imgs, rows, x_all[mask], confidence)
        f = torch.zeros(n * (1 + q), device=dev, dtype=torch.float64)
        dist = torch.zeros_like(f)
        ok = torch.zeros(n * (1 + q), dtype=torch.bool, device=dev)
        f[mask], dist[mask], ok[mask] = f_s.double(), dist_s.double(), ok_s
        hit = tracker.update(idx, imgs_all, dist, ok, 1 + q)
        cq = rs["c"].repeat_interleave(1 + q)
        loss = (cq * f + (0 if exact_distortion else dist)).view(n, 1 + q)
        g = random_estimate(loss, u, bt, count).to(dt)
        if exact_distortion:
            with torch.enable_grad():
                zr = z.detach().requires_grad_(True)
                xr = x[idx]
                xa = threat.project(xr + decode(zr).view_as(xr), xr)
                (gd,) = torch.autograd.grad((xa - xr).pow(2).sum(), zr)
            g = g + gd
        # the two stages: at a sample's first success, Adam restarts and q' becomes q
        first = hit & ~s2
        rs["window"] = rs["window"] | hit
        if bool(first.any()):
            rs["stage2"] = s2 | first
            for name in ("m", "v"):
                rs[name][first] = 0
            rs["t"][first] = 0
            rs["lo"][first] = 0
        t = rs["t"] + 1
        rs["t"] = t
        m = rs["m"].mul_(_B1).add_(g, alpha=1 - _B1)
        v = rs["v"].mul_(_B2).addcmul_(g, g, value=1 - _B2)
        corr = (torch.sqrt(1 - _B2**t) / (1 - _B1**t))[:, None]
        rs["z"] = z - lr * corr * m / (v.sqrt() + _ADAM_EPS)
        if (it + 1) % switch_every == 0:
            win, c, lo, hi = rs["window"], rs["c"], rs["lo"], rs["hi"]
            hi = torch.where(win, torch.minimum(hi, c), hi)
            lo = torch.where(win, lo, torch.maximum(lo, c))
            bounded = hi < _C_UNBOUNDED / 10
            c = torch.where(bounded, (lo + hi) / 2, torch.where(c < _C_CAP, c * 10, c))
            rs["c"], rs["lo"], rs["hi"] = c, lo, hi
            rs["window"] = torch.zeros_like(win)
            s2 = rs["stage2"]
            for name in ("m", "v"):
                rs[name][s2] = 0
            rs["t"][s2] = 0
    return {"queries_to_success": tracker.first.to(torch.float32)}
