"""Transfer attacks: craft on a white-box source, verify on a black-box target.

:func:`transfer_attack` runs any registered white-box advlab attack on a *source* model (a
substitute, an ensemble, a surrogate) and sends the result to the *target* through its oracle.
:func:`verify_on` is the second half alone, for adversarial examples crafted elsewhere (once per
source, checked against many targets). Both end in advlab's own
:func:`~advlab.attacks.base.finalize`: the output is projected onto the threat set, containment is
asserted, and success is the target's answer to one fresh query per sample; those queries are
the only ones the target sees, so ``AttackResult.queries`` is 1 per sample.

Reference:
    Szegedy et al. 2014, "Intriguing properties of neural networks" (transferability);
    Papernot, McDaniel & Goodfellow 2016, "Transferability in Machine Learning: from Phenomena
    to Black-Box Attacks using Adversarial Samples".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from torch import Tensor, nn

from advlab.attacks.base import AttackRun, finalize, get_attack, prepare
from advlab.errors import ConfigError, InputError
from advlab.oracle import Oracle, as_oracle
from advlab.results import AttackResult
from advlab.rng import as_sample_rng
from advlab.threat import ThreatModel


def verify_on(
    oracle: Oracle | nn.Module,
    x: Tensor,
    x_adv: Tensor,
    y: Tensor,
    threat: ThreatModel,
    *,
    target: Tensor | None = None,
    name: str = "transfer",
    params: Mapping[str, Any] | None = None,
    extras: Mapping[str, Tensor] | None = None,
) -> AttackResult:
    """Adversarial examples crafted elsewhere, judged by ``oracle`` with one query per sample.

    Args:
        oracle: the target (labels access suffices).
        x: ``(B, *)`` clean inputs; ``x_adv`` ``(B, *)`` the candidates.
        y: ``(B,)`` true labels; ``target`` ``(B,)`` target classes for a targeted attack.
        threat: the threat model ``x_adv`` is projected onto and checked against.
        name, params, extras: recorded in the result.

    Returns:
        AttackResult: ``success`` is the target's prediction on the projected ``x_adv`` differing
        from ``y`` (or equal to ``target``); ``queries`` is 1 per sample.
    """
    if not isinstance(threat, ThreatModel):
        raise ConfigError(f"threat must be an advlab.ThreatModel, got {type(threat).__name__}")
    prepare(x, y, threat, target)
    if not isinstance(x_adv, Tensor) or x_adv.shape != x.shape:
        raise InputError(f"x_adv must have the shape of x, {tuple(x.shape)}")
    orc = as_oracle(oracle)
    run = AttackRun(name, orc, x, y, threat, target, as_sample_rng(0, x.shape[0], x.device))
    try:
        run.best.copy_(x_adv.detach().to(x.dtype))
        res = finalize(run, params=dict(params or {}))
    finally:
        run.close()
    return replace(res, extras=dict(extras or {}))


def transfer_attack(
    source: nn.Module | Oracle,
    oracle: Oracle | nn.Module,
    x: Tensor,
    y: Tensor,
    threat: ThreatModel,
    *,
    attack: str = "fgsm",
    params: Mapping[str, Any] | None = None,
    target: Tensor | None = None,
    seed: int = 0,
) -> AttackResult:
    """Craft with a white-box attack on ``source``, then verify on ``oracle`` (the target).

    Args:
        source: the model the attack sees (a torch module or a white-box oracle): a substitute
            (:func:`~advlab.transfer.train_substitute`), an :class:`~advlab.transfer.Ensemble`,
            or any surrogate.
        oracle: the target, behind any oracle (labels access suffices; a torch module is wrapped
            as a white-box :class:`~advlab.oracle.ModuleOracle`, of which only labels are read).
        x: ``(B, *)`` inputs; ``y`` ``(B,)`` their true labels.
        threat: the threat model of the attack and of the verification.
        attack: a registered attack name (``advlab list attacks``): ``"fgsm"``, ``"pgd"``,
            ``"cw-l2"``, ...
        params: that attack's hyper-parameters.
        target: ``(B,)`` target classes for a targeted transfer.
        seed: the attack's seed.

    Returns:
        AttackResult named ``transfer:<attack>``: ``success``, ``pred`` and ``queries`` (1 per
        sample) are the target's; ``extras`` holds ``source_success`` and ``source_queries``,
        what the attack achieved and spent on the source.

    Example:
        >>> res = transfer_attack(substitute, SklearnOracle(tree), x, y, ThreatModel("linf", 0.3))
        >>> res.success_rate
    """
    spec = get_attack(attack)
    src = spec.fn(source, x, y, threat, target=target, seed=seed, **dict(params or {}))
    extras = {"source_success": src.success, "source_queries": src.queries}
    return verify_on(
        oracle, x, src.x_adv, y, threat, target=target, name=f"transfer:{attack}",
        params={"attack": attack, **src.params}, extras=extras,
    )  # fmt: skip
