"""Training recipes: what the training loop minimizes, batch by batch.

A recipe is a small class registered in :data:`advlab.registry.RECIPES`. Its constructor takes
the recipe's parameters (keyword-only, with defaults; plain values so they can be saved with the
checkpoint and the model), checks them and stores them. The loop (:func:`advlab.defenses.train`)
then calls, for every batch::

    x_adv = recipe.perturb(model, x, y, ctx)         # model in eval mode  (may return None)
    out = recipe.loss(model, x, y, x_adv, ctx)       # model in train mode
    # out: a scalar loss, or (loss, logits) to also report the batch's training accuracy

**The mode rule**, enforced by the loop and not by the recipes: inner attacks (``perturb``) see
the model in **eval mode**: BatchNorm normalizes with its running statistics and does not update
them, dropout is off, so the attack targets the deterministic model that will be deployed and
attacked later, and the attack's intermediate points never reach the BatchNorm statistics (the
inputs the loss trains on, adversarial ones included, do: that is training). The training loss
(``loss``) sees the model in **train mode**. A recipe that changes a module's mode is an error.
(Wong et al.'s CIFAR code attacks in train mode; for models without BatchNorm or dropout, such as
the MNIST networks, the two rules coincide.)

**Context** (:class:`TrainContext`): the epoch, the step, the fraction of training done, the
device and a generator for the recipe's randomness (attack seeds, random starts), so that ε
ramps and cyclic schedules are written from ``ctx.fraction`` and a seeded run is reproducible.

**State**: a recipe that carries something from batch to batch or epoch to epoch (the fast
recipe's guard, the distillation teacher's identity) returns it from :meth:`Recipe.state_dict`
(tensors and plain values) and takes it back in :meth:`Recipe.load_state_dict`; the loop saves it
in every checkpoint, so a killed run resumes bit-identically.

**Robust validation**: after each epoch the loop measures clean and PGD accuracy on a fixed
held-out set (``TrainConfig.val_size``) against ``TrainConfig.val_eps`` or, by default, the
recipe's own :attr:`Recipe.threat`, and passes the row to :meth:`Recipe.after_epoch`, which may
act on it (the fast recipe rolls back when PGD accuracy collapses).

Attacks used inside training are the registered attack functions (:func:`advlab.attacks.fgsm`,
:func:`advlab.attacks.pgd`), called through the same door as everywhere else. TRADES' inner
maximization (a KL divergence to the clean prediction, not a classification loss) and MSD's
union of balls are not single-ball classification attacks; they are built here from the same
step and projection functions (:func:`advlab.attacks.gradient.steepest_step`,
:meth:`ThreatModel.project`, :meth:`ThreatModel.random_start`).
"""

from __future__ import annotations

import hashlib
import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advlab.attacks import fgsm, pgd
from advlab.attacks.gradient import steepest_step
from advlab.errors import ConfigError
from advlab.registry import RECIPES
from advlab.threat import ThreatModel

LossOutput = Tensor | tuple[Tensor, Tensor]


@dataclass(frozen=True)
class TrainContext:
    """Where training stands when a recipe is called.

    Attributes:
        epoch: the current epoch, counted from 0.
        epochs: epochs in the run.
        step: the current step within the epoch, from 0.
        steps_per_epoch: optimizer steps per epoch.
        global_step: steps taken before this one, over the whole run.
        total_steps: ``epochs * steps_per_epoch``.
        device: where the batch is.
        generator: the recipe's random stream on ``device`` (checkpointed by the loop).
    """

    epoch: int
    epochs: int
    step: int
    steps_per_epoch: int
    global_step: int
    total_steps: int
    device: torch.device
    generator: torch.Generator

    @property
    def fraction(self) -> float:
        """Fraction of training done before this step, in ``[0, 1)``."""
        return self.global_step / max(1, self.total_steps)

    def seed(self) -> int:
        """A fresh seed for an attack call, drawn from :attr:`generator`."""
        return int(torch.randint(0, 2**62, (), generator=self.generator, device=self.device))


