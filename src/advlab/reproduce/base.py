"""The reproduction catalog's nouns: an entry (:class:`Reproduction`), the figures it measures
against the paper's (:class:`Figure` with a :class:`Target`), what a run returns
(:class:`Outcome`), and the :class:`Context` an entry runs in (its parameters, data, device and
a resumable output folder).

An entry is a function ``run(ctx) -> Outcome`` registered with :func:`reproduction`, with its
full-run parameters and the overrides of its ``--quick`` mode. Every parameter can be changed
from the command line (``--set key=value``), so the budget of a run is always data, never an
edit. The targets are part of the entry: a full run is marked against the paper's figure and
the stated tolerance; a quick run (smaller data and budget) against direction targets that say
the effect is there, not that its size matches.
"""

from __future__ import annotations

import difflib
import json
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor, nn

from advlab.data import load_dataset
from advlab.data.base import Splits
from advlab.errors import ConfigError
from advlab.fileio import atomic_write_text
from advlab.registry import REPRODUCTIONS

if TYPE_CHECKING:
    from advlab.defenses import TrainConfig

log = logging.getLogger(__name__)

Progress = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class Target:
    """What a measured value must satisfy: ``op`` is ``">="``, ``"<="`` or ``"between"``
    (``value <= x <= high``)."""

    op: Literal[">=", "<=", "between"]
    value: float
    high: float | None = None

    def holds(self, x: float | None) -> bool:
        """Whether ``x`` satisfies the target (never for None or NaN)."""
        if x is None or not math.isfinite(x):
            return False
        if self.op == ">=":
            return x >= self.value
        if self.op == "<=":
            return x <= self.value
        assert self.high is not None
        return self.value <= x <= self.high

    def describe(self, unit: str = "%") -> str:
        """The target as the report prints it (``"≥ 98.0%"``)."""
        if self.op == "between":
            return f"{format_value(self.value, unit)} to {format_value(self.high, unit)}"
        return f"{'≥' if self.op == '>=' else '≤'} {format_value(self.value, unit)}"


def at_least(value: float) -> Target:
    """The measured value must be ``>= value``."""
    return Target(">=", value)


def at_most(value: float) -> Target:
    """The measured value must be ``<= value``."""
    return Target("<=", value)


def between(low: float, high: float) -> Target:
    """The measured value must lie in ``[low, high]``."""
    return Target("between", low, high)


def within(center: float, tolerance: float) -> Target:
    """``center ± tolerance`` (absolute, in the figure's units)."""
    return Target("between", center - tolerance, center + tolerance)


def format_value(x: float | str | None, unit: str = "%") -> str:
    """A figure as the report prints it: fractions as percent for ``unit="%"``, ratios with
    ``×``, anything else as a number followed by the unit."""
    if x is None:
        return "–"
    if isinstance(x, str):
        return x
    if not math.isfinite(x):
        return "–" if math.isnan(x) else ("∞" if x > 0 else "-∞")
    if unit == "%":
        return f"{100 * x:.1f}%"
    if unit == "x":
        return f"{x:.2f}×"
    text = f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}"
    return f"{text} {unit}".strip()


@dataclass(frozen=True)
class Figure:
    """One number of the paper beside the measured one.

    Args:
        label: what it is ("clean accuracy", "PGD-100 worst case").
        measured: the measured value (None when it could not be measured).
        paper: the paper's value, a number in the same units or a text ("~89%", "n/a").
        target: what ``measured`` must satisfy for the figure to pass; None for a figure shown
            for information only.
        unit: ``"%"`` (fractions, printed as percent), ``"x"`` (ratios) or a unit name.
        note: a short remark printed beside it.
    """

    label: str
    measured: float | None
    paper: float | str | None = None
    target: Target | None = None
    unit: str = "%"
    note: str = ""

    @property
    def passed(self) -> bool | None:
        """Whether the target holds; None for a figure without a target."""
        return None if self.target is None else self.target.holds(self.measured)

    def to_dict(self) -> dict[str, Any]:
        """The figure as stored in ``reproduction.json`` (with ``passed`` and the target's text)."""
        t = self.target
        return {
            "label": self.label, "measured": self.measured, "paper": self.paper,
            "unit": self.unit, "note": self.note, "passed": self.passed,
            "target": None if t is None else {"op": t.op, "value": t.value, "high": t.high,
                                              "text": t.describe(self.unit)},
        }  # fmt: skip


@dataclass
class Table:
    """A detail table of an outcome: ``rows`` of already formatted cells."""

    title: str
    columns: list[str]
    rows: list[list[str]]


