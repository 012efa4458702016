"""The threat model: which perturbations an adversary may apply.

A :class:`ThreatModel` is a value: a norm, a radius ``eps`` and the input box ``[lower, upper]``.
Every attack takes one, and every attack's output is projected onto it and checked against it
once, in :func:`advlab.attacks.base.finalize`.

Norms are measured on the flattened per-sample perturbation ``x_adv - x``:

* ``linf``: largest absolute change of any feature;
* ``l2``: Euclidean length;
* ``l1``: sum of absolute changes;
* ``l0``: number of features changed (minimal-perturbation attacks only; ``eps`` is a count).

``eps = inf`` means "no radius": only the box constrains the perturbation. Minimal-perturbation
attacks (C&W, DeepFool, ...) run under such a threat model and report the norm they needed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from advlab.errors import ConfigError, InputError
from advlab.rng import SampleRNG

NORMS: tuple[str, ...] = ("linf", "l2", "l1", "l0")
#: Relative tolerance used by :meth:`ThreatModel.contains` for floating-point round-off.
RTOL = 1e-5
ATOL = 1e-6


def _flat(t: Tensor) -> Tensor:
    return t.reshape(t.shape[0], -1)


def lp_norms(delta: Tensor, norm: str) -> Tensor:
    """Per-sample norm of a batch of perturbations.

    Shape:
        delta: ``(B, *)``; returns ``(B,)`` in the dtype of ``delta`` (``l0`` counts as float).
    """
    d = _flat(delta)
    if norm == "linf":
        return d.abs().amax(dim=1) if d.shape[1] else d.new_zeros(d.shape[0])
    if norm == "l2":
        return d.norm(p=2, dim=1)
    if norm == "l1":
        return d.abs().sum(dim=1)
    if norm == "l0":
        return (d != 0).sum(dim=1).to(d.dtype)
    raise ConfigError(f"unknown norm {norm!r}; use one of {', '.join(NORMS)}")


def project_l1_box(v: Tensor, eps: Tensor, lo: Tensor, hi: Tensor, iters: int = 40) -> Tensor:
    """Euclidean projection of ``v`` onto ``{d : ||d||_1 <= eps, lo <= d <= hi}`` per sample.

    ``lo <= 0 <= hi`` must hold elementwise. By the KKT conditions the projection is
    ``d_i = sign(v_i) * clip(|v_i| - lam, 0, u_i)`` with ``u_i`` the box bound on the side of
    ``v_i`` and ``lam >= 0`` the smallest value for which ``||d||_1 <= eps``; ``lam`` is found by
    bisection, keeping the feasible end so that the result is always inside the set.
    (Duchi et al. 2008 for the L1 ball; Croce & Hein 2021, "Mind the box", for the box.)

    Shape:
        v, lo, hi: ``(B, D)``; eps: ``(B,)``. Returns ``(B, D)``.
    """
    u = torch.where(v >= 0, hi, -lo)
    a = v.abs()

    def total(lam: Tensor) -> Tensor:
        return (a - lam[:, None]).clamp(min=0).minimum(u).sum(dim=1)

    boxed = a.minimum(u)
    need = boxed.sum(dim=1) > eps
    lam_lo = torch.zeros_like(eps)
    lam_hi = a.amax(dim=1) if a.shape[1] else torch.zeros_like(eps)
    for _ in range(iters):
        mid = (lam_lo + lam_hi) / 2
        over = total(mid) > eps
        lam_lo = torch.where(over, mid, lam_lo)
        lam_hi = torch.where(over, lam_hi, mid)
    lam = torch.where(need, lam_hi, torch.zeros_like(lam_hi))
    mag = (a - lam[:, None]).clamp(min=0).minimum(u)
    # Remove the bisection's last sliver of slack so the budget holds exactly.
    s = mag.sum(dim=1)
    scale = torch.where(s > eps, eps / s.clamp(min=1e-30), torch.ones_like(s))
    return torch.sign(v) * mag * scale[:, None]


def within(norms: Tensor, norm: str, eps: float, slack: float | None = None) -> Tensor:
    """``norms <= eps`` up to float round-off: the one tolerance rule of advlab.

    A perturbation projected onto a ball of radius ``eps`` can measure a few ulps above it; it
    counts as inside when ``norm <= eps + ATOL + RTOL * max(1, eps)``, or ``eps + slack`` where
    the caller knows the round-off is larger (half precision, :meth:`ThreatModel.contains`).
    ``l0`` counts features and has no tolerance. Used by :meth:`ThreatModel.contains` and by the
    evaluation engine when it reads a minimal attack's perturbation at each ``eps`` of a grid.
    """
    if norm == "l0" or not math.isfinite(eps):
        return norms <= eps
    return norms <= eps + (ATOL + RTOL * max(1.0, eps) if slack is None else slack)


@dataclass(frozen=True)
class ThreatModel:
    """An Lp ball of radius ``eps`` around each input, intersected with the box ``[lower, upper]``.

    Args:
        norm: ``"linf"``, ``"l2"``, ``"l1"`` or ``"l0"``.
        eps: radius in input units (for ``l0``, a number of features); ``math.inf`` for none.
        lower, upper: the valid input range, e.g. ``0`` and ``1`` for images scaled to [0, 1].

    Example:
        >>> tm = ThreatModel("linf", 0.3)
        >>> x_adv = tm.project(x + noise, x)
        >>> assert tm.contains(x_adv, x).all()
    """

    norm: str
    eps: float
    lower: float = 0.0
    upper: float = 1.0

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise ConfigError(
                f"unknown norm {self.norm!r}; use one of {', '.join(NORMS)} (e.g. norm='linf')"
            )
        try:
            eps = float(self.eps)
        except (TypeError, ValueError):
            raise ConfigError(f"eps must be a number, got {self.eps!r}") from None
        if math.isnan(eps) or eps < 0:
            raise ConfigError(f"eps must be >= 0 (or inf for unbounded), got {self.eps!r}")
        object.__setattr__(self, "eps", eps)
        lo, hi = float(self.lower), float(self.upper)
        if not (math.isfinite(lo) and math.isfinite(hi)) or lo >= hi:
            raise ConfigError(
                f"the input box needs finite lower < upper, got [{self.lower}, {self.upper}]"
            )
        object.__setattr__(self, "lower", lo)
        object.__setattr__(self, "upper", hi)

    @property
    def bounded(self) -> bool:
        """Whether the ball has a finite radius."""
        return math.isfinite(self.eps)

    def with_eps(self, eps: float) -> ThreatModel:
        """The same threat model with another radius."""
        return replace(self, eps=eps)

    def norms(self, delta: Tensor) -> Tensor:
        """Per-sample norm of ``delta`` in this threat model's norm. Shape ``(B, *) -> (B,)``."""
        return lp_norms(delta, self.norm)

    def clip_box(self, x: Tensor) -> Tensor:
        """Clamp ``x`` to ``[lower, upper]``."""
        return x.clamp(self.lower, self.upper)

    def project(self, x_adv: Tensor, x: Tensor) -> Tensor:
        """Map ``x_adv`` to a point inside the ball around ``x`` and inside the box.

        For ``linf`` and ``l1`` this is the exact Euclidean projection onto the intersection; for
        ``l2`` the ball projection is followed by the box clamp, which only shrinks each
        coordinate of the perturbation, so the result stays in both sets. For ``l0`` the ``eps``
        largest changes are kept.
        """
        delta = x_adv - x
        if not self.bounded:
            return self.clip_box(x + delta)
        shape = delta.shape
        if self.norm == "linf":
            delta = delta.clamp(-self.eps, self.eps)
            return self.clip_box(x + delta)
        if self.norm == "l2":
            n = lp_norms(delta, "l2")
            factor = torch.where(n > self.eps, self.eps / n.clamp(min=1e-30), torch.ones_like(n))
            delta = delta * factor.view(-1, *([1] * (delta.dim() - 1)))
            return self.clip_box(x + delta)
        if self.norm == "l1":
            flat_x = _flat(x)
            eps = torch.full((shape[0],), self.eps, dtype=delta.dtype, device=delta.device)
            d = project_l1_box(_flat(delta), eps, self.lower - flat_x, self.upper - flat_x)
            return self.clip_box(x + d.view(shape))
        # l0: keep the k largest changes
        k = int(self.eps)
        d = _flat(self.clip_box(x + delta) - x)
        if k < d.shape[1]:
            keep = torch.zeros_like(d, dtype=torch.bool)
            if k > 0:
                keep.scatter_(1, d.abs().topk(k, dim=1).indices, True)
            d = torch.where(keep, d, torch.zeros_like(d))
        return x + d.view(shape)

    def contains(self, x_adv: Tensor, x: Tensor) -> Tensor:
        """Per-sample check that ``x_adv`` lies in the ball and the box (with float tolerance).

        In half precision (float16, bfloat16) a projected point can only be stored to the
        nearest representable value, so the ball is checked up to that rounding per feature:
        one rounding step of the box's largest value for L-inf, ``sqrt(D)`` of them for L2 and
        ``D`` for L1.

        Returns a ``(B,)`` bool tensor.
        """
        tol = ATOL + RTOL * (self.upper - self.lower)
        flat = _flat(x_adv)
        in_box = ((flat >= self.lower - tol) & (flat <= self.upper + tol)).all(dim=1)
        if not self.bounded:
            return in_box
        norms = self.norms((x_adv - x).to(torch.promote_types(x.dtype, torch.float32)))
        slack = None
        res = torch.finfo(x_adv.dtype).eps
        if res > 1e-6 and self.norm != "l0":  # half precision: one rounding step per feature
            step = res * max(abs(self.lower), abs(self.upper), 1.0)
            d = flat.shape[1]
            slack = {"linf": 1.0, "l2": math.sqrt(d), "l1": float(d)}[self.norm] * step
        return in_box & within(norms, self.norm, self.eps, slack)

    def random_start(self, x: Tensor, rng: SampleRNG, rows: Tensor | None = None) -> Tensor:
        """A random point of the threat set around each ``x``.

        * ``linf``: uniform in the cube, then clamped to the box.
        * ``l2`` and ``l1``: a uniformly random direction (Gaussian, resp. Laplace, normalized)
          scaled to a radius drawn uniformly from ``[0, eps]``, then projected onto the box.
          A *volume*-uniform draw would put almost every start on the sphere (the radius of a
          uniform point in a d-dimensional ball has density ~ r^(d-1)); a uniform radius spreads
          the starts through the ball instead. On MNIST PGD-L2 (eps 2, 40 steps) the uniform
          radius leaves 11.5% robust accuracy against 13.1% for the volume draw
          (``bench/l2_random_start.py``; docs/threat-model.md).

        Args:
            x: ``(n, *)`` the centres.
            rng: per-sample random streams; row ``j`` of ``x`` draws from stream ``rows[j]``.
            rows: ``(n,)`` which stream each row of ``x`` uses (default: ``0 .. n-1``), so that
                a sample's start does not depend on which other samples share its batch.
        """
        if not self.bounded:
            raise ConfigError("a random start needs a finite eps; set eps or random_start=False")
        if self.norm == "l0":
            raise ConfigError("random starts are not defined for l0; use random_start=False")
        # draws in at least float32 (half precision has too few values near 1), then cast
        shape, dt, dev = tuple(x.shape[1:]), torch.promote_types(x.dtype, torch.float32), x.device
        if self.norm == "linf":
            u = rng.uniform(shape, rows, dtype=dt, device=dev)
            return self.project(x + ((2 * u - 1) * self.eps).to(x.dtype), x)
        if self.norm == "l2":
            d = rng.normal(shape, rows, dtype=dt, device=dev)
        else:
            e = rng.uniform((2, *shape), rows, dtype=dt, device=dev)
            d = -torch.log1p(-e[:, 0]) * torch.sign(e[:, 1] - 0.5)  # Laplace(0, 1)
        n = lp_norms(d, self.norm).clamp(min=1e-12)
        r = rng.uniform((), rows, dtype=dt, device=dev) * self.eps
        d = d * (r / n).view(-1, *([1] * (x.dim() - 1)))
        return self.project(x + d.to(x.dtype), x)

    def to_dict(self) -> dict[str, float | str]:
        """JSON-friendly form (``eps`` inf is written as the string ``"inf"``)."""
        return {
            "norm": self.norm,
            "eps": self.eps if self.bounded else "inf",
            "lower": self.lower,
            "upper": self.upper,
        }


