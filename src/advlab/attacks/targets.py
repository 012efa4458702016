"""Choosing target classes for targeted attacks, and running a targeted attack toward all of them."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from advlab.attacks.base import AttackSpec, get_attack
from advlab.errors import ConfigError, InputError
from advlab.oracle import Access, Oracle, as_oracle
from advlab.rng import SampleRNG, as_sample_rng
from advlab.threat import ThreatModel

TARGET_MODES = ("random", "least-likely")


def select_targets(
    model: nn.Module | Oracle,
    x: Tensor,
    y: Tensor,
    mode: str = "random",
    *,
    num_classes: int | None = None,
    seed: int | SampleRNG = 0,
) -> Tensor:
    """Pick one target class per sample, never the true label.

    Args:
        model: a torch classifier or an oracle (``"least-likely"`` needs scores).
        mode: ``"random"`` (uniform over the other classes) or ``"least-likely"`` (the class the
            model finds least likely on the clean input; Kurakin et al. 2017).
        num_classes: number of classes; read from the model's output (one query per sample)
            when omitted.
        seed: an int, or per-sample streams (:class:`~advlab.rng.SampleRNG`), for ``"random"``.

    Returns:
        ``(B,)`` int64 targets on ``y``'s device.
    """
    if mode not in TARGET_MODES:
        raise ConfigError(f"unknown target mode {mode!r}; use one of {', '.join(TARGET_MODES)}")
    oracle = as_oracle(model)
    if mode == "least-likely":
        oracle.require(Access.SCORES, "least-likely targets")
        return oracle.scores(x).scatter(1, y[:, None], float("inf")).argmin(dim=1)
    if num_classes is None:
        oracle.labels(x[:1])
        num_classes = oracle.num_classes
        if num_classes is None:
            raise ConfigError("this oracle does not reveal its class count; pass num_classes=")
    if num_classes < 2:
        raise ConfigError("targeted attacks need at least 2 classes")
    rng = as_sample_rng(seed, y.shape[0], y.device)
    off = 1 + rng.integers(num_classes - 1)
    return (y + off) % num_classes


def all_other_targets(num_classes: int, y: Tensor) -> Tensor:
    """Every class but the true one, per sample, in increasing order.

    Shape:
        y: ``(B,)`` labels in ``[0, num_classes)``. Returns ``(B, num_classes - 1)`` int64 on
        ``y``'s device; row ``i`` is ``[0, ..., num_classes - 1]`` without ``y[i]``.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ConfigError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise InputError(
            f"labels must lie in [0, {num_classes}), got values in [{int(y.min())}, {int(y.max())}]"
        )
    k = torch.arange(num_classes - 1, device=y.device)[None, :]
    yy = y.to(torch.long)[:, None]
    return k + (k >= yy).to(torch.long)