class Recipe:
    """Base class of training recipes (see the module docstring).

    Subclasses define ``__init__`` with keyword-only parameters, and :meth:`loss`; recipes that
    attack the model override :meth:`perturb`; recipes with state override :meth:`state_dict`
    and :meth:`load_state_dict`.

    Attributes:
        name: the registered name (set by :func:`register_recipe`).
        threat: the threat model the recipe trains against (``None`` for non-adversarial
            recipes); robust validation uses it unless ``TrainConfig.val_eps`` is set.
    """

    name: ClassVar[str] = ""
    threat: ThreatModel | None = None
    #: the recipe acts on robust validation (:meth:`after_epoch`); training without it is refused
    needs_validation: bool = False

    def setup(self, model: nn.Module, device: torch.device) -> None:
        """Called once before the first step, after a resume has restored the state."""

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor, ctx: TrainContext) -> Tensor | None:
        """The inputs to train on instead of (or beside) ``x``; ``None``: none. Eval mode."""
        return None

    def loss(
        self, model: nn.Module, x: Tensor, y: Tensor, x_adv: Tensor | None, ctx: TrainContext
    ) -> LossOutput:
        """The batch loss to minimize (train mode)."""
        raise NotImplementedError

    def after_epoch(self, model: nn.Module, row: dict[str, Any]) -> str | None:
        """React to an epoch's history row (with validation numbers when measured).

        May change ``model``'s weights (a rollback) and ``row`` (add a note). Returns a reason
        to stop training early, or ``None`` to go on.
        """
        return None

    def state_dict(self) -> dict[str, Any]:
        """What must survive a checkpoint: tensors and plain values."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output."""


RecipeFactory = Callable[..., Recipe]


def register_recipe(name: str, *, description: str) -> Callable[[type[Recipe]], type[Recipe]]:
    """Register recipe class ``cls`` under ``name`` with a one-line ``description``."""

    def deco(cls: type[Recipe]) -> type[Recipe]:
        cls.name = name
        RECIPES.add(name, cls, description=description)
        return cls

    return deco


