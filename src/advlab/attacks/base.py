"""What every attack shares: the registry entry, input checks, losses and the finalize step.

Every attack ends in :func:`finalize`, which projects the output onto the threat set, asserts
that it lies there, and recomputes success with a fresh forward pass. An attack's own idea of
whether it succeeded is never trusted.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advlab.errors import ConfigError, InputError, ModelOutputError
from advlab.registry import ATTACKS
from advlab.results import AttackResult
from advlab.threat import ThreatModel, check_inputs

AttackFn = Callable[..., AttackResult]


@dataclass(frozen=True)
class AttackSpec:
    """A registered attack.

    Attributes:
        name: registry name.
        fn: ``fn(model, x, y, threat, *, target=None, generator=None, **params) -> AttackResult``.
        norms: the threat-model norms the attack supports.
        minimal: True for attacks that search for the smallest perturbation (C&W, DeepFool, ...)
            and so run with ``eps = inf``; False for attacks bounded by ``eps`` (FGSM, PGD).
        description: one line for ``advlab list attacks``.
    """

    name: str
    fn: AttackFn
    norms: tuple[str, ...]
    minimal: bool
    description: str

    def __call__(
        self, model: nn.Module, x: Tensor, y: Tensor, threat: ThreatModel, **kw: Any
    ) -> AttackResult:
        if threat.norm not in self.norms:
            raise ConfigError(
                f"attack {self.name!r} supports norms {', '.join(self.norms)}, not {threat.norm!r}"
            )
        return self.fn(model, x, y, threat, **kw)


def register_attack(
    name: str, *, norms: tuple[str, ...], minimal: bool = False
) -> Callable[[AttackFn], AttackFn]:
    """Register an attack function under ``name`` (its docstring's first line describes it)."""

    def deco(fn: AttackFn) -> AttackFn:
        doc = (fn.__doc__ or name).strip().splitlines()[0]
        ATTACKS.add(name, AttackSpec(name, fn, norms, minimal, doc), description=doc)
        return fn

    return deco


def get_attack(name: str) -> AttackSpec:
    """The :class:`AttackSpec` registered under ``name``."""
    spec: AttackSpec = ATTACKS.get(name)
    return spec


def check_logits(logits: Tensor, batch: int, y: Tensor | None = None) -> None:
    """Validate a model's output: shape ``(batch, C)`` with ``C >= 2``, finite, labels in range."""
    if not isinstance(logits, Tensor) or logits.dim() != 2 or logits.shape[0] != batch:
        shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise ModelOutputError(
            f"the model must return logits of shape (batch, classes) = ({batch}, C), got {shape}; "
            "wrap it so that forward returns one logit per class"
        )
    if logits.shape[1] < 2:
        raise ModelOutputError(
            f"the model returns {logits.shape[1]} logit per sample; classifiers need >= 2 classes "
            "(for a binary model, return [-z, z] or [0, z])"
        )
    if not torch.isfinite(logits).all():
        raise ModelOutputError(
            "the model returned NaN or inf logits; check its weights and input preprocessing"
        )
    if y is not None and int(y.max()) >= logits.shape[1]:
        raise InputError(
            f"label {int(y.max())} is out of range for a model with {logits.shape[1]} classes"
        )


def check_target(target: Tensor | None, y: Tensor) -> None:
    """Validate targets of a targeted attack: one per sample, none equal to the true label."""
    if target is None:
        return
    if not isinstance(target, Tensor) or target.shape != y.shape:
        raise InputError(f"target must be a tensor of shape {tuple(y.shape)}, one class per sample")
    if target.dtype.is_floating_point or target.dtype == torch.bool:
        raise InputError(f"target must be an integer tensor, got dtype {target.dtype}")
    if (target == y).any():
        raise InputError(
            "a target equals the true label for some samples; a targeted attack needs a different "
            "class (see advlab.attacks.select_targets)"
        )
    if (target < 0).any():
        raise InputError("targets must be non-negative class indices")


def check_positive(**params: float) -> None:
    """Raise ConfigError for any parameter that is not > 0."""
    for k, v in params.items():
        if not v > 0:
            raise ConfigError(f"{k} must be > 0, got {v!r}")


def check_count(**params: int) -> None:
    """Raise ConfigError for any count that is not an integer >= 1."""
    for k, v in params.items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConfigError(f"{k} must be an integer >= 1, got {v!r}")


def prepare(x: Tensor, y: Tensor, threat: ThreatModel, target: Tensor | None) -> None:
    """The door every attack goes through: validate inputs, labels and targets."""
    if not isinstance(threat, ThreatModel):
        raise ConfigError(
            f"threat must be an advlab.ThreatModel, got {type(threat).__name__}; "
            "e.g. ThreatModel('linf', 0.3)"
        )
    check_inputs(x, y, threat)
    if y.device != x.device:
        raise InputError(f"labels are on {y.device} but inputs on {x.device}; move them together")
    check_target(target, y)


def margin(logits: Tensor, y: Tensor, target: Tensor | None = None) -> Tensor:
    """Per-sample logit margin, positive exactly when the attack succeeds.

    Untargeted: ``max_{j != y} z_j - z_y``. Targeted: ``z_t - max_{j != t} z_j``.
    (Carlini & Wagner 2017, objective f6.)
    """
    cls = y if target is None else target
    own = logits.gather(1, cls[:, None]).squeeze(1)
    other = logits.scatter(1, cls[:, None], float("-inf")).amax(dim=1)
    return other - own if target is None else own - other


LOSSES = ("ce", "margin")


def attack_loss(logits: Tensor, y: Tensor, target: Tensor | None, loss: str) -> Tensor:
    """Per-sample loss that the attacker *maximizes*."""
    if loss == "ce":
        if target is None:
            return F.cross_entropy(logits, y, reduction="none")
        return -F.cross_entropy(logits, target, reduction="none")
    if loss == "margin":
        return margin(logits, y, target)
    raise ConfigError(f"unknown loss {loss!r}; use one of {', '.join(LOSSES)}")


def finalize(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    x_adv: Tensor,
    threat: ThreatModel,
    *,
    attack: str,
    params: dict[str, Any],
    queries: Tensor,
    target: Tensor | None = None,
    extras: dict[str, Tensor] | None = None,
) -> AttackResult:
    """Project ``x_adv`` onto the threat set, assert containment, re-check success.

    This is the single exit of every attack.

    Raises:
        RuntimeError: if the projected output is still outside the threat set (a bug in advlab).
        ModelOutputError: if the model's output on ``x_adv`` is malformed.
    """
    x_adv = threat.project(x_adv.detach().to(x.dtype), x)
    inside = threat.contains(x_adv, x)
    if not bool(inside.all()):
        bad = int((~inside).sum())
        raise RuntimeError(f"internal error: {attack} left {bad} outputs outside {threat}")
    with torch.no_grad():
        logits = model(x_adv)
    check_logits(logits, x.shape[0], y)
    pred = logits.argmax(dim=1)
    success = pred == target if target is not None else pred != y
    return AttackResult(
        attack=attack,
        params=dict(params),
        threat=threat,
        x_adv=x_adv,
        success=success,
        norms=threat.norms(x_adv - x),
        queries=queries.to(device=x.device, dtype=torch.long),
        pred=pred,
        label=y,
        target=target,
        extras=extras or {},
    )


def check_model(
    model: nn.Module, x: Tensor, y: Tensor | None = None, num_classes: int | None = None
) -> None:
    """Probe ``model`` on the first two samples of ``x``: it must run and return valid logits.

    Raises:
        InputError: the model cannot process inputs of this shape or dtype.
        ModelOutputError: the outputs are malformed or have the wrong number of classes.
    """
    probe = x[:2]
    try:
        with torch.no_grad():
            logits = model(probe)
    except (RuntimeError, ValueError, TypeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(
            f"the model cannot process inputs of shape {tuple(probe.shape[1:])} ({first}); "
            "use a model built for this data, or data of the shape the model expects"
        ) from e
    check_logits(logits, probe.shape[0], None if y is None else y[:2])
    if num_classes is not None and logits.shape[1] != num_classes:
        raise ModelOutputError(
            f"the model returns {logits.shape[1]} logits but the data has {num_classes} classes; "
            "use a model trained for this dataset"
        )