@dataclass
class Outcome:
    """What an entry's run returns.

    Args:
        figures: the paper-beside-measured figures, marked against their targets.
        tables: detail tables (per model, per eps, ...).
        notes: remarks that qualify the figures (budget differences, warnings).
        data: the raw results, kept in the JSON file.
        plots: ``(caption, PNG data URI)`` pictures for the HTML report (draw on
            :func:`advlab.report.fmt.figure` and encode with :func:`~advlab.report.fmt.png_data_uri`).
    """

    figures: list[Figure]
    tables: list[Table] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    plots: list[tuple[str, str]] = field(default_factory=list)

    @property
    def passed(self) -> bool | None:
        """True when every figure with a target meets it; None when no figure has one."""
        marks = [f.passed for f in self.figures if f.passed is not None]
        return None if not marks else all(marks)


@dataclass(frozen=True)
class Reproduction:
    """One published experiment the catalog reproduces.

    Args:
        name: the catalog name (``advlab reproduce NAME``).
        title: a one-line description.
        paper: the reference (authors, year, title, table or figure).
        claim: the paper's result in one or two sentences, with its numbers.
        run: ``run(ctx) -> Outcome``.
        params: the full run's parameters (every one settable with ``--set``).
        quick: the overrides of ``--quick`` (mnist5k, small budgets: minutes on a CPU).
        budget: how the full run's budget differs from the paper's.
        minutes: rough CPU minutes of the quick run (2 cores), for ``advlab reproduce list``.
    """

    name: str
    title: str
    paper: str
    claim: str
    run: Callable[[Context], Outcome]
    params: Mapping[str, Any]
    quick: Mapping[str, Any]
    budget: str
    minutes: float = 5.0

    def resolve(self, *, quick: bool, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The parameters of a run: the defaults, the quick overrides, then ``overrides``.
        Unknown keys and values of the wrong type raise :class:`ConfigError`."""
        params = {**self.params, **(self.quick if quick else {})}
        for key, value in (overrides or {}).items():
            if key not in params:
                near = difflib.get_close_matches(key, list(params), n=1)
                hint = f"; did you mean {near[0]!r}?" if near else ""
                raise ConfigError(
                    f"{self.name} has no parameter {key!r}{hint} (known: {', '.join(sorted(params))})"
                )
            params[key] = _coerce(self.name, key, value, params[key])
        return params


def _coerce(entry: str, key: str, value: Any, default: Any) -> Any:
    """``value`` in the type of ``default`` (an int is accepted for a float, a number or a
    comma-separated string for a list of numbers)."""
    if default is None or value is None:
        return value
    kind = type(default)
    if kind is bool:
        if isinstance(value, bool):
            return value
    elif kind is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    elif kind is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    elif kind is str and isinstance(value, str):
        return value
    elif kind in (list, tuple):
        items = value.split(",") if isinstance(value, str) else value
        items = [items] if isinstance(items, int | float) else items
        if isinstance(items, list | tuple):
            try:
                return [_item(v, default[0]) if default else v for v in items]
            except (TypeError, ValueError):
                pass
    raise ConfigError(
        f"{entry}: parameter {key!r} takes a {kind.__name__} (default {default!r}), got {value!r}"
    )


def _item(value: Any, sample: Any) -> Any:
    """One list item in the type of ``sample`` (text from the command line read as JSON first,
    so ``"0.5"`` becomes 0.5 for a list of floats)."""
    if isinstance(value, str) and not isinstance(sample, str):
        value = json.loads(value)
    return type(sample)(value)


def reproduction(
    name: str, *, title: str, paper: str, claim: str, params: Mapping[str, Any],
    quick: Mapping[str, Any], budget: str, minutes: float = 5.0,
) -> Callable[[Callable[[Context], Outcome]], Callable[[Context], Outcome]]:  # fmt: skip
    """Decorator that registers ``run(ctx) -> Outcome`` as catalog entry ``name`` (see
    :class:`Reproduction` for the arguments)."""

    def deco(fn: Callable[[Context], Outcome]) -> Callable[[Context], Outcome]:
        entry = Reproduction(name, title, paper, claim, fn, dict(params), dict(quick),
                             budget, minutes)  # fmt: skip
        REPRODUCTIONS.add(name, entry, description=title)
        return fn

    return deco


class Context:
    """Where an entry runs: its parameters (``ctx.p``), its data, device and output folder.

    Everything an entry computes that takes long is resumable: :meth:`model` trains a model
    once (resuming its checkpoint after an interrupt) and reuses it after, and :meth:`cached`
    stores an evaluation stage atomically, reused when what it depends on is unchanged.

    Args:
        entry: the catalog entry (None for a script outside the catalog).
        params: the resolved parameters (:meth:`Reproduction.resolve`); ``data`` names the
            dataset.
        quick: whether this is a ``--quick`` run.
        out: the output folder.
        data_dir: the folder holding standard datasets (None: ``$ADVLAB_DATA``, else the
            default cache).
        device: ``"cpu"`` or ``"cuda"``.
        fresh: recompute cached evaluation stages (trained models are kept).
        progress: called with progress events (``{"message": ...}`` and the training loop's).
    """

    def __init__(
        self, entry: Reproduction | None, params: Mapping[str, Any], *, quick: bool, out: Path,
        data_dir: str | None = None, device: str = "cpu", fresh: bool = False,
        progress: Progress | None = None,
    ) -> None:  # fmt: skip
        self.entry = entry
        self.name = entry.name if entry is not None else Path(out).name
        self.p = dict(params)
        self.quick = quick
        self.out = Path(out)
        self.data_dir = data_dir
        self.device = torch.device(device)
        self.fresh = fresh
        self.progress = progress
        self.out.mkdir(parents=True, exist_ok=True)

    @property
    def data(self) -> str:
        """The dataset name of the run (parameter ``data``)."""
        return str(self.p.get("data", "mnist5k"))

    def log(self, message: str) -> None:
        """A progress message (logged, and shown by the CLI)."""
        log.info(message)
        if self.progress is not None:
            self.progress({"message": message})

    @cached_property
    def splits(self) -> Splits:
        return load_dataset(self.data, data_dir=self.data_dir)

    def test_set(self, n: int | None = None) -> tuple[Tensor, Tensor]:
        """The first ``n`` test images (all when None) and labels, on the device."""
        test = self.splits.test
        n = len(test.x) if n is None else min(n, len(test.x))
        return test.x[:n].to(self.device), test.y[:n].to(self.device)

    def model(
        self, key: str, arch: str, cfg: Any, arch_kwargs: Mapping[str, Any] | None = None,
        data: str | None = None,
    ) -> tuple[nn.Module, dict[str, Any]]:  # fmt: skip
        """The model ``key`` (``<out>/<key>.safetensors``): loaded when finished, else trained
        with :func:`advlab.defenses.train_and_save` on ``data`` (default the entry's), resuming
        its checkpoint. Returned in eval mode with frozen parameters. A stored model trained
        with another configuration raises :class:`ConfigError`."""
        from advlab.defenses import recipe_params, train_and_save
        from advlab.models import load_model

        path = self.out / f"{key}.safetensors"
        data = data or self.data
        if not path.exists():
            self.log(f"training {key}: {arch} {dict(arch_kwargs or {}) or ''} {cfg.recipe} "
                     f"{cfg.recipe_params or ''}, {cfg.epochs} epochs on {data}")  # fmt: skip
            train_and_save(arch, data, cfg, path, data_dir=self.data_dir, progress=self.progress,
                           arch_kwargs=dict(arch_kwargs or {}), device=str(self.device))  # fmt: skip
        model, meta = load_model(path)
        want = {**cfg.to_dict(), "recipe_params": recipe_params(cfg.recipe, cfg.recipe_params)}
        if meta.get("recipe") != want or meta.get("dataset", data) != data:
            raise ConfigError(
                f"{path} was trained with another configuration than this run asks for; delete "
                "it (and the .eval.json files beside it) to retrain, or pass another --out"
            )
        model.to(self.device).eval()
        for p in model.parameters():
            p.requires_grad_(False)
        return model, dict(meta)

    def cached(
        self, key: str, fn: Callable[[], dict[str, Any]], signature: Mapping[str, Any]
    ) -> dict[str, Any]:
        """``fn()``'s result, stored in ``<out>/<key>.eval.json`` with ``signature`` (what it
        depends on: the weights' SHA-256, the images, the attacks and their budgets) and reused
        when the stored signature is equal, unless the context is ``fresh``."""
        path = self.out / f"{key}.eval.json"
        sig = json.loads(json.dumps(signature))  # as it reads back
        if path.exists() and not self.fresh:
            try:
                stored = json.loads(path.read_text())
            except ValueError:
                stored = {}
            if stored.get("signature") == sig:
                return dict(stored["result"])
            self.log(f"{path.name} was computed for another model or budget: recomputing")
        self.log(f"evaluating {key}")
        tick = time.perf_counter()
        result = fn()
        result["eval_seconds"] = time.perf_counter() - tick
        atomic_write_text(path, json.dumps({"signature": sig, "result": result}, indent=1))
        return result


def bench_config(epochs: int, seed: int = 0) -> TrainConfig:
    """How the project's benchmark models are trained: standard training, Adam at 1e-3 with a
    cosine schedule, batches of 128 (``advlab train --batch-size 128 --lr 1e-3 --scheduler
    cosine``). Entries that attack an undefended model train it with this."""
    from advlab.defenses import TrainConfig

    return TrainConfig(epochs=epochs, batch_size=128, lr=1e-3, optimizer="adam",
                       scheduler="cosine", seed=seed, recipe="standard")  # fmt: skip


def training_seconds(meta: Mapping[str, Any]) -> float:
    """Seconds the saved model spent training, its per-epoch validation excluded."""
    rows = meta.get("extra", {}).get("training", {}).get("history") or []
    if not rows:
        return float("nan")
    return float(sum(r["seconds"] - r.get("val_seconds", 0.0) for r in rows))
