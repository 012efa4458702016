"""The Basic Iterative Method (iterative FGSM) with Kurakin et al.'s step rules (L-inf).

Reference:
    Kurakin, Goodfellow & Bengio 2017, "Adversarial Examples in the Physical World" (ICLR
    workshop), Section 2.2: step ``alpha = 1`` grey level and ``min(eps + 4, 1.25 eps)``
    iterations, with ``eps`` in grey levels. advlab counts 256 levels over the input range, the
    1/256 step that Carlini & Wagner 2017 use for iterative FGSM in their Table IV.
"""

from __future__ import annotations

import math
from typing import Any

from advlab.attacks.base import AttackRun, get_attack, register_attack
from advlab.attacks.gradient import _check_pgd
from advlab.errors import ConfigError
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


def _check_bim(
    threat: ThreatModel, *, steps: int | None, step_size: float | None, loss: str,
    early_stop: bool,
) -> None:  # fmt: skip
    if not threat.bounded:
        raise ConfigError("bim needs a finite eps; e.g. ThreatModel('linf', 8 / 255)")
    _check_pgd(
        threat, steps=steps if steps is not None else 1, step_size=step_size, restarts=1,
        random_start=False, loss=loss, early_stop=early_stop, l1_sparsity=0.0,
    )  # fmt: skip


def _resolve_bim(threat: ThreatModel | None, params: dict[str, Any]) -> dict[str, Any]:
    if threat is None:
        return params
    out = dict(params)
    if out["steps"] is None:
        out["steps"] = kurakin_steps(threat)
    if out["step_size"] is None:
        out["step_size"] = (threat.upper - threat.lower) / LEVELS
    return out


@register_attack("bim", norms=("linf",), check=_check_bim, resolve=_resolve_bim)
def bim(
    run: AttackRun,
    *,
    steps: int | None = None,
    step_size: float | None = None,
    loss: str = "ce",
    early_stop: bool = True,
) -> None:
    """Basic Iterative Method: FGSM steps of one grey level, clipped to the eps-ball and box.

    ``x_{n+1} = clip(x_n + step_size * sign(grad loss(x_n)))``, starting at ``x`` (no random
    start, one run). This is :func:`~advlab.attacks.gradient.pgd` in L-inf with
    ``random_start=False`` and ``restarts=1``, and it runs PGD's algorithm: the best iterate by
    the C&W margin is returned, so a success found along the way is never lost. With ``target``
    set to the least-likely class (:func:`~advlab.attacks.targets.select_targets` with
    ``"least-likely"``) it is Kurakin et al.'s iterative least-likely class method.

    Args:
        steps: iterations; ``None``: Kurakin's ``ceil(min(e + 4, 1.25 e))`` with ``e`` the
            radius in grey levels (:func:`kurakin_steps`).
        step_size: absolute step; ``None``: one grey level, ``(upper - lower) / 256``.
        loss: ``"ce"`` (cross-entropy, as in the paper) or ``"margin"``.
        early_stop: stop working on a sample once it is fooled (robust accuracy is unchanged).

    Call: ``bim(model, x, y, threat, *, target=None, seed=0, **params)`` with an ``linf`` threat
    model of finite eps; deterministic (``seed`` is unused).

    Returns:
        AttackResult named ``"bim"``; ``queries`` counts images per sample, verification included.

    Example:
        >>> res = bim(model, x, y, ThreatModel("linf", 8 / 255))
        >>> res.robust_accuracy
    """
    get_attack("pgd").algorithm(
        run, steps=steps, step_size=step_size, restarts=1, random_start=False, loss=loss,
        early_stop=early_stop, l1_sparsity=0.95,
    )  # fmt: skip
