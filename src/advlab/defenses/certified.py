"""Certified training recipes: train on a sound bound of the worst case instead of an attack.

Both recipes minimize ``κ · CE(f(x), y) + (1 - κ) · CE(-m(x, ε), y)``, where ``m`` are certified
lower bounds on the margins ``z_y - z_j`` over the ε-ball (``-m`` are the worst-case logits up to
a shift), with the schedules of the papers: a warm-up on clean data, then ε growing linearly
from 0 while κ falls from 1 to ``kappa_end``.

* ``ibp``: the bound is interval bound propagation's (Gowal et al. 2018).
* ``crown-ibp``: the bound is ``β · CROWN-IBP + (1 - β) · IBP``, CROWN's backward pass over IBP's
  intermediate bounds, with β falling from 1 to ``beta_end`` over the same ramp (Zhang et al.
  2020).

The bounds are those of :mod:`advlab.certify` (one implementation, differentiable in the
weights). Models with BatchNorm or dropout are refused: their train-mode behaviour has no sound
bound here.

Reference:
    Gowal et al. 2018, "On the Effectiveness of Interval Bound Propagation for Training
    Verifiably Robust Models"; Zhang et al. 2020, "Towards Stable and Efficient Training of
    Verifiably Robust Neural Networks".
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advlab.certify import Bounder, margin_bounds, margin_spec
from advlab.certify.bounds import _eps
from advlab.defenses.recipes import (
    LossOutput,
    Recipe,
    TrainContext,
    _number,
    _threat,
    register_recipe,
)
from advlab.errors import ConfigError
from advlab.threat import ThreatModel


class _Certified(Recipe):
    threat: ThreatModel

    def __init__(self, *, eps: float, norm: str, warmup: float, ramp: float, kappa_end: float,
                 beta_end: float = 0.0) -> None:  # fmt: skip
        self.threat = _threat(norm, eps)
        self.warmup = _number("warmup", warmup, 0, 1)
        self.ramp = _number("ramp", ramp, 0, 1)
        if self.warmup + self.ramp > 1:
            raise ConfigError(f"warmup + ramp must be <= 1, got {self.warmup} + {self.ramp}")
        self.kappa_end = _number("kappa_end", kappa_end, 0, 1)
        self.beta_end = _number("beta_end", beta_end, 0, 1)

    def setup(self, model: nn.Module, device: torch.device) -> None:
        for name, layer in model.named_modules():
            if isinstance(layer, (nn.BatchNorm1d, nn.BatchNorm2d, nn.Dropout)):
                raise ConfigError(
                    f"recipe {self.name!r} cannot train through layer {name} "
                    f"({type(layer).__name__}): certified training needs a model without "
                    "BatchNorm or Dropout"
                )

    def progress(self, ctx: TrainContext) -> float:
        """0 during the warm-up, then linear to 1 over the ramp."""
        if ctx.fraction < self.warmup:
            return 0.0
        return 1.0 if self.ramp == 0 else min(1.0, (ctx.fraction - self.warmup) / self.ramp)

    def loss(self, model: nn.Module, x: Tensor, y: Tensor, x_adv: Tensor | None,
             ctx: TrainContext) -> LossOutput:  # fmt: skip
        t = self.progress(ctx)
        logits = model(x)
        clean = F.cross_entropy(logits, y)
        if t == 0.0:
            return clean, logits
        threat = self.threat.with_eps(self.threat.eps * t)
        margins = self.margins(model, x, y, threat, t)
        # worst-case logits z_j - z_y, and 0 for the true class
        worst = -margins.scatter(1, y[:, None], 0.0)
        kappa = 1.0 - (1.0 - self.kappa_end) * t
        return kappa * clean + (1 - kappa) * F.cross_entropy(worst, y), logits

    def margins(self, model: nn.Module, x: Tensor, y: Tensor, threat: ThreatModel,
                t: float) -> Tensor:  # fmt: skip
        return margin_bounds(model, x, y, threat, method="ibp")


@register_recipe("ibp", description="Gowal et al. 2018: train on interval-bound worst-case logits.")
class Ibp(_Certified):
    """Interval bound propagation training (Gowal et al. 2018).

    Args:
        eps, norm: the training threat model (the papers train MNIST at ε = 0.2 for a test ε of
            0.1, and at 0.4 for 0.3).
        warmup: fraction of training on clean data only (ε = 0).
        ramp: fraction of training, after the warm-up, over which ε grows to ``eps`` and κ
            falls to ``kappa_end``.
        kappa_end: final weight of the clean cross-entropy (the paper: 0.5).
    """

    def __init__(self, *, eps: float = 0.2, norm: str = "linf", warmup: float = 0.05,
                 ramp: float = 0.5, kappa_end: float = 0.5) -> None:  # fmt: skip
        super().__init__(eps=eps, norm=norm, warmup=warmup, ramp=ramp, kappa_end=kappa_end)


@register_recipe(
    "crown-ibp",
    description="Zhang et al. 2020: train on a mix of CROWN-IBP and IBP worst-case logits.",
)
class CrownIbp(_Certified):
    """CROWN-IBP training (Zhang et al. 2020): a CROWN backward pass over IBP's intermediate
    bounds, mixed with the IBP bound by a weight β that falls from 1 to ``beta_end``.

    Args:
        eps, norm, warmup, ramp: as for ``ibp``.
        kappa_end: final weight of the clean cross-entropy (the paper's MNIST runs: 0).
        beta_end: final weight of the CROWN-IBP bound (the paper's "1 → 0": 0).
    """

    def __init__(self, *, eps: float = 0.2, norm: str = "linf", warmup: float = 0.05,
                 ramp: float = 0.5, kappa_end: float = 0.0, beta_end: float = 0.0) -> None:  # fmt: skip
        super().__init__(eps=eps, norm=norm, warmup=warmup, ramp=ramp, kappa_end=kappa_end,
                         beta_end=beta_end)  # fmt: skip

    def margins(self, model: nn.Module, x: Tensor, y: Tensor, threat: ThreatModel,
                t: float) -> Tensor:  # fmt: skip
        beta = 1.0 - (1.0 - self.beta_end) * t
        bounder = Bounder(model, x, threat, _eps(threat, x, None), "ibp")
        lo, hi = bounder.ibp()
        box = lo.gather(1, y[:, None]) - hi
        if beta == 0.0:
            return box
        crown = bounder.lower(margin_spec(y, lo.shape[1], x.dtype)).T
        return beta * crown + (1 - beta) * box
