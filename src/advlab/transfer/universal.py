"""Universal adversarial perturbations: one delta that fools most inputs.

Moosavi-Dezfooli et al. (2017) build a single image-agnostic perturbation ``v`` with
``||v||_p <= xi`` that changes the model's prediction on most natural images. Their Algorithm 1
sweeps the training images; for each image ``x_i`` that ``x_i + v`` does not fool yet, DeepFool
finds the smallest extra step ``dv_i`` that sends ``x_i + v`` across the decision boundary, and
``v <- P_{p, xi}(v + dv_i)`` projects the sum back onto the ball. Passes repeat until the fooling
rate on the training images reaches ``1 - delta`` (here ``target_rate``) or a pass limit.

**Fooling** is the paper's: the prediction on ``clip(x + v)`` differs from the prediction on
``x`` (not from the true label), so no labels are needed.

Reference:
    Moosavi-Dezfooli, Fawzi, Fawzi & Frossard 2017, "Universal adversarial perturbations"
    (CVPR), Algorithm 1 (with the projection ``P_{p, xi}``).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from advlab.attacks.deepfool import deepfool
from advlab.errors import ConfigError, InputError
from advlab.oracle import Access, Oracle, as_oracle
from advlab.threat import ThreatModel

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class UniversalResult:
    """A universal perturbation and how it was found.

    Attributes:
        delta: ``(1, *)`` the perturbation; ``threat.norms(delta) <= threat.eps``.
        fooling_rate: the fooling rate on the images it was computed from, after the last pass.
        threat: the norm ball it lies in (and the box the perturbed images are clipped to).
        queries: images sent to the model (the oracle's count).
        history: one row per pass: ``pass``, ``fooling_rate``, ``norm``, ``updates`` (images
            whose DeepFool step changed ``v``), ``seconds``.
    """

    delta: Tensor
    fooling_rate: float
    threat: ThreatModel
    queries: int
    history: list[dict[str, Any]] = field(default_factory=list)

    def apply(self, x: Tensor) -> Tensor:
        """``clip(x + delta)``, the perturbed images."""
        return self.threat.clip_box(x + self.delta.to(x.device, x.dtype))


def project_ball(v: Tensor, norm: str, eps: float) -> Tensor:
    """``P_{p, xi}``: the projection of each perturbation ``v`` onto the ball of radius ``eps``
    (``linf``: clamp; ``l2``: rescale when longer than ``eps``).

    Shape: ``(B, *)`` -> ``(B, *)``.
    """
    if norm == "linf":
        return v.clamp(-eps, eps)
    if norm == "l2":
        n = v.flatten(1).norm(dim=1).clamp(min=1e-12)
        scale = torch.clamp(eps / n, max=1.0)
        return v * scale.view(-1, *([1] * (v.dim() - 1)))
    raise ConfigError(f"universal perturbations support linf and l2, not {norm!r}")


def fooling_rate(
    model: nn.Module | Oracle,
    x: Tensor,
    delta: Tensor,
    *,
    lower: float = 0.0,
    upper: float = 1.0,
    clean: Tensor | None = None,
    batch_size: int = 1000,
) -> float:
    """Fraction of ``x`` whose predicted label changes when ``delta`` is added (and the result
    clipped to ``[lower, upper]``). Labels only: works for any oracle.

    Args:
        clean: ``(N,)`` the clean predictions, if already known (else one query per image).

    Shape:
        x: ``(N, *)``; delta: ``(1, *)`` or ``(*)``.
    """
    oracle = as_oracle(model)
    if clean is None:
        clean = oracle.labels(x, batch_size=batch_size)
    adv = oracle.labels(
        (x + delta.to(x.device, x.dtype)).clamp(lower, upper), batch_size=batch_size
    )
    return float((adv != clean).float().mean()) if len(x) else float("nan")


def universal_perturbation(
    model: nn.Module | Oracle,
    x: Tensor,
    threat: ThreatModel,
    *,
    target_rate: float = 0.8,
    max_passes: int = 10,
    overshoot: float = 0.02,
    deepfool_steps: int = 50,
    batch_size: int = 1,
    inner_norm: str = "l2",
    seed: int = 0,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> UniversalResult:
    """A universal perturbation of ``model`` on the images ``x`` (Moosavi-Dezfooli et al. 2017).

    Each pass visits ``x`` in a fresh seeded order; for each image that ``clip(x_i + v)`` does
    not fool, DeepFool (advlab's :func:`~advlab.attacks.deepfool`, minimal in L2 as in the
    paper, with ``overshoot``) finds the step ``dv_i`` to the nearest decision boundary and
    ``v = P(v + dv_i)``. Passes stop once the fooling rate on ``x`` reaches ``target_rate`` (the
    paper's ``1 - delta``) or after ``max_passes``.

    Args:
        model: a white-box model (a torch module or an oracle with gradients access).
        x: ``(N, *)`` the images ``v`` is computed from.
        threat: ``linf`` or ``l2`` with finite ``eps``: the paper's ``xi`` and ``p``.
        target_rate: stop when the fooling rate on ``x`` reaches it (the paper: 0.8).
        max_passes: at most this many passes over ``x``.
        overshoot, deepfool_steps: DeepFool's overshoot and step limit.
        inner_norm: the norm of DeepFool's minimal step: ``"l2"``, as in the paper's
            Algorithm 1 (``argmin ||r||_2``) whatever the ball's norm, or ``"linf"``.
        batch_size: images whose DeepFool steps are computed at the same ``v`` before their
            updates are applied one after the other. ``1`` is the paper's strictly sequential
            algorithm; larger values are faster and approximate it.
        seed: the order of the images in each pass.
        progress: called with ``{"event": "pass", "stage": "universal", "message", "done",
            "total", **history_row}`` after each pass.

    Returns:
        A :class:`UniversalResult`; evaluate held-out images with :func:`fooling_rate`.

    Example:
        >>> uap = universal_perturbation(model, train.x[:1000], ThreatModel("linf", 0.2))
        >>> fooling_rate(model, test.x, uap.delta)
    """
    if not isinstance(threat, ThreatModel) or threat.norm not in ("linf", "l2"):
        raise ConfigError("threat must be an advlab ThreatModel with norm linf or l2")
    if not threat.bounded:
        raise ConfigError("a universal perturbation needs a finite eps (the paper's xi)")
    if not 0.0 < target_rate <= 1.0:
        raise ConfigError(f"target_rate must be in (0, 1], got {target_rate!r}")
    for name, count in (("max_passes", max_passes), ("batch_size", batch_size),
                        ("deepfool_steps", deepfool_steps)):  # fmt: skip
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ConfigError(f"{name} must be an integer >= 1, got {count!r}")
    if not isinstance(x, Tensor) or x.dim() < 2 or x.shape[0] == 0 or not x.is_floating_point():
        raise InputError("x must be a non-empty float tensor (N, *) of images")
    oracle = as_oracle(model)
    oracle.require(Access.GRADIENTS, "a universal perturbation (DeepFool inside)")
    start = oracle.used
    clean = oracle.labels(x, batch_size=1000)
    v = torch.zeros((1, *x.shape[1:]), dtype=x.dtype, device=x.device)
    if inner_norm not in ("l2", "linf"):
        raise ConfigError(f"inner_norm must be l2 (the paper) or linf, got {inner_norm!r}")
    minimal = ThreatModel(inner_norm, math.inf, threat.lower, threat.upper)
    gen = torch.Generator().manual_seed(seed)
    history: list[dict[str, Any]] = []
    rate = 0.0
    for p in range(max_passes):
        tick = time.perf_counter()
        updates = 0
        for chunk in torch.randperm(x.shape[0], generator=gen).to(x.device).split(batch_size):
            xi = threat.clip_box(x[chunk] + v)
            res = deepfool(oracle, xi, clean[chunk], minimal, steps=deepfool_steps,
                           overshoot=overshoot, refine=0)  # fmt: skip
            moved = res.success & (res.norms > 0)
            for dv in (res.x_adv - xi)[moved]:
                v = project_ball(v + dv[None], threat.norm, threat.eps)
                updates += 1
        rate = fooling_rate(oracle, x, v, lower=threat.lower, upper=threat.upper, clean=clean)
        row = {"pass": p + 1, "fooling_rate": rate, "norm": float(threat.norms(v)[0]),
               "updates": updates, "seconds": time.perf_counter() - tick}  # fmt: skip
        history.append(row)
        msg = f"universal pass {p + 1}: fooling rate {rate:.1%} on {len(x)} images"
        log.info(msg)
        if progress is not None:
            progress({"event": "pass", "stage": "universal", "done": p + 1, "total": max_passes,
                      "message": msg, **row})  # fmt: skip
        if rate >= target_rate:
            break
    return UniversalResult(delta=v, fooling_rate=rate, threat=threat,
                           queries=oracle.used - start, history=history)  # fmt: skip
