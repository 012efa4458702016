"""Papernot et al.'s practical black-box attack: a substitute trained on the oracle's labels.

The attacker sees only the labels the target (the *oracle*) gives to inputs of its choice. From a
small seed set it trains a local *substitute*, growing the set by **Jacobian-based dataset
augmentation**: every point ``x`` gets a sibling ``x + lambda * sign(J_F(x)[O(x)])``, a step
along the sign of the gradient of the substitute's probability for the oracle's label, which
moves towards the substitute's decision boundaries where the oracle's labels are most
informative. Each round asks the oracle to label the new points (one query per image), retrains,
and doubles the set. White-box adversarial examples crafted on the substitute then transfer to
the oracle (:func:`advlab.transfer.transfer_attack`).

Only :meth:`advlab.oracle.Oracle.labels` is ever called on the oracle: a label-only oracle
suffices, and the oracle's own counter is what the result reports.

Reference:
    Papernot, McDaniel, Goodfellow, Jha, Celik & Swami 2017, "Practical Black-Box Attacks against
    Machine Learning" (ASIA CCS): Algorithm 1 (substitute training), the Jacobian-based dataset
    augmentation (``lambda = 0.1``, ``rho = 6`` substitute epochs, 150 seeds from the MNIST test
    set) and the periodic step size ``lambda_rho = lambda * (-1)^floor(rho / tau)``.
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

from advlab.data.base import Dataset
from advlab.errors import ConfigError, InputError
from advlab.oracle import Oracle, as_oracle

log = logging.getLogger(__name__)

#: ``factory(in_shape, num_classes, seed) -> nn.Module``: builds an untrained substitute.
SubstituteFactory = Callable[[tuple[int, ...], int, int], nn.Module]

#: The default substitute: the fully connected 200-200 network of the CleverHans tutorial of this
#: attack (``mnist_blackbox.py``); any zoo name or factory can replace it.
DEFAULT_ARCH: dict[str, Any] = {"name": "mlp", "hidden": (200, 200)}


@dataclass(frozen=True)
class Substitute:
    """A trained substitute and how it was obtained.

    Attributes:
        model: the substitute, in eval mode (its parameters still require grad).
        queries: images the oracle labelled for it (the oracle's own count, ``oracle.used``
            after minus before).
        x: ``(N, *)`` its final training set (the seeds and every augmentation).
        labels: ``(N,)`` the oracle's labels of ``x``.
        history: one row per substitute round ``rho = 0..rounds``: ``round``, ``size`` (training
            set size), ``queries`` (cumulative oracle queries), ``lam`` (the step used for the
            augmentation that followed, ``None`` after the last round), ``agreement`` (fraction
            of the held-out set on which the substitute predicts the oracle's label, ``None``
            without a held-out set) and ``seconds``.
        stopped: why augmentation stopped before ``rounds`` (the oracle's total budget), else
            ``None``.
    """

    model: nn.Module
    queries: int
    x: Tensor
    labels: Tensor
    history: list[dict[str, Any]] = field(default_factory=list)
    stopped: str | None = None

    @property
    def agreement(self) -> float | None:
        """The last round's agreement with the oracle on the held-out set."""
        return self.history[-1].get("agreement") if self.history else None


def step_size(lam: float, rho: int, tau: int | None) -> float:
    """The augmentation step of round ``rho``: ``lam * (-1) ** floor(rho / tau)`` (Papernot et
    al. 2017, the periodic step size); ``tau=None`` keeps ``lam`` fixed."""
    if tau is None:
        return lam
    return lam * (-1.0) ** (rho // tau)


def jacobian_augmentation(
    model: nn.Module,
    x: Tensor,
    labels: Tensor,
    lam: float,
    *,
    lower: float = 0.0,
    upper: float = 1.0,
    batch_size: int = 512,
) -> Tensor:
    """The new points of one augmentation round: ``clip(x + lam * sign(dF_label / dx))``.

    ``F`` is the substitute's softmax output and ``label`` the oracle's label of each point, so
    the step follows the sign of the row of the Jacobian that belongs to the oracle's class.

    Args:
        model: the substitute (its mode is used as it is; pass it in eval mode).
        x: ``(N, *)`` the current training points.
        labels: ``(N,)`` the oracle's labels of ``x``.
        lam: the signed step size.
        lower, upper: the input box the new points are clipped to.
        batch_size: points per backward pass.

    Shape:
        returns ``(N, *)``, like ``x``.

    Reference:
        Papernot et al. 2017, Jacobian-based dataset augmentation.
    """
    out = torch.empty_like(x)
    for i in range(0, x.shape[0], batch_size):
        xb = x[i : i + batch_size].detach().clone().requires_grad_(True)
        prob = torch.softmax(model(xb), dim=1)
        picked = prob.gather(1, labels[i : i + batch_size, None]).sum()
        (g,) = torch.autograd.grad(picked, xb)
        out[i : i + batch_size] = (xb.detach() + lam * g.sign()).clamp(lower, upper)
    return out


def _build(arch: str | dict[str, Any] | SubstituteFactory, shape: tuple[int, ...], c: int,
           seed: int) -> nn.Module:  # fmt: skip
    if callable(arch):
        model = arch(shape, c, seed)
        if not isinstance(model, nn.Module):
            raise ConfigError(f"the substitute factory returned {type(model).__name__}, not a torch nn.Module")  # fmt: skip
        return model
    from advlab.models.zoo import build_model

    spec = {"name": arch} if isinstance(arch, str) else dict(arch)
    name = spec.pop("name", None)
    if not isinstance(name, str):
        raise ConfigError(f"arch must be a zoo name, a dict with 'name', or a factory; got {arch!r}")  # fmt: skip
    if len(shape) != 3:
        raise InputError(
            f"zoo substitutes take (C, H, W) images, the seeds are {shape}; pass arch= a factory"
        )
    return build_model(name, seed=seed, num_classes=c, in_shape=shape, **spec)


@torch.no_grad()
def _agreement(model: nn.Module, x: Tensor, labels: Tensor, batch_size: int) -> float:
    hits = sum(
        int((model(x[i : i + batch_size]).argmax(1) == labels[i : i + batch_size]).sum())
        for i in range(0, len(x), batch_size)
    )
    return hits / max(1, len(x))


def train_substitute(
    oracle: Oracle | nn.Module,
    seed_x: Tensor,
    *,
    arch: str | dict[str, Any] | SubstituteFactory | None = None,
    rounds: int = 6,
    lam: float = 0.1,
    tau: int | None = 3,
    epochs: int = 10,
    batch_size: int = 64,
    lr: float = 1e-3,
    num_classes: int | None = None,
    holdout: tuple[Tensor, Tensor] | None = None,
    lower: float = 0.0,
    upper: float = 1.0,
    query_batch: int = 1000,
    seed: int = 0,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> Substitute:
    """Train a substitute of ``oracle`` from its labels (Papernot et al. 2017, Algorithm 1).

    Round ``rho = 0..rounds``: label the points added since the last round (the seeds at
    ``rho = 0``) with the oracle, train the substitute for ``epochs`` on every point so far
    (continuing from the previous round's weights, with advlab's training loop), and, except
    after the last round, add ``jacobian_augmentation(x, labels, lam_rho)`` for every point.
    The set doubles each round, so the oracle answers ``len(seed_x) * 2 ** rounds`` queries in
    all (150 seeds, 6 rounds: 9,600; the paper labels 6,400 inputs to attack MetaMind).

    Args:
        oracle: the target; only its labels are read (a label-only oracle suffices). A torch
            module is wrapped in a :class:`~advlab.oracle.ModuleOracle`.
        seed_x: ``(S, *)`` the attacker's seed inputs in ``[lower, upper]`` (the paper: 150
            images of the MNIST test set, kept out of the evaluation).
        arch: the substitute: a zoo name (``"papernot-mnist"``), a dict ``{"name": ..., **kw}``
            of zoo arguments, or ``factory(in_shape, num_classes, seed) -> nn.Module``. Default:
            :data:`DEFAULT_ARCH`, a 200-200 MLP.
        rounds: augmentation rounds ``rho`` (the paper's substitute epochs); ``rounds + 1``
            trainings.
        lam: the augmentation step ``lambda`` (0.1 in the paper).
        tau: flip the step's sign every ``tau`` rounds (3 in the paper); ``None``: never.
        epochs, batch_size, lr: training per round (Adam, constant rate).
        num_classes: the class count, needed only when the oracle does not reveal it.
        holdout: ``(x, labels)``: inputs and the oracle's labels of them (obtained by the
            caller, outside this attack's query count), on which each round's agreement is
            measured.
        lower, upper: the input box.
        query_batch: images per oracle call.
        seed: seeds the substitute's initialization and training order.
        progress: called with ``{"event": "round", "stage": "substitute", "message", "done",
            "total", **history_row}`` after each round.

    Returns:
        A :class:`Substitute`. If the oracle's total query budget cannot label a round's new
        points, augmentation stops there (``stopped`` says so) and the substitute trained so
        far is returned.

    Example:
        >>> oracle = ModuleOracle(target_model, access="labels")
        >>> sub = train_substitute(oracle, test.x[:150], holdout=(test.x[150:], labels))
        >>> res = transfer_attack(sub.model, oracle, x, y, ThreatModel("linf", 0.3))
    """
    from advlab.defenses.train import TrainConfig, train

    oracle = as_oracle(oracle)
    if not isinstance(seed_x, Tensor) or seed_x.dim() < 2 or not seed_x.is_floating_point():
        raise InputError("seed_x must be a float tensor (S, *) of inputs; e.g. test.x[:150]")
    if seed_x.shape[0] == 0:
        raise InputError("seed_x is empty; pass at least one seed input (the paper uses 150)")
    if bool((seed_x < lower).any()) or bool((seed_x > upper).any()):
        raise InputError(f"seed_x must lie in the input box [{lower}, {upper}]")
    for name, v in (("rounds", rounds), ("epochs", epochs), ("batch_size", batch_size),
                    ("query_batch", query_batch)):  # fmt: skip
        if isinstance(v, bool) or not isinstance(v, int) or v < (0 if name == "rounds" else 1):
            raise ConfigError(f"{name} must be an integer >= {0 if name == 'rounds' else 1}, got {v!r}")  # fmt: skip
    if tau is not None and (isinstance(tau, bool) or not isinstance(tau, int) or tau < 1):
        raise ConfigError(f"tau must be an integer >= 1 or None (never flip), got {tau!r}")
    if not (isinstance(lam, int | float) and math.isfinite(lam) and lam > 0):
        raise ConfigError(f"lam must be a finite number > 0 (the paper: 0.1), got {lam!r}")
    if holdout is not None and (len(holdout) != 2 or holdout[0].shape[0] != holdout[1].shape[0]):
        raise InputError("holdout must be a pair (x, labels) with one label per input")
    start_used = oracle.used
    x = seed_x.detach().clone()
    labels = oracle.labels(x, batch_size=query_batch)
    c = oracle.num_classes or num_classes
    if c is None:
        raise ConfigError("this oracle does not reveal its class count; pass num_classes=")
    model = _build(arch if arch is not None else DEFAULT_ARCH, tuple(x.shape[1:]), int(c), seed)
    model = model.to(x.device)
    history: list[dict[str, Any]] = []
    stopped = None
    for rho in range(rounds + 1):
        tick = time.perf_counter()
        cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, scheduler="none",
                          seed=seed * 1009 + rho)  # fmt: skip
        train(model, Dataset("substitute", x, labels, int(c)), cfg)
        model.eval()
        row: dict[str, Any] = {"round": rho, "size": int(x.shape[0]),
                               "queries": oracle.used - start_used, "lam": None}  # fmt: skip
        if holdout is not None:
            row["agreement"] = _agreement(model, holdout[0], holdout[1], query_batch)
        if rho < rounds and stopped is None:
            if oracle.remaining < x.shape[0]:
                stopped = (
                    f"the oracle's total budget ({int(oracle.remaining)} queries left) cannot "
                    f"label the {x.shape[0]} points of round {rho + 1}; stopped after round {rho}"
                )
            else:
                row["lam"] = step_size(lam, rho, tau)
                new = jacobian_augmentation(model, x, labels, row["lam"], lower=lower, upper=upper)
                labels = torch.cat([labels, oracle.labels(new, batch_size=query_batch)])
                x = torch.cat([x, new])
        row["seconds"] = time.perf_counter() - tick
        history.append(row)
        agree = row.get("agreement")
        msg = f"substitute round {rho}/{rounds}: {row['size']} points, {row['queries']} queries"
        log.info(msg + ("" if agree is None else f", agreement {agree:.1%}"))
        if progress is not None:
            progress({"event": "round", "stage": "substitute", "done": rho + 1,
                      "total": rounds + 1, "message": msg + ("" if agree is None else
                      f", agreement {agree:.1%}"), **row})  # fmt: skip
        if stopped is not None:
            break
    return Substitute(model=model, queries=oracle.used - start_used, x=x, labels=labels,
                      history=history, stopped=stopped)  # fmt: skip