def recipe_params(name: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Check ``params`` against recipe ``name``'s signature and return them with defaults filled.

    Raises:
        UnknownNameError: an unregistered recipe.
        ConfigError: unknown parameter names.
    """
    factory: RecipeFactory = RECIPES.get(name)
    given = dict(params or {})
    sig = inspect.signature(factory).parameters
    unknown = sorted(set(given) - set(sig))
    if unknown:
        accepted = ", ".join(sig) or "no parameters"
        raise ConfigError(
            f"recipe {name!r} has no parameter(s) {', '.join(unknown)}; it accepts {accepted}"
        )
    full = {k: p.default for k, p in sig.items() if p.default is not inspect.Parameter.empty}
    full.update(given)
    return full


def build_recipe(name: str, params: Mapping[str, Any] | None = None) -> Recipe:
    """Recipe ``name`` with ``params`` (names checked here, values by the recipe)."""
    recipe_params(name, params)
    factory: RecipeFactory = RECIPES.get(name)
    return factory(**dict(params or {}))


# ---------------------------------------------------------------------------------------------
# parameter checks


def _number(name: str, v: Any, lo: float, hi: float, *, lo_open: bool = False,
            hi_open: bool = False) -> float:  # fmt: skip
    """``v`` as a float inside ``[lo, hi]`` (ends open as asked), or a ConfigError."""
    ok = not isinstance(v, bool) and isinstance(v, int | float) and math.isfinite(v)
    if ok:
        ok = (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
    if not ok:
        if math.isinf(hi):
            rng = f"{'>' if lo_open else '>='} {lo:g}"
        else:
            rng = f"in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
        raise ConfigError(f"{name} must be a finite number {rng}, got {v!r}")
    return float(v)


def _count(name: str, v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ConfigError(f"{name} must be an integer >= 1, got {v!r}")
    return v


def _threat(norm: Any, eps: Any) -> ThreatModel:
    if norm not in ("linf", "l2", "l1"):
        raise ConfigError(f"norm must be one of linf, l2, l1, got {norm!r}")
    return ThreatModel(norm, _number("eps", eps, 0.0, math.inf))


def _ramp(value: Any) -> float:
    return _number("ramp", value, 0, 1)


def ramped(threat: ThreatModel, ramp: float, ctx: TrainContext) -> ThreatModel:
    """``threat`` with its radius grown linearly from 0 over the first ``ramp`` fraction of
    training (Gowal et al. 2018's ε schedule), full size afterwards and when ``ramp == 0``."""
    if ramp <= 0 or ctx.fraction >= ramp:
        return threat
    return threat.with_eps(threat.eps * ctx.fraction / ramp)


def _given(x_adv: Tensor | None, recipe: Recipe) -> Tensor:
    if x_adv is None:
        raise ConfigError(
            f"recipe {recipe.name!r}'s perturb returned None but its loss needs the inputs to "
            "train on; return them from perturb"
        )
    return x_adv


class _OnAdversarial(Recipe):
    """Recipes that train with cross-entropy on what :meth:`perturb` returns."""

    def loss(self, model: nn.Module, x: Tensor, y: Tensor, x_adv: Tensor | None,
             ctx: TrainContext) -> LossOutput:  # fmt: skip
        logits = model(_given(x_adv, self))
        return F.cross_entropy(logits, y), logits


# ---------------------------------------------------------------------------------------------
# recipes


@register_recipe("standard", description="Cross-entropy on clean data (no adversarial training).")
class Standard(Recipe):
    """Standard training: mean cross-entropy of the model's logits on the clean batch.

    Args:
        label_smoothing: in ``[0, 1)``; mixes the one-hot target with the uniform distribution
            (Szegedy et al. 2016). 0 is plain cross-entropy.
        temperature: softmax temperature ``T > 0`` of the training loss, ``CE(logits / T)``:
            a distillation teacher is trained at ``T`` (Papernot et al. 2016). The saved model
            returns its logits undivided, i.e. it is deployed at ``T = 1``.
    """

    def __init__(self, *, label_smoothing: float = 0.0, temperature: float = 1.0) -> None:
        self.label_smoothing = _number("label_smoothing", label_smoothing, 0, 1, hi_open=True)
        self.temperature = _number("temperature", temperature, 0, math.inf, lo_open=True)

    def loss(self, model: nn.Module, x: Tensor, y: Tensor, x_adv: Tensor | None,
             ctx: TrainContext) -> LossOutput:  # fmt: skip
        logits = model(x)
        ce = F.cross_entropy(logits / self.temperature, y, label_smoothing=self.label_smoothing)
        return ce, logits


@register_recipe(
    "fgsm-augment",
    description="FGSM examples regenerated every batch replace a fraction of it (augmentation).",
)
class FgsmAugment(_OnAdversarial):
    """Adversarial data augmentation with FGSM (Goodfellow et al. 2015; Kurakin et al. 2017).

    Every batch, a random ``ratio`` of its samples is replaced by FGSM examples crafted against
    the current model, and the model trains on the mixed batch with cross-entropy.

    Args:
        eps, norm: the FGSM threat model.
        ratio: fraction of each batch replaced by adversarial examples, in ``[0, 1]``.
        ramp: fraction of training over which ε grows linearly from 0 (0: full ε from the
            start). Large radii trained from scratch often need one.
    """

    threat: ThreatModel

    def __init__(self, *, eps: float = 0.3, norm: str = "linf", ratio: float = 0.5,
                 ramp: float = 0.0) -> None:  # fmt: skip
        self.threat = _threat(norm, eps)
        self.ratio = _number("ratio", ratio, 0, 1)
        self.ramp = _ramp(ramp)

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor, ctx: TrainContext) -> Tensor:
        k = round(self.ratio * x.shape[0])
        pick = torch.randperm(x.shape[0], generator=ctx.generator, device=ctx.device)[:k]
        out = x.clone()
        if k:
            threat = ramped(self.threat, self.ramp, ctx)
            out[pick] = fgsm(model, x[pick], y[pick], threat, seed=ctx.seed()).x_adv
        return out


@register_recipe(
    "fgsm-regularized",
    description="Goodfellow et al. 2015: alpha*J(x) + (1-alpha)*J(x + eps*sign(grad J)).",
)
class FgsmRegularized(Recipe):
    """The adversarial objective of Goodfellow, Shlens & Szegedy 2015 (eq. 6)::

        J~(θ, x, y) = α·J(θ, x, y) + (1 − α)·J(θ, x + ε·sign(∇x J(θ, x, y)), y)

    with the FGSM point recomputed every batch against the current model and treated as a
    constant (the gradient of ``sign`` is zero almost everywhere).

    Args:
        eps: the FGSM step ε (L∞); the paper uses 0.25 on MNIST.
        alpha: weight of the clean loss, in ``[0, 1]`` (the paper: 0.5).
        ramp: fraction of training over which ε grows linearly from 0 (0: full ε from the
            start). Large radii trained from scratch often need one.
    """

    threat: ThreatModel

    def __init__(self, *, eps: float = 0.25, alpha: float = 0.5, ramp: float = 0.0) -> None:
        self.threat = _threat("linf", eps)
        self.alpha = _number("alpha", alpha, 0, 1)
        self.ramp = _ramp(ramp)

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor, ctx: TrainContext) -> Tensor:
        return fgsm(model, x, y, ramped(self.threat, self.ramp, ctx), seed=ctx.seed()).x_adv

    def loss(self, model: nn.Module, x: Tensor, y: Tensor, x_adv: Tensor | None,
             ctx: TrainContext) -> LossOutput:  # fmt: skip
        x_adv = _given(x_adv, self)
        clean, adv = model(x), model(x_adv)  # two passes: BatchNorm sees each batch on its own
        loss = self.alpha * F.cross_entropy(clean, y) + (1 - self.alpha) * F.cross_entropy(adv, y)
        return loss, adv


