"""The Basic Iterative Method (iterative FGSM) with Kurakin et al.'s step rules (L-inf).

Reference:
    Kurakin, Goodfellow & Bengio 2017, "Adversarial Examples in the Physical World" (ICLR
    workshop), Section 2.2: step ``alpha = 1`` grey level and ``min(eps + 4, 1.25 eps)``
    iterations, with ``eps`` in grey levels. advlab counts 256 levels over the input range, the
    1/256 step that Carlini & Wagner 2017 use for iterative FGSM in their Table IV.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch
from torch import Tensor, nn

from advlab.attacks.base import register_attack
from advlab.attacks.gradient import pgd
from advlab.errors import ConfigError
from advlab.results import AttackResult
from advlab.threat import ThreatModel

#: Grey levels in the image range of Kurakin et al.; their unit step is one level.
LEVELS = 256  # C&W 2017 run iterative FGSM with steps of 1/256 (their Table IV)


def kurakin_steps(threat: ThreatModel) -> int:
    """Kurakin et al.'s iteration count ``ceil(min(e + 4, 1.25 e))``, ``e`` = eps in grey levels.

    Grey levels are ``(upper - lower) / 256``, so on a ``[0, 1]`` box ``eps = 0.3`` gives
    ``e = 76.8`` and 81 steps; never fewer than 1.
    """
    e = threat.eps * LEVELS / (threat.upper - threat.lower)
    return max(
        1, math.ceil(min(e + 4, 1.25 * e) - 1e-9)
    )  # guard against round-off just above an integer


@register_attack("bim", norms=("linf",))
def bim(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    threat: ThreatModel,
    *,
    steps: int | None = None,
    step_size: float | None = None,
    target: Tensor | None = None,
    loss: str = "ce",
    early_stop: bool = True,
    generator: torch.Generator | None = None,
) -> AttackResult:
    """Basic Iterative Method: FGSM steps of one grey level, clipped to the eps-ball and box.

    ``x_{n+1} = clip(x_n + step_size * sign(grad loss(x_n)))``, starting at ``x`` (no random
    start, one run). This is :func:`~advlab.attacks.gradient.pgd` in L-inf with
    ``random_start=False`` and ``restarts=1``, and it delegates to it: the best iterate by the
    C&W margin is returned, so a success found along the way is never lost. With ``target`` set
    to the least-likely class (:func:`~advlab.attacks.targets.select_targets` with
    ``"least-likely"``) it is Kurakin et al.'s iterative least-likely class method.

    Args:
        model: classifier returning logits; used as is (its train/eval mode is not changed).
        x: ``(B, *)`` inputs inside the box.
        y: ``(B,)`` true labels.
        threat: ``linf`` with a finite eps.
        steps: iterations; default Kurakin's ``ceil(min(e + 4, 1.25 e))`` with ``e`` the radius
            in grey levels (:func:`kurakin_steps`).
        step_size: absolute step; default one grey level, ``(upper - lower) / 256``.
        target: ``(B,)`` target classes for a targeted attack.
        loss: ``"ce"`` (cross-entropy, as in the paper) or ``"margin"``.
        early_stop: stop working on a sample once it is fooled (robust accuracy is unchanged).
        generator: unused (no random start); accepted for a uniform signature.

    Shape:
        x: ``(B, *)``; the output matches.

    Returns:
        AttackResult named ``"bim"``; ``queries`` counts forward(+backward) passes per sample.

    Example:
        >>> res = bim(model, x, y, ThreatModel("linf", 8 / 255))
        >>> res.robust_accuracy
    """
    if not isinstance(threat, ThreatModel) or threat.norm != "linf":
        norm = threat.norm if isinstance(threat, ThreatModel) else type(threat).__name__
        raise ConfigError(f"bim works in the linf threat model, not {norm!r}")
    if not threat.bounded:
        raise ConfigError("bim needs a finite eps; e.g. ThreatModel('linf', 8 / 255)")
    if steps is None:
        steps = kurakin_steps(threat)
    if step_size is None:
        step_size = (threat.upper - threat.lower) / LEVELS
    res = pgd(
        model, x, y, threat, steps=steps, step_size=step_size, restarts=1, random_start=False,
        target=target, loss=loss, early_stop=early_stop, generator=generator,
    )  # fmt: skip
    params = {"steps": steps, "step_size": step_size, "loss": loss, "early_stop": early_stop}
    return replace(res, attack="bim", params=params)