def targeted_cases(
    attack: AttackSpec | str,
    model: nn.Module | Oracle,
    x: Tensor,
    y: Tensor,
    threat: ThreatModel,
    *,
    num_classes: int,
    **params: Any,
) -> dict[str, Any]:
    """Run a targeted attack toward every other class: best, average and worst case.

    The attack runs ``num_classes - 1`` times, once per column of :func:`all_other_targets`.
    Per sample and target the distance is the result's norm where the attack succeeded and
    ``inf`` where it did not. Then, as in Carlini & Wagner 2017 (Tables IV to VI):

    * **best case**: the easiest target. Success if *any* target succeeds; distance is the
      smallest over the successful targets.
    * **average case**: a target drawn uniformly. Success is the fraction of targets that
      succeed (the case's ``success_rate`` is the fraction of (sample, target) pairs); distance
      is the mean over the successful targets.
    * **worst case**: the hardest target. Success only if *every* target succeeds; distance is
      the largest over the targets.

    Distances are ``inf`` where the case failed (no success for best and average, any failure
    for worst), so on samples where a case succeeds ``best <= average <= worst``.

    Args:
        attack: a registered attack's name or its :class:`~advlab.attacks.base.AttackSpec`.
        model, x, y, threat: as for the attack.
        num_classes: number of classes of the model.
        **params: the attack's keyword hyper-parameters (``target`` is set here, per run).

    Shape:
        x: ``(B, *)``, y: ``(B,)``; ``T = num_classes - 1`` targets per sample.

    Returns:
        A dict with

        * ``"targets"``: ``(B, T)`` int64, the target of each run (:func:`all_other_targets`);
        * ``"results"``: the ``T`` :class:`~advlab.results.AttackResult` objects, one per column;
        * ``"success"``: ``(B, T)`` bool and ``"norms"``: ``(B, T)`` distances (``inf`` on failure);
        * ``"best"``, ``"average"``, ``"worst"``: dicts with ``"success"`` (``(B,)``; bool, for
          average the float fraction of targets), ``"norms"`` (``(B,)``) and ``"success_rate"``
          (a float over the batch); ``"best"`` also has ``"target"``, the easiest successful
          target per sample (``-1`` where none succeeded).

    Example:
        >>> cases = targeted_cases("jsma", model, x, y, ThreatModel("l0", math.inf), num_classes=10)
        >>> cases["worst"]["success_rate"], cases["best"]["norms"]
    """
    spec = get_attack(attack) if isinstance(attack, str) else attack
    if not isinstance(spec, AttackSpec):
        raise ConfigError(
            f"attack must be a registered attack name or an AttackSpec, got {type(attack).__name__}"
        )
    if "target" in params:
        raise ConfigError("targeted_cases chooses the targets itself; drop the target= argument")
    if not isinstance(y, Tensor) or y.dim() != 1:
        raise InputError("labels must be a 1-D tensor with one entry per sample")
    targets = all_other_targets(num_classes, y)
    results = [spec(model, x, y, threat, target=targets[:, j].contiguous(), **params)
               for j in range(targets.shape[1])]  # fmt: skip
    success = torch.stack([r.success for r in results], dim=1)
    norms = torch.stack([r.norms for r in results], dim=1)
    dist = torch.where(success, norms, torch.full_like(norms, math.inf))
    inf = torch.full_like(dist[:, 0], math.inf)

    best_norm, best_j = dist.min(dim=1)
    best_ok = success.any(dim=1)
    best_target = torch.where(best_ok, targets.gather(1, best_j[:, None]).squeeze(1), -1)

    count = success.sum(dim=1)
    mean = torch.where(success, dist, torch.zeros_like(dist)).sum(dim=1) / count.clamp(min=1)
    avg_norm = torch.where(count > 0, mean, inf)
    avg_frac = success.to(norms.dtype).mean(dim=1)

    worst_ok = success.all(dim=1)
    worst_norm = torch.where(worst_ok, dist.max(dim=1).values, inf)

    def rate(s: Tensor) -> float:
        return float(s.to(torch.float64).mean()) if s.numel() else math.nan

    return {
        "targets": targets,
        "results": results,
        "success": success,
        "norms": dist,
        "best": {"success": best_ok, "norms": best_norm, "target": best_target,
                 "success_rate": rate(best_ok)},
        "average": {"success": avg_frac, "norms": avg_norm, "success_rate": rate(avg_frac)},
        "worst": {"success": worst_ok, "norms": worst_norm, "success_rate": rate(worst_ok)},
    }  # fmt: skip


def targeted_grid(
    attack: AttackSpec | str,
    model: nn.Module | Oracle,
    x: Tensor,
    y: Tensor,
    threat: ThreatModel,
    *,
    num_classes: int,
    **params: Any,
) -> dict[str, Any]:
    """The source x target grid of Carlini & Wagner 2017's figures: the first input of each
    class in ``x`` attacked toward every other class (:func:`targeted_cases`).

    Pass inputs the model classifies correctly (the grid shows what each source becomes).

    Returns:
        ``{"x": (C, *) the source inputs, "x_adv": (C, C, *), "pred": (C, C) predictions on
        x_adv, "success": (C, C) bool, "index": (C,) their positions in x, "attack": name}``;
        the diagonal holds the source input, its label and ``success = False``. This is the
        ``targeted_grid`` the HTML report draws (:func:`advlab.report.sections.targeted_section`).

    Raises:
        InputError: some class has no input in ``x`` (names the classes).
    """
    spec = get_attack(attack) if isinstance(attack, str) else attack
    first = [torch.nonzero(y == c).flatten()[:1] for c in range(num_classes)]
    missing = [c for c, f in enumerate(first) if f.numel() == 0]
    if missing:
        raise InputError(
            f"the targeted grid needs an input of every class; none of class "
            f"{', '.join(map(str, missing))}: pass more inputs"
        )
    index = torch.cat(first)
    xs, ys = x[index], y[index]
    cases = targeted_cases(spec, model, xs, ys, threat, num_classes=num_classes, **params)
    c = num_classes
    x_adv = xs[:, None].repeat(1, c, *([1] * (xs.dim() - 1)))
    pred = ys[:, None].repeat(1, c)
    success = torch.zeros(c, c, dtype=torch.bool, device=y.device)
    for j, res in enumerate(cases["results"]):
        col = cases["targets"][:, j]
        rows = torch.arange(c, device=y.device)
        x_adv[rows, col] = res.x_adv
        pred[rows, col] = res.pred
        success[rows, col] = res.success
    return {"x": xs, "x_adv": x_adv, "pred": pred, "success": success, "index": index,
            "attack": spec.name}  # fmt: skip