@register_recipe("pgd", description="Madry et al. 2018: min-max training on PGD examples.")
class Pgd(_OnAdversarial):
    """PGD adversarial training (Madry et al. 2018): minimize the cross-entropy on PGD examples.

    The inner maximization is :func:`advlab.attacks.pgd` without early stop (every sample gets
    the full number of steps; the highest-margin iterate is kept).

    Args:
        eps, norm: the threat model (the paper: L∞ 0.3 on MNIST).
        steps: PGD steps (the paper: 40).
        step_size: absolute step (the paper: 0.01); ``None``: ``2.5 * eps / steps``.
        random_start: start at a uniform random point of the ball (the paper does).
        loss: the attack's loss, ``"ce"`` or ``"margin"``.
        ramp: fraction of training over which ε grows linearly from 0 (0: full ε from the
            start). Large radii trained from scratch often need one.
    """

    threat: ThreatModel

    def __init__(self, *, eps: float = 0.3, norm: str = "linf", steps: int = 40,
                 step_size: float | None = 0.01, random_start: bool = True,
                 loss: str = "ce", ramp: float = 0.0) -> None:  # fmt: skip
        self.threat = _threat(norm, eps)
        self.ramp = _ramp(ramp)
        self.steps = _count("steps", steps)
        self.step_size = (
            None
            if step_size is None
            else _number("step_size", step_size, 0, math.inf, lo_open=True)
        )
        if not isinstance(random_start, bool):
            raise ConfigError(f"random_start must be true or false, got {random_start!r}")
        if loss not in ("ce", "margin"):
            raise ConfigError(f"loss must be 'ce' or 'margin', got {loss!r}")
        self.random_start, self.attack_loss = random_start, loss

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor, ctx: TrainContext) -> Tensor:
        return pgd(
            model, x, y, ramped(self.threat, self.ramp, ctx), seed=ctx.seed(), steps=self.steps,
            step_size=self.step_size,
            random_start=self.random_start, loss=self.attack_loss, early_stop=False,
        ).x_adv  # fmt: skip


