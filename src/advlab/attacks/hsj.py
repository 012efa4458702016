"""HopSkipJump: a decision-based attack that walks along the decision boundary (L2 and L-inf).

Reference:
    Chen, Jordan & Wainwright 2020, "HopSkipJumpAttack: A Query-Efficient Decision-Based
    Attack" (IEEE S&P), Algorithms 1-2 and Section 5 (the choices of theta, delta_t, B_t and the
    geometric step-size search).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from advlab.attacks.base import AttackRun, check_count, check_positive, register_attack
from advlab.errors import ConfigError
from advlab.oracle import Access
from advlab.threat import ThreatModel, within

#: Most images (probes x features) one gradient-estimation chunk holds in memory.
_CHUNK = 1 << 25


class _Search:
    """The state HopSkipJump keeps per sample, flattened to ``(B, D)``, and its query helpers."""

    def __init__(self, run: AttackRun, max_queries: int, gamma: float) -> None:
        self.run = run
        self.shape = tuple(run.x.shape[1:])
        self.x = run.x.reshape(run.n, -1)
        self.d = int(self.x.shape[1])
        self.l2 = run.threat.norm == "l2"
        self.lo, self.hi = run.threat.lower, run.threat.upper
        self.max_queries = max_queries
        # the paper's binary-search threshold (Section 5): gamma d^(-3/2) (L2), gamma d^(-2)
        self.theta = gamma / (self.d * math.sqrt(self.d) if self.l2 else self.d**2)
        dev = self.x.device
        self.best_dist = torch.full((run.n,), math.inf, dtype=torch.float64, device=dev)
        self.found = torch.full((run.n,), math.nan, dtype=torch.float64, device=dev)

    def pay(self, rows: Tensor, cost: int) -> Tensor:
        """``(len(rows),)`` bool: the samples that can spend ``cost`` more queries, under the
        attack's ``max_queries`` and the oracle's per-sample budget."""
        ok = self.run.queries[rows] + cost <= self.max_queries - 1  # the verification is one
        if self.run.limited and bool(ok.any()):
            sub = ok.clone()
            ok[sub] = self.run.affordable(rows[sub], cost)
        return ok

    def adversarial(self, pts: Tensor, rows: Tensor) -> Tensor:
        """``(n,)`` bool: the decision ``phi`` of the paper, from labels only."""
        lab = self.run.labels(pts.reshape(-1, *self.shape), rows)
        if self.run.target is None:
            return lab != self.run.y[rows]
        return lab == self.run.target[rows]

    def dist(self, pts: Tensor, rows: Tensor) -> Tensor:
        diff = (pts - self.x[rows]).double()
        return diff.norm(dim=1) if self.l2 else diff.abs().amax(dim=1)

    def keep(self, rows: Tensor, pts: Tensor, dist: Tensor) -> None:
        """Make ``pts`` the answer of the samples it brings closer, inside the ball."""
        threat = self.run.threat
        ok = dist < self.best_dist[rows]
        if threat.bounded:
            ok &= within(dist, threat.norm, threat.eps)
        r = rows[ok]
        self.run.best[r] = pts[ok].reshape(-1, *self.shape).to(self.run.best.dtype)
        self.best_dist[r] = dist[ok]
        first = r[torch.isnan(self.found[r])]
        self.found[first] = self.run.queries[first].double()

    def project(self, x: Tensor, far: Tensor, alpha: Tensor) -> Tensor:
        """The point at ``alpha`` between ``x`` and ``far``: the blend ``(1 - alpha) x + alpha
        far`` (L2) or ``far`` clipped to the L-inf ball of radius ``alpha`` (L-inf)."""
        a = alpha.to(x.dtype)[:, None]
        if self.l2:
            return (1 - a) * x + a * far
        return torch.minimum(torch.maximum(far, x - a), x + a)

    def bin_search(self, rows: Tensor, far: Tensor) -> tuple[Tensor, Tensor]:
        """The boundary point between ``x`` and the adversarial ``far`` (paper, Alg. 1 line 1
        and 9): bisection until the bracket is below ``theta`` (L2, in blend units) or
        ``min(theta dist, theta)`` (L-inf, in radius units); returns the adversarial end and its
        distance. A sample that cannot pay stops with its bracket as it is."""
        x = self.x[rows]
        m = rows.shape[0]
        if self.l2:
            high = torch.ones(m, dtype=torch.float64, device=x.device)
            thr = torch.full_like(high, self.theta)
        else:
            high = (far - x).abs().amax(dim=1).double()
            thr = torch.clamp(high * self.theta, max=self.theta)
        low = torch.zeros_like(high)
        act = torch.arange(m, device=x.device)
        while True:
            act = act[(high[act] - low[act]) > thr[act]]
            if act.numel():
                act = act[self.pay(rows[act], 1)]
            if act.numel() == 0:
                break
            mid = (high[act] + low[act]) / 2
            adv = self.adversarial(self.project(x[act], far[act], mid), rows[act])
            high[act] = torch.where(adv, mid, high[act])
            low[act] = torch.where(adv, low[act], mid)
        out = self.project(x, far, high)
        return out, self.dist(out, rows)


def _check(
    threat: ThreatModel,
    *,
    max_queries: int,
    num_iterations: int,
    gamma: float,
    init_num_evals: int,
    max_num_evals: int,
    init_tries: int,
    max_halvings: int,
    overshoot: float,
    batch_size: int,
) -> None:
    check_count(
        batch_size=batch_size,
        max_queries=max_queries,
        num_iterations=num_iterations,
        init_num_evals=init_num_evals,
        max_num_evals=max_num_evals,
        init_tries=init_tries,
        max_halvings=max_halvings,
    )
    check_positive(gamma=gamma)
    if (
        isinstance(overshoot, bool)
        or not isinstance(overshoot, int | float)
        or not (0 <= overshoot < 1)
    ):
        raise ConfigError(f"overshoot must be in [0, 1) (e.g. 0.01), got {overshoot!r}")
    if init_num_evals > max_num_evals:
        raise ConfigError(
            f"init_num_evals ({init_num_evals}) must not exceed max_num_evals ({max_num_evals})"
        )


@register_attack(
    "hopskipjump", norms=("l2", "linf"), needs=Access.LABELS, minimal=True, check=_check
)
def hop_skip_jump(
    run: AttackRun,
    *,
    max_queries: int = 25000,
    num_iterations: int = 64,
    gamma: float = 1.0,
    init_num_evals: int = 100,
    max_num_evals: int = 10000,
    init_tries: int = 100,
    max_halvings: int = 30,
    overshoot: float = 0.01,
    batch_size: int = 256,
) -> dict[str, Tensor]:
    """HopSkipJump: estimate the boundary's normal from labels, step, return to the boundary.

    Labels only: every query asks the oracle for the predicted class, so a label-only oracle
    suffices. Per sample:

    1. **Start**: uniform noise in the box, redrawn until it is adversarial (misclassified, or
       the target class), then a binary search toward ``x`` puts it on the boundary. Two of
       every three draws are of other kinds (:func:`_start_noise`: random brightness, coarse
       blocks), for models that put all uniform noise in one class.
    2. **Gradient direction** at the boundary point ``x_t`` (paper, Eq. 9 and 16): ``B_t =
       min(init_num_evals sqrt(t), max_num_evals)`` probes ``x_t + delta_t u_b`` with ``u_b``
       uniform on the sphere (L2: normalized Gaussians; L-inf: normalized uniform cube draws),
       clipped to the box; the estimate is ``mean((phi_b - mean(phi)) u_b)`` with
       ``phi_b = +-1`` (the baseline subtraction; ``+-mean(u_b)`` when every probe agrees).
       ``delta_t = 0.1 (upper - lower)`` at ``t = 1``, then ``sqrt(d) theta dist`` (L2) or
       ``d theta dist`` (L-inf).
    3. **Step** along the estimate (L-inf: its sign): geometric search from ``xi = dist /
       sqrt(t)``, halved until the step lands on an adversarial point (at most
       ``max_halvings`` times; no move if none does).
    4. **Binary search** between ``x`` and the stepped point, to the threshold ``theta = gamma
       d^(-3/2)`` (L2; in units of the blend) or ``min(theta dist, theta)`` with ``theta =
       gamma d^(-2)`` (L-inf; in units of the L-inf radius).

    Every probe of a step goes to the oracle in one call with its sample's row, so counts are
    exact per sample; every random draw comes from the sample's own stream (``run.rng``), so
    its result does not depend on its batch. The answer is the closest adversarial point found
    (inside ``eps`` when the threat model has a finite one; the search itself is unconstrained,
    as in the paper).

    Args:
        max_queries: the most queries one sample may cost, the final verification included
            (so ``AttackResult.queries <= max_queries``). The last
            iteration shrinks ``B_t`` to fit; a sample stops when it cannot pay a gradient
            estimate and its binary search.
        num_iterations: the most boundary steps.
        gamma: scales the binary-search threshold ``theta`` (the paper: 1).
        init_num_evals: ``B_0``, the probes of the first gradient estimate (the paper: 100).
        max_num_evals: the cap on ``B_t`` (the paper: 10,000).
        init_tries: uniform-noise draws tried for the start (a targeted start needs noise
            classified as the target, which may not exist: such a sample fails).
        max_halvings: the most halvings of the step size in one search.
        overshoot: ``kappa >= 0``; the answer is ``x + (1 + kappa) (x_b - x)`` for the best
            boundary point ``x_b``, kept if one last query finds it adversarial (else ``x_b``).
            The binary search ends within ``theta`` of the boundary, where float round-off in
            another batch can flip the label; a label-only attack cannot read a margin, so it
            moves a fraction past the boundary instead (advlab's rule for minimal attacks,
            :func:`advlab.attacks.base.decisive`). ``0`` returns ``x_b``.
        batch_size: most images per oracle call of a gradient estimate (the probes of all
            active samples, in order). Large batches run slower per image on a CPU (a
            papernot-mnist forward pass: ~650 images/s in batches of 256, ~260 in batches of
            4096 on the bench machine); other queries go in one call per step.

    Call: ``hop_skip_jump(model, x, y, ThreatModel("l2", math.inf))`` (``eps = inf``: the
    smallest perturbation; read ``norms``). ``target=`` makes it targeted.

    Shape:
        x: ``(B, *)``; the output matches.

    Returns:
        AttackResult, with ``extras["queries_to_success"]``: ``(B,)`` float, the queries spent
        when the sample first had an adversarial point inside ``eps`` (NaN where never).

    Reference:
        Chen, Jordan & Wainwright 2020, "HopSkipJumpAttack" (IEEE S&P).
    """
    # one query per sample is kept for the overshoot check
    s = _Search(run, max_queries - (1 if overshoot > 0 else 0), gamma)
    x, d, dev = s.x, s.d, s.x.device
    cur = x.clone()
    dist = torch.zeros(run.n, dtype=torch.float64, device=dev)
    # 1. the start: adversarial uniform noise, then to the boundary
    have = torch.zeros(run.n, dtype=torch.bool, device=dev)
    look = torch.arange(run.n, device=dev)
    for attempt in range(init_tries):
        look = look[s.pay(look, 1)]
        if look.numel() == 0:
            break
        noise = _start_noise(s, look, attempt)
        adv = s.adversarial(noise, look)
        cur[look[adv]] = noise[adv]
        have[look[adv]] = True
        s.keep(look[adv], noise[adv], s.dist(noise[adv], look[adv]))
        look = look[~adv]
    idx = torch.nonzero(have).squeeze(1)
    if idx.numel() == 0:
        return {"queries_to_success": s.found}
    cur[idx], dist[idx] = s.bin_search(idx, cur[idx])
    s.keep(idx, cur[idx], dist[idx])
    reserve = math.ceil(math.log2(1.0 / s.theta)) + 2  # a binary search and a step
    for t in range(1, num_iterations + 1):
        idx = idx[dist[idx] > 0]
        if idx.numel() == 0:
            break
        # the budget: B_t probes, shrunk to what is left after a binary search and a step
        b_t = min(int(init_num_evals * math.sqrt(t)), max_num_evals)
        room = (max_queries - 1 - run.queries[idx]).double() - reserve
        if run.limited:
            room = torch.minimum(room, run.remaining(idx) - reserve)
        evals = room.clamp(max=b_t).floor().long()
        stop = evals < 1
        if run.limited and bool(stop.any()):
            run.affordable(idx[stop], b_t + reserve)  # flags those the oracle's budget stopped
        idx, evals = idx[~stop], evals[~stop]
        if idx.numel() == 0:
            break
        xt, dt = cur[idx], dist[idx]
        if t == 1:
            delta = torch.full_like(dt, 0.1 * (s.hi - s.lo))
        else:
            delta = (math.sqrt(d) if s.l2 else float(d)) * s.theta * dt
        # 2. gradient direction at the boundary, one oracle call per chunk of samples
        grad = torch.zeros_like(xt)
        for e in torch.unique(evals).tolist():
            grp = torch.nonzero(evals == e).squeeze(1)
            per = max(1, _CHUNK // (e * d))
            for c in range(0, grp.numel(), per):
                g = grp[c : c + per]
                grad[g] = _estimate(s, idx[g], xt[g], delta[g], int(e), batch_size)
        upd = grad if s.l2 else grad.sign()
        # 3. geometric step-size search
        xi = dt / math.sqrt(t)
        ok = torch.zeros(idx.shape, dtype=torch.bool, device=dev)
        act = torch.arange(idx.numel(), device=dev)
        for _ in range(max_halvings + 1):
            act = act[s.pay(idx[act], 1)]
            if act.numel() == 0:
                break
            cand = (xt[act] + xi[act, None].to(x.dtype) * upd[act]).clamp(s.lo, s.hi)
            adv = s.adversarial(cand, idx[act])
            ok[act[adv]] = True
            act = act[~adv]
            xi[act] = xi[act] / 2
        # 4. back to the boundary
        moved = torch.nonzero(ok).squeeze(1)
        if moved.numel():
            far = (xt[moved] + xi[moved, None].to(x.dtype) * upd[moved]).clamp(s.lo, s.hi)
            rows = idx[moved]
            cur[rows], dist[rows] = s.bin_search(rows, far)
            s.keep(rows, cur[rows], dist[rows])
        # a sample that can no longer pay for one probe is done
        idx = idx[s.pay(idx, 1)] if idx.numel() else idx
    if overshoot > 0:
        _overshoot(s, max_queries, overshoot)
    return {"queries_to_success": s.found}


def _overshoot(s: _Search, max_queries: int, kappa: float) -> None:
    """Move each answer to ``x + (1 + kappa) (answer - x)`` where that is still adversarial."""
    run = s.run
    s.max_queries = max_queries  # the query kept for this
    rows = torch.nonzero(torch.isfinite(s.best_dist) & (s.best_dist > 0)).squeeze(1)
    if rows.numel():
        rows = rows[s.pay(rows, 1)]
    if rows.numel() == 0:
        return
    x = s.x[rows]
    best = run.best[rows].reshape(rows.numel(), -1).to(x.dtype)
    pts = run.threat.project((x + (1 + kappa) * (best - x)).view(-1, *s.shape), run.x[rows])
    pts = pts.reshape(rows.numel(), -1)
    adv = s.adversarial(pts, rows)
    run.best[rows[adv]] = pts[adv].reshape(-1, *s.shape).to(run.best.dtype)


def _estimate(
    s: _Search, rows: Tensor, xt: Tensor, delta: Tensor, e: int, batch_size: int
) -> Tensor:
    """``(m, D)`` unit estimate of the boundary normal at ``xt`` from ``e`` probes per sample
    (paper, Eq. 16: Monte-Carlo with the mean decision as baseline)."""
    m, d = xt.shape
    # one 24-bit uniform per coordinate; L2 turns it into a Gaussian by the inverse normal CDF
    # (half the random bits of Box-Muller, tails cut at 5.3 sigma: a direction does not care)
    u = s.run.rng.uniform((e, d), rows).to(xt.device)
    u = torch.special.ndtri(u.clamp(min=2.0**-25)) if s.l2 else u * 2 - 1
    u = u.to(xt.dtype)
    u = u / u.norm(dim=2, keepdim=True).clamp(min=1e-12)
    probes = (xt[:, None, :] + delta.to(xt.dtype)[:, None, None] * u).clamp(s.lo, s.hi)
    u = (probes - xt[:, None, :]) / delta.to(xt.dtype)[:, None, None]
    flat, owner = probes.reshape(m * e, d), rows.repeat_interleave(e)
    phi = torch.cat([
        s.adversarial(flat[i : i + batch_size], owner[i : i + batch_size])
        for i in range(0, m * e, batch_size)
    ]).view(m, e)  # fmt: skip
    f = phi.to(xt.dtype) * 2 - 1
    fm = f.mean(dim=1, keepdim=True)
    centred = torch.where((fm.abs() == 1), fm.expand_as(f), f - fm)
    g = (centred[:, :, None] * u).mean(dim=1)
    return g / g.norm(dim=1, keepdim=True).clamp(min=1e-12)


def _start_noise(s: _Search, rows: Tensor, attempt: int) -> Tensor:
    """``(n, D)`` candidate starting points in the box, by ``attempt`` modulo 3:

    0. the paper's uniform noise;
    1. each feature at the box's lower or upper end, upper with a random per-draw probability
       (uniform noise always has mean brightness; these range from dark to bright);
    2. coarse binary blocks: random ``k x k`` blocks (``k`` from 2 to 7) at the lower or upper
       end (for ``(C, H, W)`` inputs; runs of ``k`` features otherwise).

    The last two give starting points on models that put all uniform noise in one class.
    """
    dev, dt = s.x.device, s.x.dtype
    u = s.run.rng.uniform((s.d + 2,), rows, dtype=dt).to(dev)
    kind = attempt % 3
    if kind == 0:
        noise = u[:, 2:]
    elif kind == 1:
        noise = (u[:, 2:] < u[:, :1]).to(dt)
    else:
        shape = s.shape if len(s.shape) == 3 else (1, 1, s.d)
        h, w = shape[1], shape[2]
        k = (2 + (u[:, 0] * 6).floor().long()).clamp(max=7)  # (n,) block sides
        hi_ = torch.arange(h, device=dev)[None, :] // k[:, None]  # (n, H) block row
        wi_ = torch.arange(w, device=dev)[None, :] // k[:, None]
        cell = hi_[:, :, None] * w + wi_[:, None, :]  # (n, H, W) block id, < H * W
        grid = u[:, 2:].view(-1, shape[0], h * w)  # one value per block id and channel
        vals = grid.gather(2, cell.view(-1, 1, h * w).expand(-1, shape[0], -1))
        noise = (vals > 0.5).to(dt).reshape(-1, s.d)
    return noise * (s.hi - s.lo) + s.lo
