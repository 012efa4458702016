"""The training loop: seeded, checkpointed as one unit, and resumable exactly.

:func:`train` minimizes a *recipe*'s per-batch loss (:mod:`advlab.defenses.recipes`) over a
dataset. Everything that decides the outcome comes from :class:`TrainConfig` and its ``seed``:

* the data order: a CPU :class:`torch.Generator` draws one permutation per epoch;
* the recipe's randomness (attack starts, noise): a generator on the training device;
* layers that draw from torch's global RNG (dropout): the loop runs inside
  :func:`torch.random.fork_rng` with that RNG seeded from ``seed``, so the same seed gives the
  same weights and the caller's global RNG state is unchanged afterwards.

A checkpoint holds the model, optimizer, scheduler, epoch and step within the epoch, the three
RNG states, the partial epoch statistics, the history, the config and the recipe. It is written
atomically with :func:`torch.save` and read with ``torch.load(weights_only=True)``, never by full
unpickling. A run interrupted at any step and resumed from its checkpoint finishes with weights
bit-identical to those of an uninterrupted run (on the same hardware and software).

Model mode: training is the one place in advlab where a model's train/eval mode is set. The loop
puts the model in **eval mode for the recipe's inner attack** (:meth:`Recipe.perturb`: BatchNorm
uses its running statistics and does not update them, dropout is off) and in **train mode for the
training loss** (:meth:`Recipe.loss`); a recipe that changes a mode is an error. Validation and
``eval_data`` accuracy run in eval mode. On return, or on an exception, every submodule's mode is
restored to what it was when :func:`train` was called.

Robust validation: with ``val_size > 0``, that many training samples (a seeded draw) are held out
and, after each epoch, the model's clean and PGD accuracy on them are logged beside the training
numbers (``val_accuracy``, ``val_robust_accuracy``), against ``val_eps`` or the recipe's own
threat model. The recipe sees the row (:meth:`Recipe.after_epoch`) and may act on it.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from advlab.data.base import DatasetLike
from advlab.defenses.recipes import Recipe, TrainContext, build_recipe, recipe_params
from advlab.errors import CheckpointError, ConfigError, DataError
from advlab.fileio import atomic_write
from advlab.models.io import state_mismatch
from advlab.threat import ThreatModel

log = logging.getLogger(__name__)

OPTIMIZERS = ("sgd", "adam")
SCHEDULERS = ("none", "cosine", "step", "cyclic")
CHECKPOINT_FORMAT = "advlab-train/2"
# config fields that do not change the result, so a resumed run may change them
_RESUME_FREE = ("checkpoint_every",)


def _check_number(name: str, v: Any, ok: Callable[[float], bool], expected: str) -> None:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or not ok(v):
        raise ConfigError(f"{name} must be a finite number {expected}, got {v!r}")


def _is_plain(v: Any) -> bool:
    """True for values that survive JSON and ``torch.load(weights_only=True)``."""
    if v is None or isinstance(v, bool | int | float | str):
        return True
    if isinstance(v, list | tuple):
        return all(_is_plain(i) for i in v)
    if isinstance(v, dict):
        return all(isinstance(k, str) and _is_plain(i) for k, i in v.items())
    return False


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of a training run.

    The defaults are the ones ``advlab train`` and the audit's default model use: 8 epochs of
    Adam at 1e-3 with a cosine schedule, batches of 64.

    Attributes:
        epochs: passes over the training data.
        batch_size: samples per optimizer step (the last batch of an epoch may be smaller).
        lr: learning rate (initial, for the schedulers).
        optimizer: ``"sgd"`` (with ``momentum``) or ``"adam"``.
        momentum: SGD momentum in ``[0, 1)``; ignored by Adam.
        weight_decay: L2 penalty (``>= 0``), passed to the optimizer.
        scheduler: learning-rate schedule: ``"none"``, ``"cosine"`` (cosine annealing to 0 over
            ``epochs``, stepped per epoch), ``"step"`` (multiply by ``gamma`` at each epoch in
            ``milestones``) or ``"cyclic"`` (per step, linearly from 0 up to ``lr`` at 2/5 of
            training and back down to 0: the one-cycle schedule of Wong et al. 2020).
        milestones: epochs after which ``"step"`` decays the rate; default: half-way and
            three-quarters of the way through.
        gamma: decay factor of ``"step"``, in ``(0, 1]``.
        seed: seeds the data order, the recipe's generator and the global RNG inside the run.
        recipe: name of the training recipe (``advlab list recipes``).
        recipe_params: keyword arguments of the recipe; plain values only (numbers, strings,
            lists, dicts) so they can be saved with the checkpoint.
        checkpoint_every: also checkpoint every this many optimizer steps (``None``: only at the
            end of each epoch).
        val_size: training samples held out (a seeded draw) for per-epoch validation; 0: none.
        val_eps: radius of the per-epoch PGD validation; ``None``: the recipe's own threat
            model (no robust validation for recipes without one).
        val_norm: norm of that validation (``None``: the recipe's, else ``"linf"``).
        val_steps: PGD steps of the validation attack.
    """

    epochs: int = 8
    batch_size: int = 64
    lr: float = 1e-3
    optimizer: str = "adam"
    momentum: float = 0.9
    weight_decay: float = 0.0
    scheduler: str = "cosine"
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    seed: int = 0
    recipe: str = "standard"
    recipe_params: dict[str, Any] = field(default_factory=dict)
    checkpoint_every: int | None = None
    val_size: int = 0
    val_eps: float | None = None
    val_norm: str | None = None
    val_steps: int = 20

    def __post_init__(self) -> None:
        for k in ("epochs", "batch_size", "val_steps"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"{k} must be an integer >= 1, got {v!r}")
        vs = self.val_size
        if isinstance(vs, bool) or not isinstance(vs, int) or vs < 0:
            raise ConfigError(f"val_size must be an integer >= 0, got {vs!r}")
        if self.val_eps is not None:
            _check_number("val_eps", self.val_eps, lambda v: v >= 0, ">= 0")
        if self.val_norm not in (None, "linf", "l2", "l1"):
            raise ConfigError(f"val_norm must be linf, l2 or l1, got {self.val_norm!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"seed must be a non-negative integer, got {self.seed!r}")
        ce = self.checkpoint_every
        if ce is not None and (isinstance(ce, bool) or not isinstance(ce, int) or ce < 1):
            raise ConfigError(f"checkpoint_every must be an integer >= 1 or None, got {ce!r}")
        _check_number("lr", self.lr, lambda v: v > 0, "> 0")
        _check_number("momentum", self.momentum, lambda v: 0 <= v < 1, "in [0, 1)")
        _check_number("weight_decay", self.weight_decay, lambda v: v >= 0, ">= 0")
        _check_number("gamma", self.gamma, lambda v: 0 < v <= 1, "in (0, 1]")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(
                f"unknown optimizer {self.optimizer!r}; use one of {', '.join(OPTIMIZERS)}"
            )
        if self.scheduler not in SCHEDULERS:
            raise ConfigError(
                f"unknown scheduler {self.scheduler!r}; use one of {', '.join(SCHEDULERS)}"
            )
        try:
            milestones = tuple(int(m) for m in self.milestones)
        except (TypeError, ValueError):
            raise ConfigError(
                f"milestones must be epoch numbers, got {self.milestones!r}"
            ) from None
        if list(milestones) != sorted(set(milestones)) or any(
            not 1 <= m <= self.epochs for m in milestones
        ):
            raise ConfigError(
                f"milestones must be increasing epochs in [1, {self.epochs}], got {milestones}"
            )
        if milestones and self.scheduler != "step":
            raise ConfigError("milestones are used by scheduler='step' only; drop them or set it")
        object.__setattr__(self, "milestones", milestones)
        if not isinstance(self.recipe_params, Mapping) or not _is_plain(dict(self.recipe_params)):
            raise ConfigError(
                "recipe_params must be a dict of plain values (numbers, strings, lists, dicts), "
                f"got {self.recipe_params!r}"
            )
        object.__setattr__(self, "recipe_params", dict(self.recipe_params))
        recipe_params(self.recipe, self.recipe_params)  # unknown recipe or parameter names

    def to_dict(self) -> dict[str, Any]:
        """The config as plain values (lists for tuples)."""
        d = dataclasses.asdict(self)
        d["milestones"] = list(self.milestones)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainConfig:
        """Build from a mapping (e.g. parsed YAML); unknown keys raise ConfigError."""
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(d) - set(names))
        if unknown:
            raise ConfigError(
                f"unknown training option(s) {', '.join(unknown)}; known: {', '.join(names)}"
            )
        return cls(**dict(d))

    def resolved_milestones(self) -> tuple[int, ...]:
        """The decay epochs that ``"step"`` uses (the defaults filled in)."""
        if self.milestones:
            return self.milestones
        return tuple(sorted({m for m in (self.epochs // 2, (3 * self.epochs) // 4) if m >= 1}))


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train` did.

    Attributes:
        history: one row per completed epoch (including epochs run before a resume): ``epoch``
            (1-based), ``loss`` (mean recipe loss), ``train_accuracy`` (on the inputs the recipe
            trained on; ``None`` if the recipe returns no logits), ``eval_accuracy`` (``None``
            without ``eval_data``), ``val_accuracy`` and ``val_robust_accuracy`` (clean and PGD
            accuracy on the held-out set; ``None`` when not measured), ``val_threat``, ``lr``
            (the rate at the epoch's start), ``seconds`` (the whole epoch), ``val_seconds``
            (its validation and ``eval_data`` part), and ``note`` when the recipe acted.
        wall_time: seconds spent in this call.
        global_step: optimizer steps taken in the whole run so far.
        completed: False when the run stopped early (``stop_after_steps``).
        resumed_from: ``(epoch, step)`` of the checkpoint this call resumed from, else ``None``.
        stopped: the recipe's reason for ending training before the last epoch, else ``None``.
    """

    history: list[dict[str, Any]]
    wall_time: float
    global_step: int
    completed: bool
    resumed_from: tuple[int, int] | None = None
    stopped: str | None = None

    @property
    def final(self) -> dict[str, Any]:
        """The last epoch's row (empty if no epoch finished)."""
        return dict(self.history[-1]) if self.history else {}


# ---------------------------------------------------------------------------------------------
# helpers


def _derive_seed(seed: int, stream: int) -> int:
    """An independent 63-bit seed per stream (SplitMix64 finalizer)."""
    z = (seed * 0x9E3779B97F4A7C15 + (stream + 1) * 0xD1B54A32D192ED03) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return (z ^ (z >> 31)) & 0x7FFFFFFFFFFFFFFF


def _check_data(data: Any, what: str = "data") -> tuple[Tensor, Tensor]:
    try:
        x, y, k = data.x, data.y, data.num_classes
    except AttributeError:
        raise DataError(
            f"{what} must be a dataset with .x, .y and .num_classes (advlab.data.Dataset), "
            f"got {type(data).__name__}"
        ) from None
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.dim() < 2:
        raise DataError(f"{what}.x must be a floating-point tensor (N, ...) of inputs in [0, 1]")
    if not isinstance(y, Tensor) or y.dim() != 1 or y.dtype != torch.int64:
        raise DataError(f"{what}.y must be an int64 tensor (N,) of class labels")
    if x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise DataError(
            f"{what} must hold at least one sample and as many labels as inputs, got "
            f"{x.shape[0]} inputs and {y.shape[0]} labels"
        )
    if int(y.min()) < 0 or int(y.max()) >= int(k):
        raise DataError(
            f"{what} labels must lie in [0, {int(k) - 1}] (num_classes={k}), found "
            f"{int(y.min())}..{int(y.max())}"
        )
    return x, y


def _fingerprint(data: Any, y: Tensor) -> dict[str, Any]:
    w = torch.arange(y.shape[0], device=y.device) % 1009 + 1
    return {
        "name": str(getattr(data, "name", "")),
        "n": int(y.shape[0]),
        "labels": int((y * w).sum()),
    }


def evaluate_accuracy(
    model: nn.Module, data: Any, *, batch_size: int = 1024, device: str | torch.device | None = None
) -> float:
    """Fraction of ``data`` that ``model`` classifies correctly.

    Runs without gradients and leaves the model's mode as it is (call ``model.eval()`` first to
    evaluate in inference mode).

    Args:
        model: classifier returning logits.
        data: a dataset with ``.x``, ``.y`` and ``.num_classes``.
        batch_size: samples per forward pass.
        device: where to run the batches; default: the device ``data.x`` is on.

    Returns:
        Accuracy in ``[0, 1]``.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    x, y = _check_data(data)
    dev = torch.device(device) if device is not None else x.device
    correct = torch.zeros((), dtype=torch.int64, device=dev)
    with torch.no_grad():
        for i in range(0, x.shape[0], batch_size):
            xb, yb = x[i : i + batch_size].to(dev), y[i : i + batch_size].to(dev)
            correct += (model(xb).argmax(dim=1) == yb).sum()
    return int(correct) / x.shape[0]


@contextmanager
def _restore_modes(model: nn.Module) -> Iterator[None]:
    modes = [(m, m.training) for m in model.modules()]
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode


def _build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("the model has no trainable parameters (requires_grad=False everywhere)")
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def _build_scheduler(
    opt: torch.optim.Optimizer, cfg: TrainConfig, total: int
) -> torch.optim.lr_scheduler.LRScheduler | None:
    if cfg.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
    if cfg.scheduler == "step":
        return torch.optim.lr_scheduler.MultiStepLR(
            opt, milestones=list(cfg.resolved_milestones()), gamma=cfg.gamma
        )
    if cfg.scheduler == "cyclic":
        return torch.optim.lr_scheduler.LambdaLR(opt, functools.partial(_one_cycle, total))
    return None


def _one_cycle(total: int, step: int) -> float:
    """Multiplier of the cyclic schedule: 0 -> 1 over the first 2/5 of ``total`` steps -> 0."""
    peak = max(1.0, 0.4 * total)
    step += 1  # the rate of step i is the schedule's value at its end, (i + 1) / total
    if step <= peak:
        return step / peak
    return max(0.0, (total - step) / max(1.0, total - peak))


def _rng_devices(device: torch.device) -> list[int]:
    if device.type != "cuda":
        return []
    return [device.index if device.index is not None else torch.cuda.current_device()]


def _load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(
            f"training checkpoint {path} is corrupt, truncated or not a checkpoint "
            f"({type(e).__name__}); delete it or pass resume=False (CLI --no-resume) to start over"
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path} is not an advlab training checkpoint ({CHECKPOINT_FORMAT}); use another "
            "checkpoint path or pass resume=False to overwrite it"
        )
    return ckpt


def _config_diff(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    keys = [k for k in {**saved, **current} if k not in _RESUME_FREE]
    return [
        f"{k}: checkpoint {saved.get(k)!r} vs now {current.get(k)!r}"
        for k in keys
        if saved.get(k) != current.get(k)
    ]


@dataclass
class _Position:
    """Where a run stands, with the statistics of the epoch in progress (all plain values)."""

    epoch: int = 0  # completed epochs
    step: int = 0  # completed steps of the current epoch
    global_step: int = 0
    loss_sum: float = 0.0  # sum over samples of the recipe loss, this epoch
    seen: int = 0  # samples trained on this epoch
    correct: int = 0  # correctly classified among those with logits
    counted: int = 0  # samples whose logits the recipe returned
    seconds: float = 0.0  # time spent in this epoch before the last resume
    lr: float | None = None  # the learning rate at the epoch's start
    stopped: str | None = None  # why the recipe ended training early
    history: list[dict[str, Any]] = field(default_factory=list)


class _Run:
    """The state of one training run: what a checkpoint saves and a resume restores."""

    def __init__(
        self,
        model: nn.Module,
        cfg: TrainConfig,
        recipe: Recipe,
        dev: torch.device,
        data_id: dict[str, Any],
        steps_per_epoch: int,
    ) -> None:
        self.model, self.cfg, self.recipe, self.dev, self.data_id = model, cfg, recipe, dev, data_id
        self.steps_per_epoch = steps_per_epoch
        self.opt = _build_optimizer(model, cfg)
        self.sched = _build_scheduler(self.opt, cfg, cfg.epochs * steps_per_epoch)
        self.pos = _Position()
        # the data order: one permutation per epoch, drawn from the state at the epoch's start
        self.shuffle = torch.Generator().manual_seed(_derive_seed(cfg.seed, 0))
        self.epoch_rng = self.shuffle.get_state()
        self.recipe_gen = torch.Generator(device=dev).manual_seed(_derive_seed(cfg.seed, 1))
        # the global RNG (dropout) is forked by train(), so seeding it here is invisible outside
        torch.random.default_generator.manual_seed(_derive_seed(cfg.seed, 2))
        if dev.type == "cuda":
            with torch.cuda.device(dev):
                torch.cuda.manual_seed(_derive_seed(cfg.seed, 2))

    def permutation(self, n: int) -> Tensor:
        self.shuffle.set_state(self.epoch_rng)
        return torch.randperm(n, generator=self.shuffle)

    def context(self) -> TrainContext:
        return TrainContext(
            epoch=self.pos.epoch, epochs=self.cfg.epochs, step=self.pos.step,
            steps_per_epoch=self.steps_per_epoch, global_step=self.pos.global_step,
            total_steps=self.cfg.epochs * self.steps_per_epoch, device=self.dev,
            generator=self.recipe_gen,
        )  # fmt: skip

    def next_epoch(self) -> None:
        self.pos.epoch += 1
        self.pos.step = 0
        self.pos.loss_sum, self.pos.seen, self.pos.correct, self.pos.counted = 0.0, 0, 0, 0
        self.pos.seconds = 0.0
        self.pos.lr = None
        self.epoch_rng = self.shuffle.get_state()

    def state_dict(self, epoch_seconds: float) -> dict[str, Any]:
        pos = dataclasses.replace(self.pos, seconds=epoch_seconds)
        return {
            "format": CHECKPOINT_FORMAT,
            "config": self.cfg.to_dict(),
            "recipe": {
                "name": self.cfg.recipe,
                "params": recipe_params(self.cfg.recipe, self.cfg.recipe_params),
                "state": self.recipe.state_dict(),
            },
            "data": self.data_id,
            "model": self.model.state_dict(),
            "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict() if self.sched is not None else None,
            "position": dataclasses.asdict(pos),
            "rng": {
                "shuffle_epoch_start": self.epoch_rng,
                "recipe": self.recipe_gen.get_state(),
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state(self.dev) if self.dev.type == "cuda" else None,
            },
        }

    def save(self, path: Path | None, epoch_seconds: float) -> None:
        if path is not None:
            ckpt = self.state_dict(epoch_seconds)
            atomic_write(path, lambda p: torch.save(ckpt, p))

    def restore(self, path: Path) -> None:
        ckpt = _load_checkpoint(path)
        diff = _config_diff(ckpt.get("config", {}), self.cfg.to_dict())
        if diff:
            raise ConfigError(
                f"checkpoint {path} was made with a different config ({'; '.join(diff)}); use "
                "the original config, another checkpoint path, or resume=False (CLI --no-resume) "
                "to start over"
            )
        if ckpt.get("data") != self.data_id:
            raise ConfigError(
                f"checkpoint {path} was made on different training data ({ckpt.get('data')} vs "
                f"{self.data_id}); use the same data, another checkpoint path, or resume=False"
            )
        try:
            own = {k: tuple(v.shape) for k, v in self.model.state_dict().items()}
            mismatch = state_mismatch(own, ckpt["model"])
            if mismatch:
                raise CheckpointError(
                    f"the model in checkpoint {path} does not fit this model ({mismatch}); build "
                    "the same architecture, or use another checkpoint path"
                )
            self.model.load_state_dict(ckpt["model"])
            self.opt.load_state_dict(ckpt["optimizer"])
            if self.sched is not None:
                self.sched.load_state_dict(ckpt["scheduler"])
            self.pos = _Position(**ckpt["position"])
            self.recipe.load_state_dict(ckpt["recipe"]["state"])
            rng = ckpt["rng"]
            self.epoch_rng = rng["shuffle_epoch_start"]
            self.recipe_gen.set_state(rng["recipe"])
            torch.set_rng_state(rng["torch"])
            if self.dev.type == "cuda" and rng["cuda"] is not None:
                torch.cuda.set_rng_state(rng["cuda"], self.dev)
        except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as e:
            raise CheckpointError(
                f"training checkpoint {path} is incomplete or corrupt ({type(e).__name__}: {e}); "
                "delete it or pass resume=False to start over"
            ) from None


def split_validation(n: int, cfg: TrainConfig) -> tuple[Tensor, Tensor]:
    """``(train_idx, val_idx)``: the seeded split of ``n`` training samples that :func:`train`
    makes for ``cfg.val_size`` held-out validation samples (sorted indices)."""
    if cfg.val_size >= n:
        raise ConfigError(
            f"val_size={cfg.val_size} leaves no training data out of {n} samples; lower it"
        )
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(_derive_seed(cfg.seed, 3)))
    return perm[cfg.val_size :].sort().values, perm[: cfg.val_size].sort().values


def validation_threat(cfg: TrainConfig, recipe: Recipe) -> ThreatModel | None:
    """The threat model of the per-epoch robust validation (``None``: none is measured)."""
    own = recipe.threat
    norm = cfg.val_norm or (own.norm if own is not None else "linf")
    if cfg.val_eps is not None:
        return ThreatModel(norm, cfg.val_eps)
    if own is not None and own.norm != norm:
        raise ConfigError(
            f"val_norm={norm!r} differs from recipe {recipe.name!r}'s {own.norm!r} and no "
            "val_eps is given; pass val_eps (CLI --val-eps) for that norm"
        )
    if own is None:
        return None
    return own if own.norm == norm else None


# ---------------------------------------------------------------------------------------------
# the loop


def train(
    model: nn.Module,
    data: DatasetLike,
    cfg: TrainConfig,
    *,
    checkpoint_path: str | Path | None = None,
    resume: bool = True,
    progress: Callable[[dict[str, Any]], None] | None = None,
    eval_data: DatasetLike | None = None,
    stop_after_steps: int | None = None,
    device: str | torch.device | None = None,
) -> TrainResult:
    """Train ``model`` on ``data`` with the recipe and hyper-parameters in ``cfg``.

    Each epoch visits the data in a fresh seeded order, in batches of ``cfg.batch_size``; each
    step asks the recipe for its inner attack (eval mode) and its loss (train mode) and takes an
    optimizer step. See the module docstring for seeding, checkpoints, the model's mode and the
    per-epoch robust validation.

    Args:
        model: classifier returning logits, already on ``device``; trained in place.
        data: training set with ``.x`` ``(N, C, H, W)`` in ``[0, 1]``, ``.y`` ``(N,)`` int64,
            ``.num_classes`` and ``.name`` (an :class:`advlab.data.Dataset`). With
            ``cfg.val_size > 0``, that many of its samples are held out for validation.
        cfg: the run's configuration (:class:`TrainConfig`).
        checkpoint_path: file for the training checkpoint, written at the end of every epoch,
            every ``cfg.checkpoint_every`` steps and when stopping early. ``None``: no checkpoints.
        resume: if the checkpoint exists, continue from it (the config and data must match,
            except ``checkpoint_every``); ``False`` starts over and overwrites it. Resuming a
            finished run returns its history without training.
        progress: called with a dict after every step (``{"event": "step", "stage": "train",
            "epoch", "step", "steps_per_epoch", "global_step", "loss", "done", "total"}``, where
            ``done``/``total`` are the step and steps per epoch) and after every epoch
            (``{"event": "epoch", "stage": "train", "message": one-line summary,
            **history_row}``). An exception raised by it stops training; the last checkpoint
            stays valid.
        eval_data: dataset whose accuracy (model in eval mode) is recorded after every epoch.
        stop_after_steps: stop after this many optimizer steps of this call, writing a
            checkpoint first; ``TrainResult.completed`` is then False.
        device: where batches are sent; default: the device of ``data.x``.

    Returns:
        A :class:`TrainResult` with the per-epoch history.

    Raises:
        ConfigError: the checkpoint was made with a different config or data, the loss diverged,
            a recipe changed the model's mode, or the model is not on ``device``.
        CheckpointError: a corrupt checkpoint, or one whose model does not fit ``model``.
        DataError: malformed ``data`` or ``eval_data``.

    Example:
        >>> model = build_model("papernot-mnist", seed=0)
        >>> cfg = TrainConfig(epochs=10, recipe="pgd", recipe_params={"eps": 0.3}, val_size=500)
        >>> result = train(model, splits.train, cfg, checkpoint_path="run.ckpt")
    """
    started = time.perf_counter()
    if not isinstance(cfg, TrainConfig):
        raise ConfigError(f"cfg must be an advlab TrainConfig, got {type(cfg).__name__}")
    x, y = _check_data(data)
    if eval_data is not None:
        _check_data(eval_data, "eval_data")
    if stop_after_steps is not None and (
        isinstance(stop_after_steps, bool) or not isinstance(stop_after_steps, int)
        or stop_after_steps < 1
    ):  # fmt: skip
        raise ConfigError(f"stop_after_steps must be an integer >= 1, got {stop_after_steps!r}")
    dev = torch.device(device) if device is not None else x.device
    for p in model.parameters():
        if p.device.type != dev.type or (dev.index is not None and p.device != dev):
            raise ConfigError(
                f"the model is on {p.device} but batches go to {dev}; move the model with "
                f"model.to({str(dev)!r}) or pass device={str(p.device)!r}"
            )
        break
    data_id = _fingerprint(data, y)
    val: tuple[Tensor, Tensor] | None = None
    if cfg.val_size:
        keep, held = split_validation(x.shape[0], cfg)
        val = (x[held], y[held])
        x, y = x[keep], y[keep]
    recipe = build_recipe(cfg.recipe, cfg.recipe_params)
    if recipe.needs_validation and (val is None or validation_threat(cfg, recipe) is None):
        raise ConfigError(
            f"recipe {cfg.recipe!r} acts on per-epoch robust validation, which this config "
            "does not measure; set val_size > 0 (CLI --val-size) with the recipe's norm, or "
            "switch its guard off (guard_drop=1)"
        )
    path = Path(checkpoint_path).expanduser() if checkpoint_path is not None else None
    steps_per_epoch = math.ceil(x.shape[0] / cfg.batch_size)
    with _restore_modes(model), torch.random.fork_rng(devices=_rng_devices(dev)):
        run = _Run(model, cfg, recipe, dev, data_id, steps_per_epoch)
        resumed_from = None
        if path is not None and resume and path.exists():
            run.restore(path)
            resumed_from = (run.pos.epoch, run.pos.step)
            log.info("resuming from %s at epoch %d, step %d", path, *resumed_from)
        recipe.setup(model, dev)
        completed = _loop(run, x, y, path, progress, eval_data, val, stop_after_steps)
    return TrainResult(
        history=[dict(r) for r in run.pos.history],
        wall_time=time.perf_counter() - started,
        global_step=run.pos.global_step,
        completed=completed,
        resumed_from=resumed_from,
        stopped=run.pos.stopped,
    )


def _set_mode(modules: list[nn.Module], training: bool) -> None:
    for m in modules:
        m.training = training


def _check_mode(modules: list[nn.Module], training: bool, recipe: Recipe, where: str) -> None:
    if any(m.training != training for m in modules):
        raise ConfigError(
            f"recipe {recipe.name!r} changed the model's train/eval mode in {where}; the "
            "training loop sets it (eval for perturb, train for loss): remove the mode switch"
        )


def _loop(
    run: _Run,
    x: Tensor,
    y: Tensor,
    path: Path | None,
    progress: Callable[[dict[str, Any]], None] | None,
    eval_data: Any,
    val: tuple[Tensor, Tensor] | None,
    stop_after_steps: int | None,
) -> bool:
    """Train until the last epoch or the recipe's stop (True) or ``stop_after_steps`` (False)."""
    cfg, pos, model, dev, recipe = run.cfg, run.pos, run.model, run.dev, run.recipe
    modules = list(model.modules())
    steps_per_epoch = run.steps_per_epoch
    per_step_schedule = cfg.scheduler == "cyclic"
    steps = 0  # taken in this call
    while pos.epoch < cfg.epochs and pos.stopped is None:
        tick = time.perf_counter()
        perm = run.permutation(x.shape[0]).to(x.device)
        if pos.lr is None:  # set at the epoch's start, kept across a resume
            pos.lr = float(run.opt.param_groups[0]["lr"])
        lr = pos.lr
        while pos.step < steps_per_epoch:
            idx = perm[pos.step * cfg.batch_size : (pos.step + 1) * cfg.batch_size]
            xb, yb = x[idx].to(dev), y[idx].to(dev)
            ctx = run.context()
            _set_mode(modules, False)
            x_adv = recipe.perturb(model, xb, yb, ctx)
            _check_mode(modules, False, recipe, "perturb")
            if x_adv is not None:
                x_adv = x_adv.detach()
            _set_mode(modules, True)
            out = recipe.loss(model, xb, yb, x_adv, ctx)
            _check_mode(modules, True, recipe, "loss")
            loss, logits = out if isinstance(out, tuple) else (out, None)
            value = float(loss.detach())
            if not math.isfinite(value):
                raise ConfigError(
                    f"the training loss became {value} at epoch {pos.epoch + 1}, step "
                    f"{pos.step + 1}; lower the learning rate (lr={cfg.lr}) or check the data"
                )
            run.opt.zero_grad(set_to_none=True)
            loss.backward()
            run.opt.step()
            if per_step_schedule and run.sched is not None:
                run.sched.step()
            pos.step, pos.global_step, steps = pos.step + 1, pos.global_step + 1, steps + 1
            pos.loss_sum += value * yb.shape[0]
            pos.seen += yb.shape[0]
            if logits is not None:
                pos.correct += int((logits.detach().argmax(dim=1) == yb).sum())
                pos.counted += yb.shape[0]
            stop = stop_after_steps is not None and steps >= stop_after_steps
            if pos.step < steps_per_epoch and (
                stop or (cfg.checkpoint_every and pos.global_step % cfg.checkpoint_every == 0)
            ):
                run.save(path, pos.seconds + time.perf_counter() - tick)
            if progress is not None:
                progress({
                    "event": "step", "stage": "train", "epoch": pos.epoch + 1, "step": pos.step,
                    "steps_per_epoch": steps_per_epoch, "global_step": pos.global_step,
                    "loss": value, "done": pos.step, "total": steps_per_epoch,
                })  # fmt: skip
            if stop and pos.step < steps_per_epoch:
                log.info(
                    "stopping after %d steps (epoch %d, step %d)", steps, pos.epoch + 1, pos.step
                )
                return False

        if run.sched is not None and not per_step_schedule:
            run.sched.step()
        _set_mode(modules, False)
        val_tick = time.perf_counter()
        row: dict[str, Any] = {
            "epoch": pos.epoch + 1,
            "loss": pos.loss_sum / pos.seen,
            "train_accuracy": pos.correct / pos.seen if pos.counted == pos.seen else None,
            "eval_accuracy": None,
            **_validate(model, val, validation_threat(cfg, recipe), cfg, dev),
            "lr": lr,
        }
        if eval_data is not None:
            row["eval_accuracy"] = evaluate_accuracy(model, eval_data, device=dev)
        row["val_seconds"] = time.perf_counter() - val_tick
        pos.stopped = recipe.after_epoch(model, row)
        _set_mode(modules, True)
        row["seconds"] = pos.seconds + time.perf_counter() - tick
        pos.history.append(row)
        run.next_epoch()
        run.save(path, 0.0)
        log.info("epoch %d/%d: %s", pos.epoch, cfg.epochs, row)
        if progress is not None:
            progress({"event": "epoch", "stage": "train", "message": _summary(row, cfg), **row})
        if stop_after_steps is not None and steps >= stop_after_steps and pos.epoch < cfg.epochs:
            return pos.stopped is not None
    return True


def _validate(
    model: nn.Module,
    val: tuple[Tensor, Tensor] | None,
    threat: ThreatModel | None,
    cfg: TrainConfig,
    dev: torch.device,
    batch_size: int = 500,
) -> dict[str, Any]:
    """Clean and PGD accuracy on the held-out set (model in eval mode)."""
    from advlab.attacks import pgd

    row: dict[str, Any] = {"val_accuracy": None, "val_robust_accuracy": None, "val_threat": None}
    if val is None:
        return row
    xv, yv = val
    clean = robust = 0
    for i in range(0, xv.shape[0], batch_size):
        xb, yb = xv[i : i + batch_size].to(dev), yv[i : i + batch_size].to(dev)
        with torch.no_grad():
            clean += int((model(xb).argmax(dim=1) == yb).sum())
        if threat is not None:
            res = pgd(model, xb, yb, threat, steps=cfg.val_steps, seed=_derive_seed(cfg.seed, 4))
            robust += int((~res.success & (res.pred == yb)).sum())
    row["val_accuracy"] = clean / xv.shape[0]
    if threat is not None:
        row["val_robust_accuracy"] = robust / xv.shape[0]
        row["val_threat"] = f"{threat.norm} {threat.eps:g}"
    return row


def _summary(row: Mapping[str, Any], cfg: TrainConfig) -> str:
    parts = [f"epoch {row['epoch']}/{cfg.epochs}", f"loss {row['loss']:.4f}"]
    if row["train_accuracy"] is not None:
        parts.append(f"train acc {row['train_accuracy']:.2%}")
    if row["eval_accuracy"] is not None:
        parts.append(f"eval acc {row['eval_accuracy']:.2%}")
    if row.get("val_accuracy") is not None:
        parts.append(f"val acc {row['val_accuracy']:.2%}")
    if row.get("val_robust_accuracy") is not None:
        parts.append(f"val robust acc {row['val_robust_accuracy']:.2%} ({row['val_threat']})")
    parts.append(f"{row['seconds']:.1f} s")
    if row.get("note"):
        parts.append(str(row["note"]))
    return ", ".join(parts)