@register_recipe(
    "fast",
    description="Wong et al. 2020: FGSM from a random start, with a guard against catastrophic "
    "overfitting.",
)
class Fast(_OnAdversarial):
    """ "Fast is better than free" adversarial training (Wong, Rice & Kolter 2020).

    Each batch trains on one FGSM step of size ``step_size`` (1.25·ε by default) taken from a
    uniform random point of the ε-ball, projected back onto the ball and the box
    (:func:`advlab.attacks.fgsm` with ``random_start``). Pair it with the cyclic learning rate
    (``TrainConfig(scheduler="cyclic")``) as the paper does.

    **Guard** against catastrophic overfitting: after each epoch the loop measures PGD accuracy
    on the held-out validation set (``TrainConfig.val_size > 0``). When it falls more than
    ``guard_drop`` below the best seen so far, the weights of the best epoch are restored and
    training stops. The best weights and accuracy are part of the checkpointed state.

    Args:
        eps: L∞ radius (the paper's MNIST setting: 0.3).
        step_size: FGSM step; ``None``: ``1.25 * eps``.
        guard_drop: tolerated fall of validation PGD accuracy (absolute, in ``[0, 1]``); 1
            switches the guard off.
        ramp: fraction of training over which ε grows linearly from 0 (0: full ε from the
            start). Large radii trained from scratch often need one.
    """

    threat: ThreatModel

    def __init__(self, *, eps: float = 0.3, step_size: float | None = None,
                 guard_drop: float = 0.2, ramp: float = 0.0) -> None:  # fmt: skip
        self.threat = _threat("linf", eps)
        self.ramp = _ramp(ramp)
        self.step_size = (
            1.25 * self.threat.eps if step_size is None
            else _number("step_size", step_size, 0, math.inf, lo_open=True)
        )  # fmt: skip
        self.guard_drop = _number("guard_drop", guard_drop, 0, 1)
        self.needs_validation = self.guard_drop < 1
        self.best_accuracy: float | None = None
        self.best_epoch = 0
        self.best_weights: dict[str, Tensor] | None = None

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor, ctx: TrainContext) -> Tensor:
        threat = ramped(self.threat, self.ramp, ctx)
        step = self.step_size * threat.eps / self.threat.eps if self.threat.eps > 0 else 0.0
        return fgsm(
            model, x, y, threat, seed=ctx.seed(), random_start=True, step_size=step or None
        ).x_adv

    def after_epoch(self, model: nn.Module, row: dict[str, Any]) -> str | None:
        acc = row.get("val_robust_accuracy")
        if acc is None:
            return None
        if self.best_accuracy is None or acc >= self.best_accuracy:
            self.best_accuracy, self.best_epoch = float(acc), int(row["epoch"])
            self.best_weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
            return None
        if acc < self.best_accuracy - self.guard_drop and self.best_weights is not None:
            model.load_state_dict(self.best_weights)
            row["note"] = (
                f"catastrophic overfitting: validation PGD accuracy fell to {acc:.2%} from "
                f"{self.best_accuracy:.2%}; rolled back to epoch {self.best_epoch}"
            )
            return row["note"]
        return None

    def state_dict(self) -> dict[str, Any]:
        return {
            "best_accuracy": self.best_accuracy,
            "best_epoch": self.best_epoch,
            "best_weights": self.best_weights,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.best_accuracy = state["best_accuracy"]
        self.best_epoch = int(state["best_epoch"])
        self.best_weights = state["best_weights"]


@register_recipe("trades", description="Zhang et al. 2019: CE(x) + beta * KL(f(x) || f(x')).")
class Trades(Recipe):
    """TRADES (Zhang et al. 2019)::

        min  CE(f(x), y) + β · max_{x' ∈ B(x, ε)} KL(f(x) ‖ f(x'))

    The inner maximization is PGD on the KL divergence to the clean prediction, from a small
    Gaussian start (0.001·N(0, I), as in the paper's code), with the steepest-ascent step and
    projection that :func:`advlab.attacks.pgd` uses.

    Args:
        eps, norm: the threat model (the paper: L∞ 0.3 on MNIST).
        beta: weight of the robust term (the paper: 1 to 6; 6 on MNIST).
        steps, step_size: inner PGD (the paper on MNIST: 40 steps of 0.01).
        ramp: fraction of training over which ε grows linearly from 0 (0: full ε from the
            start). Large radii trained from scratch often need one.
    """

    threat: ThreatModel

    def __init__(self, *, eps: float = 0.3, norm: str = "linf", beta: float = 6.0,
                 steps: int = 40, step_size: float = 0.01, ramp: float = 0.0) -> None:  # fmt: skip
        self.threat = _threat(norm, eps)
        self.ramp = _ramp(ramp)
        self.beta = _number("beta", beta, 0, math.inf)
        self.steps = _count("steps", steps)
        self.step_size = _number("step_size", step_size, 0, math.inf, lo_open=True)

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor, ctx: TrainContext) -> Tensor:
        threat = ramped(self.threat, self.ramp, ctx)
        with torch.no_grad():
            p_clean = F.softmax(model(x), dim=1)
        noise = torch.randn(x.shape, generator=ctx.generator, device=x.device, dtype=x.dtype)
        xa = threat.project(x + 0.001 * noise, x)
        for _ in range(self.steps):
            xa.requires_grad_(True)
            kl = F.kl_div(F.log_softmax(model(xa), dim=1), p_clean, reduction="sum")
            (g,) = torch.autograd.grad(kl, xa)
            xa = threat.project(
                xa.detach() + self.step_size * steepest_step(g, xa, threat, 0.95), x
            )
        return xa.detach()

    def loss(self, model: nn.Module, x: Tensor, y: Tensor, x_adv: Tensor | None,
             ctx: TrainContext) -> LossOutput:  # fmt: skip
        x_adv = _given(x_adv, self)
        clean, adv = model(x), model(x_adv)  # two passes, as the paper's code
        kl = F.kl_div(F.log_softmax(adv, dim=1), F.softmax(clean, dim=1), reduction="batchmean")
        return F.cross_entropy(clean, y) + self.beta * kl, clean


