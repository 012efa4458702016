"""The plan of an evaluation: which attack runs under which threat model on which samples.

An evaluation is configured by attacks (:class:`AttackConfig`), threat models (a grid of radii,
in one norm or several) and an :class:`EvalConfig`. :func:`make_plan` turns them into a
:class:`Plan`:

* **cells** (:class:`~advlab.results.Cell`) to run: every eps-bounded attack at every radius
  ``> 0`` of each norm it supports, and every minimal-perturbation attack once per norm, with
  ``eps = inf`` (its perturbation is then read at each radius);
* **rows** (:class:`Row`) to report: per threat model, one per attack and the worst case;
* **certification cells** (with ``EvalConfig(certify=...)``): one per norm, named
  :data:`CERTIFIED` with ``eps = inf``, whose records carry each sample's certified radius
  (read at every radius of the grid, like a minimal attack's perturbation);
* the **samples**: dataset indices, all of them or one shard's, cut into batches.

Nothing here touches a model; the plan is a pure function of the configuration.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from advlab.attacks.base import AttackSpec, get_attack
from advlab.errors import ConfigError
from advlab.registry import CERTIFIERS
from advlab.results import Cell
from advlab.serialize import canonical_json
from advlab.threat import NORMS, ThreatModel

#: Name of the per-sample worst case over all attacks in rows, reports and the store.
WORST_CASE = "worst-case"
#: Name under which the clean predictions are stored (``eps = 0``).
CLEAN = "clean"
#: Name of the cells holding certified radii (one per norm, ``eps = inf``).
CERTIFIED = "certified"
RESERVED = (WORST_CASE, CLEAN, CERTIFIED)
#: The norms certification bounds.
CERTIFIABLE_NORMS = ("linf", "l2", "l1")


def attack_parameters(spec: AttackSpec) -> tuple[str, ...]:
    """The hyper-parameters an attack accepts by keyword."""
    return tuple(spec.defaults)


@dataclass(frozen=True)
class AttackConfig:
    """One attack of an evaluation: a registered name and its hyper-parameters.

    Args:
        name: a name registered in :data:`advlab.registry.ATTACKS` (``advlab list attacks``).
        params: keyword arguments for the attack, e.g. ``{"steps": 100, "restarts": 5}``.

    Raises:
        UnknownNameError: for an unregistered attack.
        ConfigError: for a parameter the attack does not take, or one that cannot be stored.
    """

    name: str
    params: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.name in RESERVED:
            raise ConfigError(f"{self.name!r} is a reserved name in evaluations")
        params = dict(self.params)
        get_attack(self.name).resolve(params)  # unknown names and parameters
        canonical_json(params)  # fails fast on values the store cannot hold
        object.__setattr__(self, "params", params)

    @property
    def spec(self) -> AttackSpec:
        """The registered attack."""
        return get_attack(self.name)

    @property
    def resolved(self) -> dict[str, Any]:
        """The parameters with the attack's defaults filled in (what a cell records)."""
        return self.spec.resolve(self.params)

    @classmethod
    def parse(cls, value: AttackConfig | str | Mapping[str, Any]) -> AttackConfig:
        """An :class:`AttackConfig` from itself, a name, or ``{"name": ..., "params": {...}}``."""
        if isinstance(value, AttackConfig):
            return value
        if isinstance(value, str):
            return cls(value)
        if isinstance(value, Mapping):
            unknown = sorted(set(value) - {"name", "params"})
            if "name" not in value or unknown:
                raise ConfigError(
                    f"an attack entry needs the keys 'name' and optionally 'params', got "
                    f"{sorted(value)}"
                )
            return cls(value["name"], dict(value.get("params") or {}))
        raise ConfigError(
            f"an attack must be a name, a dict or an AttackConfig, got {type(value).__name__}"
        )

    def to_dict(self) -> dict[str, Any]:
        """``{"name": ..., "params": {...}}``."""
        return {"name": self.name, "params": dict(self.params)}