def check_inputs(x: Tensor, y: Tensor | None, threat: ThreatModel, *, name: str = "x") -> None:
    """Validate a batch before an attack: shape, dtype, finiteness, range and labels.

    Raises:
        InputError: naming the problem and the fix.
    """
    if not isinstance(x, Tensor):
        raise InputError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise InputError(
            f"{name} must be a floating-point tensor scaled to [{threat.lower}, {threat.upper}], "
            f"got dtype {x.dtype}; convert with x.float() / 255 for 8-bit images"
        )
    if x.dim() < 2 or x.shape[0] == 0:
        raise InputError(
            f"{name} must be a non-empty batch of shape (B, ...), got shape {tuple(x.shape)}; "
            "add a batch dimension with x.unsqueeze(0)"
        )
    if not torch.isfinite(x).all():
        raise InputError(f"{name} contains NaN or inf; clean or drop those samples first")
    lo, hi = float(x.min()), float(x.max())
    tol = ATOL + RTOL * (threat.upper - threat.lower)
    if lo < threat.lower - tol or hi > threat.upper + tol:
        raise InputError(
            f"{name} has values in [{lo:.4g}, {hi:.4g}] outside the threat model's box "
            f"[{threat.lower}, {threat.upper}]; rescale the inputs or set lower/upper to match "
            "(normalization belongs inside the model, see advlab.models.Normalize)"
        )
    if y is None:
        return
    if not isinstance(y, Tensor) or y.dim() != 1 or y.shape[0] != x.shape[0]:
        shape = tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__
        raise InputError(
            f"labels must be a 1-D tensor with one entry per sample ({x.shape[0]}), got {shape}"
        )
    if y.dtype.is_floating_point or y.dtype == torch.bool or y.is_complex():
        raise InputError(f"labels must be an integer tensor, got dtype {y.dtype}; use y.long()")
    if (y < 0).any():
        raise InputError("labels must be non-negative class indices")