def msd_perturb(model: nn.Module, x: Tensor, y: Tensor, threats: list[ThreatModel],
                step_sizes: list[float], steps: int, *, l1_sparsity: float = 0.95) -> Tensor:  # fmt: skip
    """Multi steepest descent (Maini, Wong & Kolter 2020): the point of the union of the balls
    ``threats`` (same centre ``x``) that maximizes cross-entropy, found by taking, at each step,
    the best of the steepest-ascent steps in each norm (each projected onto its own ball and the
    box), judged by the loss after the step. Starts at ``x``; returns, per sample, the
    highest-loss point over all steps (as the authors' code does).

    Step sizes are absolute lengths in each norm (:func:`steepest_step`): the L1 step spreads
    ``step_sizes[2]`` of L1 mass over the top ``1 - l1_sparsity`` fraction of coordinates.

    Shape: ``x: (B, *)``, ``y: (B,)`` -> ``(B, *)``.
    """
    xa = x.clone()
    b = x.shape[0]
    rows = torch.arange(b, device=x.device)
    best = x.clone()
    with torch.no_grad():
        best_loss = F.cross_entropy(model(x), y, reduction="none")
    for _ in range(steps):
        xa.requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(model(xa), y, reduction="sum"), xa)
        xa = xa.detach()
        cands = torch.stack([
            t.project(xa + s * steepest_step(g, xa, t, l1_sparsity), x)
            for t, s in zip(threats, step_sizes, strict=True)
        ])  # fmt: skip
        with torch.no_grad():
            losses = F.cross_entropy(
                model(cands.flatten(0, 1)), y.repeat(len(threats)), reduction="none"
            ).view(len(threats), b)
        top, pick = losses.max(dim=0)
        xa = cands[pick, rows]
        better = top > best_loss
        best[better], best_loss = xa[better], torch.where(better, top, best_loss)
    return best