@dataclass(frozen=True)
class EvalConfig:
    """How an evaluation runs.

    Attributes:
        batch_size: samples per attack call (and per sink write). Results do not depend on it.
        seed: root of every sample's random stream (:class:`~advlab.rng.SampleRNG`), keyed by
            the sample's dataset index and the cell, so results do not depend on batch size,
            order or sharding either.
        keep_examples: adversarial examples to keep for the report's image grid.
        example_eps: the radius the examples are shown at (default: the middle positive radius
            of the first norm).
        shard: ``(k, n)`` to evaluate only the samples whose position ``i`` in the dataset has
            ``i % n == k``; :func:`~advlab.evaluate.aggregate` merges the shards' sinks.
        certify: a certifier (``advlab list certifiers``: ``ibp``, ``crown-ibp``, ``crown``,
            ``alpha-crown``) to compute, after the attacks, every correctly classified
            sample's certified radius in each norm of the grid (:mod:`advlab.certify`), or
            ``None``. Needs a white-box torch model of supported layers.
        certify_steps: bisection steps of the certified radius search.
    """

    batch_size: int = 250
    seed: int = 0
    keep_examples: int = 8
    example_eps: float | None = None
    shard: tuple[int, int] | None = None
    certify: str | None = None
    certify_steps: int = 15

    def __post_init__(self) -> None:
        b = self.batch_size
        if isinstance(b, bool) or not isinstance(b, int) or b < 1:
            raise ConfigError(f"batch_size must be an integer >= 1, got {b!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ConfigError(f"seed must be an integer, got {self.seed!r}")
        k = self.keep_examples
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise ConfigError(f"keep_examples must be an integer >= 0, got {k!r}")
        if self.shard is not None:
            try:
                i, n = (int(v) for v in self.shard)
            except (TypeError, ValueError):
                raise ConfigError(f"shard must be a pair (k, n), got {self.shard!r}") from None
            if not (n >= 1 and 0 <= i < n):
                raise ConfigError(f"shard (k, n) needs 0 <= k < n, got {self.shard!r}")
            object.__setattr__(self, "shard", (i, n))
        if self.certify is not None:
            CERTIFIERS.entry(self.certify)  # UnknownNameError listing the certifiers
        st = self.certify_steps
        if isinstance(st, bool) or not isinstance(st, int) or st < 1:
            raise ConfigError(f"certify_steps must be an integer >= 1, got {st!r}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "batch_size": self.batch_size, "seed": self.seed,
            "keep_examples": self.keep_examples, "example_eps": self.example_eps,
            "shard": list(self.shard) if self.shard else None, "certify": self.certify,
            "certify_steps": self.certify_steps,
        }  # fmt: skip


@dataclass(frozen=True)
class Row:
    """One reported row: an attack (or the worst case) under one threat model.

    ``source`` is the cell whose records give the row: the attack's own cell at this eps, its
    ``eps = inf`` cell for a minimal attack (read at ``threat.eps``), or the clean cell at
    ``eps = 0``; ``None`` for the worst case, which combines the other rows of its threat.
    """

    attack: str
    threat: ThreatModel
    source: Cell | None
    params: Mapping[str, Any]

    @property
    def key(self) -> tuple[str, str, float]:
        return (self.attack, self.threat.norm, self.threat.eps)

    def __hash__(self) -> int:
        return hash((self.key, self.source, repr(sorted(self.params.items()))))


@dataclass(frozen=True)
class Plan:
    """What an evaluation computes (see the module docstring).

    ``certify`` holds the certification cells, one per norm of the grid (empty unless
    ``config.certify`` is set); they run after the attack ``cells``.
    """

    attacks: tuple[AttackConfig, ...]
    threats: tuple[ThreatModel, ...]
    config: EvalConfig
    n_total: int
    clean: Cell
    cells: tuple[Cell, ...]
    rows: tuple[Row, ...]
    certify: tuple[Cell, ...] = ()

    @property
    def indices(self) -> Tensor:
        """The dataset indices this process evaluates (one shard's, or all), ascending."""
        idx = torch.arange(self.n_total)
        if self.config.shard is not None:
            k, n = self.config.shard
            idx = idx[k::n]
        return idx

    def batches(self) -> list[Tensor]:
        """:attr:`indices` cut into batches of ``config.batch_size``."""
        return list(self.indices.split(self.config.batch_size))

    @property
    def example_threat(self) -> ThreatModel | None:
        """The threat model the kept examples are shown at, or ``None`` (no positive eps)."""
        eps = self.config.example_eps
        norm = self.threats[0].norm
        positive = [t.eps for t in self.threats if t.norm == norm and t.eps > 0]
        if eps is None:
            if not positive:
                return None
            eps = positive[len(positive) // 2]
        return self.threats[0].with_eps(eps)

    def rows_for(self, threat: ThreatModel) -> list[Row]:
        return [r for r in self.rows if r.threat == threat]


def check_threats(threats: ThreatModel | Sequence[ThreatModel]) -> tuple[ThreatModel, ...]:
    """Threat models of a grid: one box, each (norm, eps) once, finite eps; sorted by norm
    (first appearance) and eps."""
    if isinstance(threats, ThreatModel):
        threats = [threats]
    threats = list(threats)
    if not threats:
        raise ConfigError("no threat models; give at least one, e.g. ThreatModel('linf', 0.1)")
    for t in threats:
        if not isinstance(t, ThreatModel):
            raise ConfigError(f"threats must be advlab ThreatModels, got {type(t).__name__}")
        if not t.bounded:
            raise ConfigError(
                f"the grid's eps values must be finite (inf means unbounded, for a minimal "
                f"attack's own threat model), got {t.norm} eps=inf; list finite radii"
            )
    boxes = {(t.lower, t.upper) for t in threats}
    if len(boxes) > 1:
        raise ConfigError(f"all threat models of an evaluation need one input box, got {sorted(boxes)}")  # fmt: skip
    keys = [(t.norm, t.eps) for t in threats]
    dup = sorted({k for k in keys if keys.count(k) > 1})
    if dup:
        raise ConfigError(f"threat models listed twice: {dup}; list each radius once")
    order = {n: i for i, n in enumerate(dict.fromkeys(t.norm for t in threats))}
    return tuple(sorted(threats, key=lambda t: (order[t.norm], t.eps)))


def make_plan(
    attacks: Sequence[AttackConfig | str | Mapping[str, Any]] | AttackConfig | str,
    threats: ThreatModel | Sequence[ThreatModel],
    config: EvalConfig,
    n_total: int,
) -> Plan:
    """The plan for ``attacks`` under ``threats`` on ``n_total`` samples.

    Raises:
        ConfigError: no attacks, an attack listed twice, an attack that supports none of the
            norms, a norm no attack supports, a bad grid, or certification of a norm it does
            not bound.
    """
    if isinstance(attacks, str | AttackConfig | Mapping):
        attacks = [attacks]
    configs = tuple(AttackConfig.parse(a) for a in attacks)
    if not configs:
        raise ConfigError("an evaluation needs at least one attack, e.g. attacks=['pgd']")
    names = [c.name for c in configs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(
            f"attack {', '.join(map(repr, dup))} is listed twice; an evaluation holds one "
            "configuration per attack (run a second evaluation for other parameters)"
        )
    grid = check_threats(threats)
    norms = list(dict.fromkeys(t.norm for t in grid))
    for c in configs:
        if not set(c.spec.norms) & set(norms):
            raise ConfigError(
                f"attack {c.name!r} supports norms {', '.join(c.spec.norms)}, none of "
                f"{', '.join(norms)}; drop it or add a threat model in one of its norms"
            )
    for norm in norms:
        if not any(norm in c.spec.norms for c in configs):
            raise ConfigError(f"no attack supports the {norm} threat models; add one or drop them")
    if isinstance(n_total, bool) or not isinstance(n_total, int) or n_total < 1:
        raise ConfigError(f"an evaluation needs at least one sample, got {n_total!r}")
    assert all(n in NORMS for n in norms)
    ex = config.example_eps
    if ex is not None and ex not in [t.eps for t in grid if t.norm == norms[0] and t.eps > 0]:
        raise ConfigError(
            f"example_eps={ex!r} is not a positive radius of the {norms[0]} grid; pick one of "
            f"{[t.eps for t in grid if t.norm == norms[0] and t.eps > 0]}"
        )

    certify: tuple[Cell, ...] = ()
    if config.certify is not None:
        bad = [n for n in norms if n not in CERTIFIABLE_NORMS]
        if bad:
            raise ConfigError(
                f"certification bounds {', '.join(CERTIFIABLE_NORMS)} balls, not {bad[0]}; "
                "drop the certifier or those threat models"
            )
        params = {"method": config.certify, "steps": config.certify_steps}
        certify = tuple(Cell(CERTIFIED, n, math.inf, params) for n in norms)

    clean = Cell(CLEAN, norms[0], 0.0)
    cells: list[Cell] = []
    rows: list[Row] = []
    for t in grid:
        for c in configs:
            if t.norm not in c.spec.norms:
                continue
            params = c.resolved
            if t.eps == 0:
                source: Cell = clean
            elif c.spec.minimal:
                source = Cell(c.name, t.norm, math.inf, params)
            else:
                source = Cell(c.name, t.norm, t.eps, params)
            if source is not clean and source not in cells:
                cells.append(source)
            rows.append(Row(c.name, t, source, params))
        names = [r.attack for r in rows if r.threat == t]
        rows.append(Row(WORST_CASE, t, None, {"attacks": names}))
    return Plan(configs, grid, config, n_total, clean, tuple(cells), tuple(rows), certify)