@register_recipe(
    "msd",
    description="Maini et al. 2020: multi steepest descent over the union of Linf, L2, L1 balls.",
)
class Msd(_OnAdversarial):
    """Adversarial training against the union of L∞, L2 and L1 balls with multi steepest
    descent (Maini, Wong & Kolter 2020): at each inner step, the steepest-ascent steps in the
    three norms are taken and the one with the highest loss is kept (:func:`msd_perturb`).

    Args:
        eps_linf, eps_l2, eps_l1: the three radii (the paper's MNIST: 0.3, 2.0, 10).
        steps: inner steps (the paper: 100 on MNIST).
        step_linf, step_l2, step_l1: absolute step lengths per norm. The paper's MNIST values
            are 0.01 (L∞), 0.1 (L2) and, for L1, 0.8 *per coordinate* on k of 5 to 20
            coordinates; here the L1 step is the total L1 mass of a step, spread over the top
            ``1 - l1_sparsity`` fraction of coordinates (39 of 784 at the default), so the
            default 2.0 is about 0.05 per coordinate.
        l1_sparsity: fraction of coordinates left out of each L1 step.
        ramp: fraction of training over which the three radii grow linearly from 0.
    """

    threat: ThreatModel

    def __init__(self, *, eps_linf: float = 0.3, eps_l2: float = 2.0, eps_l1: float = 10.0,
                 steps: int = 50, step_linf: float = 0.01, step_l2: float = 0.1,
                 step_l1: float = 2.0, l1_sparsity: float = 0.95,
                 ramp: float = 0.0) -> None:  # fmt: skip
        self.threats = [_threat("linf", eps_linf), _threat("l2", eps_l2), _threat("l1", eps_l1)]
        self.threat = self.threats[0]
        self.steps = _count("steps", steps)
        self.step_sizes = [
            _number(k, v, 0, math.inf, lo_open=True)
            for k, v in (("step_linf", step_linf), ("step_l2", step_l2), ("step_l1", step_l1))
        ]
        self.l1_sparsity = _number("l1_sparsity", l1_sparsity, 0, 1, hi_open=True)
        self.ramp = _ramp(ramp)

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor, ctx: TrainContext) -> Tensor:
        threats = [ramped(t, self.ramp, ctx) for t in self.threats]
        scale = threats[0].eps / self.threats[0].eps if self.threats[0].eps > 0 else 1.0
        steps = [s * scale for s in self.step_sizes]
        if scale == 0:
            return x
        return msd_perturb(model, x, y, threats, steps, self.steps, l1_sparsity=self.l1_sparsity)


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file's bytes (hex)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def soft_labels(teacher: nn.Module, x: Tensor, temperature: float) -> Tensor:
    """``(B, C)`` the teacher's class probabilities at ``temperature``: ``softmax(z / T)``."""
    with torch.no_grad():
        return F.softmax(teacher(x) / temperature, dim=1)


@register_recipe(
    "distillation",
    description="Papernot et al. 2016: train on a teacher's soft labels at temperature T.",
)
class Distillation(Recipe):
    """Defensive distillation (Papernot et al. 2016), the student's half.

    The teacher (a model file trained at the same temperature: recipe ``standard`` with
    ``temperature=T``) labels each batch with ``softmax(z_teacher / T)``; the student minimizes
    the cross-entropy between those soft labels and ``softmax(z_student / T)``. The saved student
    returns its logits undivided: it is deployed at ``T = 1``, where its softmax saturates.
    ``advlab distill`` runs both halves.

    The teacher's identity (path and SHA-256) is the recipe's checkpointed state: a resume with
    a different teacher file is refused.

    Args:
        teacher: path of the teacher model (``.safetensors``).
        temperature: ``T > 0`` (the paper: 1 to 100; 100 on MNIST).
    """

    def __init__(self, *, teacher: str = "", temperature: float = 100.0) -> None:
        if not isinstance(teacher, str) or not teacher:
            raise ConfigError(
                "distillation needs teacher=PATH, a model trained at the same temperature "
                "(advlab distill trains one)"
            )
        self.teacher_path = teacher
        self.temperature = _number("temperature", temperature, 0, math.inf, lo_open=True)
        self.teacher_sha256: str | None = None
        self._teacher: nn.Module | None = None

    def setup(self, model: nn.Module, device: torch.device) -> None:
        from advlab.models import load_model

        path = Path(self.teacher_path).expanduser()
        digest = file_digest(path) if path.is_file() else None
        if digest is None:
            raise ConfigError(f"distillation teacher {path} does not exist; train it first")
        if self.teacher_sha256 is not None and digest != self.teacher_sha256:
            raise ConfigError(
                f"teacher {path} changed since this run's checkpoint was written; restore the "
                "original teacher or start over with --no-resume"
            )
        self.teacher_sha256 = digest
        teacher, _ = load_model(path)
        self._teacher = teacher.to(device).eval()
        for p in self._teacher.parameters():
            p.requires_grad_(False)

    def loss(self, model: nn.Module, x: Tensor, y: Tensor, x_adv: Tensor | None,
             ctx: TrainContext) -> LossOutput:  # fmt: skip
        if self._teacher is None:
            self.setup(model, x.device)
        assert self._teacher is not None
        target = soft_labels(self._teacher, x, self.temperature)
        logits = model(x)
        log_p = F.log_softmax(logits / self.temperature, dim=1)
        return -(target * log_p).sum(dim=1).mean(), logits

    def state_dict(self) -> dict[str, Any]:
        return {"teacher": self.teacher_path, "teacher_sha256": self.teacher_sha256,
                "temperature": self.temperature}  # fmt: skip

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.teacher_sha256 = state.get("teacher_sha256")


@register_recipe(
    "double-backprop",
    description="Drucker & LeCun 1992: cross-entropy plus a penalty on the input-gradient norm.",
)
class DoubleBackprop(Recipe):
    """Double backpropagation (Drucker & LeCun 1992; Ross & Doshi-Velez 2018)::

        CE(f(x), y) + λ · mean_i ‖∇x CE(f(x_i), y_i)‖²₂

    The gradient is taken with ``create_graph=True`` so the penalty is differentiated (a second
    backward pass).

    Args:
        weight: λ ≥ 0.
    """

    def __init__(self, *, weight: float = 10.0) -> None:
        self.weight = _number("weight", weight, 0, math.inf)

    def loss(self, model: nn.Module, x: Tensor, y: Tensor, x_adv: Tensor | None,
             ctx: TrainContext) -> LossOutput:  # fmt: skip
        xg = x.detach().requires_grad_(True)
        logits = model(xg)
        ce = F.cross_entropy(logits, y, reduction="sum")
        (g,) = torch.autograd.grad(ce, xg, create_graph=True)
        penalty = g.flatten(1).pow(2).sum(dim=1).mean()
        return ce / x.shape[0] + self.weight * penalty, logits


__all__ = [
    "LossOutput",
    "Recipe",
    "TrainContext",
    "build_recipe",
    "file_digest",
    "msd_perturb",
    "recipe_params",
    "register_recipe",
    "soft_labels",
]
