"""The evaluation engine: robust accuracy of a model under several attacks over a grid of radii.

:func:`evaluate` runs every attack at every ``eps`` of the grid, batch by batch, and keeps one
outcome per sample and (attack, eps). Samples are addressed by their index in the dataset, each
batch's random source is derived from ``(seed, attack, eps, batch index)``, and each finished
batch is written to the :class:`~advlab.store.RunStore` at once; so an interrupted evaluation,
run again with the same store and run id, skips the batches it stored and ends with exactly the
numbers an uninterrupted run gives.

Definitions used throughout (and in the reports):

* a sample is **robust** to an attack at ``eps`` when the model classifies it correctly both
  clean and on the attack's output. Samples misclassified clean are never robust; they are not
  attacked (the unperturbed input already fools the model: success, norm 0, no queries).
* **worst case** (``"worst-case"``): per sample, robust only if robust to every attack; the
  reported perturbation is the smallest successful one.
* **success rate**: among the samples classified correctly clean, the fraction the attack
  flipped. Mean and median norm are taken over those flipped samples.
* attacks that search for the smallest perturbation (``AttackSpec.minimal``: C&W, DeepFool, ...)
  run once with ``eps = inf``; at each ``eps`` of the grid they count as successful on a sample
  when the perturbation they found has norm ``<= eps``. Their rows report the queries and wall
  time of that single run (at ``eps = 0`` nothing runs, for any attack: the threat set is the
  input itself).
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from advlab.attacks.base import AttackSpec, check_count, check_logits, get_attack
from advlab.data.base import DatasetLike
from advlab.errors import ConfigError, ModelOutputError
from advlab.evaluate.stats import wilson_interval
from advlab.store.sqlite import RunStore, canonical_json, environment_info
from advlab.threat import ATOL, RTOL, ThreatModel, check_inputs

log = logging.getLogger(__name__)

#: Name of the per-sample worst case over all attacks in rows, reports and the store.
WORST_CASE = "worst-case"
#: Name under which the clean predictions are stored (``eps = 0``).
CLEAN = "clean"
_RESERVED = (WORST_CASE, CLEAN)
#: Attack keyword arguments the engine sets itself, so a configuration may not.
_ENGINE_ARGS = ("target", "generator")

Progress = Callable[[dict[str, Any]], None]


def attack_parameters(spec: AttackSpec) -> tuple[str, ...] | None:
    """The hyper-parameters an attack accepts by keyword, or ``None`` if it takes ``**kwargs``.

    ``target`` and ``generator`` are left out: the engine sets them.
    """
    sig = inspect.signature(spec.fn)
    names = []
    for i, p in enumerate(sig.parameters.values()):
        if p.kind is inspect.Parameter.VAR_KEYWORD:
            return None
        if p.kind is inspect.Parameter.KEYWORD_ONLY or (
            p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD and i >= 4
        ):
            if p.name not in _ENGINE_ARGS:
                names.append(p.name)
    return tuple(names)


def _accepts_generator(spec: AttackSpec) -> bool:
    params = inspect.signature(spec.fn).parameters
    return "generator" in params or any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()
    )


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
        spec = get_attack(self.name)
        params = dict(self.params)
        accepted = attack_parameters(spec)
        if accepted is not None:
            unknown = sorted(set(params) - set(accepted))
            if unknown:
                engine = [k for k in unknown if k in _ENGINE_ARGS]
                why = f" ({', '.join(engine)} is set by the evaluation engine)" if engine else ""
                raise ConfigError(
                    f"attack {self.name!r} does not take {', '.join(map(repr, unknown))}{why}; "
                    f"its parameters are {', '.join(accepted) or '(none)'}"
                )
        canonical_json(params)  # fails fast on values the store cannot hold
        object.__setattr__(self, "params", params)

    @property
    def spec(self) -> AttackSpec:
        """The registered attack."""
        return get_attack(self.name)

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


@dataclass(frozen=True, eq=False)
class Examples:
    """A few successfully attacked samples, for the image grid of a report.

    Attributes:
        eps: the radius they were attacked at.
        indices: ``(K,)`` their dataset indices.
        x, x_adv: ``(K, *)`` clean and adversarial inputs (on the CPU).
        label, clean_pred, adv_pred: ``(K,)`` true labels and the model's predictions.
        attack: for each sample, the attack whose output is shown (the worst case's pick).
    """

    eps: float
    indices: Tensor
    x: Tensor
    x_adv: Tensor
    label: Tensor
    clean_pred: Tensor
    adv_pred: Tensor
    attack: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.indices.shape[0])

    def to_dict(self) -> dict[str, Any]:
        """Indices, labels, predictions and attacks (the images are left out)."""
        return {
            "eps": self.eps,
            "indices": self.indices.tolist(),
            "label": self.label.tolist(),
            "clean_pred": self.clean_pred.tolist(),
            "adv_pred": self.adv_pred.tolist(),
            "attack": list(self.attack),
        }


@dataclass(frozen=True, eq=False)
class Evaluation:
    """The outcome of :func:`evaluate`.

    Attributes:
        dataset: the dataset's name.
        n: number of samples.
        num_classes: the dataset's class count.
        norm: the threat model's norm.
        eps_grid: the radii, ascending.
        attacks: the attacks, in the order given.
        clean_accuracy: fraction of samples classified correctly without attack.
        clean_ci: its Wilson 95% interval.
        rows: one dict per (eps, attack), the attacks in order and then ``"worst-case"``, with
            keys ``attack, norm, eps, params, n, robust, robust_accuracy, ci_low, ci_high,
            success_rate, mean_norm, median_norm, queries, wall_time``.
        labels: ``(N,)`` true labels.
        clean_pred: ``(N,)`` clean predictions.
        robust: ``{(attack, eps): (N,) bool}`` per-sample robustness, worst case included.
        examples: successfully attacked samples for the image grid, or ``None``.
        config: the evaluation's configuration (what the run store records).
        run_id: the run in the store, if one was used.
    """

    dataset: str
    n: int
    num_classes: int
    norm: str
    eps_grid: tuple[float, ...]
    attacks: tuple[AttackConfig, ...]
    clean_accuracy: float
    clean_ci: tuple[float, float]
    rows: list[dict[str, Any]]
    labels: Tensor
    clean_pred: Tensor
    robust: dict[tuple[str, float], Tensor]
    examples: Examples | None
    config: dict[str, Any]
    run_id: str | None = None

    @property
    def attack_names(self) -> list[str]:
        """The attacks' names followed by ``"worst-case"``."""
        return [a.name for a in self.attacks] + [WORST_CASE]

    def row(self, attack: str, eps: float) -> dict[str, Any]:
        """The row of ``attack`` (or ``"worst-case"``) at ``eps``."""
        for r in self.rows:
            if r["attack"] == attack and r["eps"] == float(eps):
                return r
        raise KeyError(f"no row for attack {attack!r} at eps={eps}")

    def curve(self, attack: str = WORST_CASE) -> list[dict[str, Any]]:
        """The rows of one attack, by ascending eps (robust accuracy against eps)."""
        return [r for r in self.rows if r["attack"] == attack]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly form (no tensors; per-sample results stay in the run store)."""
        return {
            "dataset": self.dataset,
            "n": self.n,
            "num_classes": self.num_classes,
            "norm": self.norm,
            "eps_grid": list(self.eps_grid),
            "attacks": [a.to_dict() for a in self.attacks],
            "clean_accuracy": self.clean_accuracy,
            "clean_ci": list(self.clean_ci),
            "rows": [dict(r) for r in self.rows],
            "examples": self.examples.to_dict() if self.examples is not None else None,
            "config": self.config,
            "run_id": self.run_id,
        }


@dataclass
class _Outcome:
    """Per-sample results of one (attack, eps), all ``(N,)`` on the data's device."""

    adv_pred: Tensor
    success: Tensor
    norm: Tensor
    queries: Tensor
    wall_time: float


_BatchFn = Callable[[int, int, int], tuple[Tensor, Tensor, Tensor, Tensor]]


def batch_seed(seed: int, attack: str, eps: float, batch: int) -> int:
    """The seed of one batch's random source, a pure function of its coordinates."""
    key = f"{int(seed)}|{attack}|{float(eps)!r}|{int(batch)}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "little") & (2**63 - 1)


def _check_grid(eps_grid: Sequence[float]) -> tuple[float, ...]:
    try:
        grid = [float(e) for e in eps_grid]
    except (TypeError, ValueError):
        raise ConfigError(f"eps_grid must be a list of numbers, got {eps_grid!r}") from None
    if not grid:
        raise ConfigError("eps_grid is empty; give at least one radius, e.g. [0.0, 0.1, 0.3]")
    bad = [e for e in grid if not math.isfinite(e) or e < 0]
    if bad:
        raise ConfigError(f"eps values must be finite and >= 0, got {bad}")
    if len(set(grid)) != len(grid):
        raise ConfigError(f"eps_grid has repeated values: {grid}; list each radius once")
    return tuple(sorted(grid))


class _Engine:
    """One evaluation's state; :func:`evaluate` is the public face."""

    def __init__(
        self,
        model: nn.Module,
        data: DatasetLike,
        configs: list[AttackConfig],
        norm: str,
        grid: tuple[float, ...],
        batch_size: int,
        lower: float,
        upper: float,
        seed: int,
        store: RunStore | None,
        run_id: str | None,
        progress: Progress | None,
        keep_examples: int,
    ) -> None:
        self.model = model
        self.x, self.y = data.x, data.y
        self.n = int(self.y.shape[0])
        self.num_classes = int(data.num_classes)
        self.configs = configs
        self.norm = norm
        self.grid = grid
        self.lower, self.upper = lower, upper
        self.seed = seed
        self.store = store
        self.run_id = run_id
        self.progress = progress
        self.keep = keep_examples
        self.spans = [(s, min(s + batch_size, self.n)) for s in range(0, self.n, batch_size)]
        self.clean_pred = torch.empty(0)
        self.clean_ok = torch.empty(0)
        positive = [e for e in grid if e > 0]
        self.eps_mid: float | None = positive[len(positive) // 2] if positive else None
        # attack name -> dataset index -> (x_adv, pred) of flipped samples at eps_mid
        self.cache: dict[str, dict[int, tuple[Tensor, int]]] = {c.name: {} for c in configs}
        self.minimal_base: dict[str, _Outcome] = {}

    # -- helpers ---------------------------------------------------------------------------------

    def _emit(self, **event: Any) -> None:
        if self.progress is not None:
            self.progress(event)

    def _rows(
        self, s: int, e: int, adv: Tensor, succ: Tensor, nrm: Tensor, q: Tensor
    ) -> list[tuple[Any, ...]]:
        idx = range(s, e)
        cols = (
            self.y[s:e].tolist(),
            self.clean_pred[s:e].tolist(),
            adv.tolist(),
            succ.to(torch.int64).tolist(),
            nrm.double().tolist(),
            q.tolist(),
        )
        return [(i, *vals) for i, *vals in zip(idx, *cols, strict=True)]

    def _stage(
        self, stage: str, name: str, eps: float, params: Mapping[str, Any], fn: _BatchFn,
        *, timed: bool = True,
    ) -> _Outcome:  # fmt: skip
        """Run ``fn`` over every batch, resuming from and writing to the store."""
        dev = self.y.device
        out = _Outcome(
            adv_pred=torch.empty(self.n, dtype=torch.long, device=dev),
            success=torch.empty(self.n, dtype=torch.bool, device=dev),
            norm=torch.empty(self.n, dtype=self.x.dtype, device=dev),
            queries=torch.empty(self.n, dtype=torch.long, device=dev),
            wall_time=0.0,
        )
        eval_id: int | None = None
        stored: dict[int, dict[str, Any]] = {}
        if self.store is not None and self.run_id is not None:
            eval_id = self.store.ensure_evaluation(self.run_id, name, self.norm, eps, params)
            if self.store.count_samples(eval_id):
                stored = {r["idx"]: r for r in self.store.samples(eval_id)}
        for b, (s, e) in enumerate(self.spans):
            resumed = bool(stored) and all(i in stored for i in range(s, e))
            if resumed:
                rows = [stored[i] for i in range(s, e)]
                if [r["label"] for r in rows] != self.y[s:e].tolist():
                    raise ConfigError(
                        f"run {self.run_id!r} stores other labels for samples {s}..{e - 1} than "
                        "this dataset has; it was made on another dataset: start a new run"
                    )
                out.adv_pred[s:e] = torch.tensor([r["adv_pred"] for r in rows], device=dev)
                out.success[s:e] = torch.tensor([bool(r["success"]) for r in rows], device=dev)
                out.norm[s:e] = torch.tensor([r["norm"] for r in rows], dtype=out.norm.dtype, device=dev)  # fmt: skip
                out.queries[s:e] = torch.tensor([r["queries"] for r in rows], device=dev)
            else:
                t0 = time.perf_counter()
                adv, succ, nrm, q = fn(b, s, e)
                dt = time.perf_counter() - t0 if timed else 0.0
                out.adv_pred[s:e], out.success[s:e], out.norm[s:e], out.queries[s:e] = (
                    adv, succ, nrm, q,
                )  # fmt: skip
                out.wall_time += dt
                if self.store is not None and eval_id is not None:
                    self.store.add_samples(
                        eval_id, self._rows(s, e, adv, succ, nrm, q), wall_time=dt
                    )
            self._emit(
                stage=stage, attack=name, eps=eps, done=e, total=self.n, batch=b + 1,
                batches=len(self.spans), resumed=resumed,
            )  # fmt: skip
        if self.store is not None and eval_id is not None and timed:
            row = self.store.evaluation(eval_id)
            out.wall_time = float(row["wall_time"] or 0.0)
        return out

    # -- stages ----------------------------------------------------------------------------------

    def clean(self) -> None:
        dev = self.y.device
        self.clean_pred = torch.empty(self.n, dtype=torch.long, device=dev)
        stored: list[dict[str, Any]] = []
        eval_id: int | None = None
        if self.store is not None and self.run_id is not None:
            eval_id = self.store.ensure_evaluation(self.run_id, CLEAN, self.norm, 0.0, {})
            stored = self.store.samples(eval_id)
        for b, (s, e) in enumerate(self.spans):
            with torch.no_grad():
                logits = self.model(self.x[s:e])
            check_logits(logits, e - s, self.y[s:e])
            if logits.shape[1] != self.num_classes:
                raise ModelOutputError(
                    f"the model returns {logits.shape[1]} logits but the dataset has "
                    f"{self.num_classes} classes; evaluate a model trained for this dataset"
                )
            self.clean_pred[s:e] = logits.argmax(dim=1)
            self._emit(
                stage="clean", attack=None, eps=None, done=e, total=self.n, batch=b + 1,
                batches=len(self.spans), resumed=False,
            )  # fmt: skip
        self.clean_ok = self.clean_pred == self.y
        if eval_id is None or self.store is None:
            return
        if any(r["idx"] >= self.n for r in stored):
            raise ConfigError(
                f"run {self.run_id!r} stores samples beyond this dataset's {self.n}; it was made "
                "on another dataset: start a new run"
            )
        if stored:
            idx = torch.tensor([r["idx"] for r in stored], device=dev)
            old = torch.tensor([r["clean_pred"] for r in stored], device=dev)
            differ = int((old != self.clean_pred[idx]).sum())
            if differ > max(0, len(stored) // 100):
                raise ConfigError(
                    f"the model's clean predictions differ from those stored in run "
                    f"{self.run_id!r} on {differ} of {len(stored)} samples; that run was made "
                    "with another model or dataset: start a new run"
                )
            if differ:
                log.warning(
                    "clean predictions differ from the stored ones on %d samples "
                    "(non-deterministic model?); continuing",
                    differ,
                )
        null = self._null()
        if len(stored) < self.n:
            q = torch.ones_like(null.queries)  # one forward pass per sample
            rows = self._rows(0, self.n, null.adv_pred, null.success, null.norm, q)
            self.store.add_samples(eval_id, rows)
        self.store.update_evaluation_summary(eval_id, **self._stats(self.clean_ok, null))

    def _null(self) -> _Outcome:
        """The outcome of not attacking at all (eps = 0)."""
        return _Outcome(
            adv_pred=self.clean_pred.clone(),
            success=~self.clean_ok,
            norm=torch.zeros(self.n, dtype=self.x.dtype, device=self.y.device),
            queries=torch.zeros(self.n, dtype=torch.long, device=self.y.device),
            wall_time=0.0,
        )

    def _attack_batch(
        self,
        cfg: AttackConfig,
        threat: ThreatModel,
        b: int,
        s: int,
        e: int,
        cache_eps: float | None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Attack the clean-correct samples of one batch; others keep their clean outcome."""
        ok = self.clean_ok[s:e]
        adv = self.clean_pred[s:e].clone()
        succ = ~ok
        nrm = torch.zeros(e - s, dtype=self.x.dtype, device=self.y.device)
        q = torch.zeros(e - s, dtype=torch.long, device=self.y.device)
        if not bool(ok.any()):
            return adv, succ, nrm, q
        spec = cfg.spec
        kw: dict[str, Any] = dict(cfg.params)
        if _accepts_generator(spec):
            g = torch.Generator(device=self.x.device)
            g.manual_seed(batch_seed(self.seed, cfg.name, threat.eps, b))
            kw["generator"] = g
        pos = ok.nonzero().squeeze(1)
        res = spec(self.model, self.x[s:e][pos], self.y[s:e][pos], threat, **kw)
        if len(res) != pos.numel():
            raise RuntimeError(f"internal error: {cfg.name} returned {len(res)} of {pos.numel()} results")  # fmt: skip
        adv[pos] = res.pred.to(adv.device)
        succ[pos] = res.success.to(succ.device)
        nrm[pos] = res.norms.to(device=nrm.device, dtype=nrm.dtype)
        q[pos] = res.queries.to(q.device)
        if cache_eps is not None and self.keep > 0:
            self._cache(cfg.name, s, pos, res.x_adv, res.pred, res.success, res.norms, cache_eps)
        return adv, succ, nrm, q

    def _cache(
        self, name: str, s: int, pos: Tensor, x_adv: Tensor, pred: Tensor, success: Tensor,
        norms: Tensor, eps: float,
    ) -> None:  # fmt: skip
        """Keep the first few outputs that flip the model within ``eps``, for the image grid."""
        store = self.cache[name]
        hit = success & (norms <= eps * (1 + RTOL) + ATOL)
        for j in hit.nonzero().squeeze(1).tolist():
            if len(store) >= self.keep:
                break
            store[s + int(pos[j])] = (x_adv[j].detach().cpu(), int(pred[j]))

    def bounded(self, cfg: AttackConfig, eps: float) -> _Outcome:
        threat = ThreatModel(self.norm, eps, self.lower, self.upper)
        cache_eps = eps if eps == self.eps_mid else None
        null = self._null()

        def fn(b: int, s: int, e: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
            if eps == 0:  # the threat set is {x}: nothing to attack
                return null.adv_pred[s:e], null.success[s:e], null.norm[s:e], null.queries[s:e]
            return self._attack_batch(cfg, threat, b, s, e, cache_eps)

        return self._stage("attack", cfg.name, eps, cfg.params, fn)

    def minimal(self, cfg: AttackConfig, eps: float) -> _Outcome:
        base = self.minimal_base.get(cfg.name)
        if base is None:
            threat = ThreatModel(self.norm, math.inf, self.lower, self.upper)

            def run(b: int, s: int, e: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
                return self._attack_batch(cfg, threat, b, s, e, self.eps_mid)

            base = self._stage("attack", cfg.name, math.inf, cfg.params, run)
            self.minimal_base[cfg.name] = base
        slack = 0.0 if self.norm == "l0" else ATOL + RTOL * max(1.0, eps)
        hit = base.success & (base.norm <= eps + slack)
        derived = _Outcome(
            adv_pred=torch.where(hit, base.adv_pred, self.clean_pred),
            success=hit,
            norm=torch.where(hit, base.norm, torch.zeros_like(base.norm)),
            queries=base.queries,
            wall_time=base.wall_time,
        )

        def fn(b: int, s: int, e: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
            d = derived
            return d.adv_pred[s:e], d.success[s:e], d.norm[s:e], d.queries[s:e]

        out = self._stage("attack", cfg.name, eps, cfg.params, fn, timed=False)
        out.wall_time = base.wall_time
        return out

    def worst(self, outcomes: list[_Outcome]) -> tuple[_Outcome, Tensor]:
        """Per sample the successful outcome with the smallest norm; returns it and the pick."""
        first = outcomes[0]
        adv, succ, nrm = first.adv_pred.clone(), first.success.clone(), first.norm.clone()
        pick = torch.zeros(self.n, dtype=torch.long, device=self.y.device)
        for j, o in enumerate(outcomes[1:], start=1):
            better = (o.success & ~succ) | (o.success & succ & (o.norm < nrm))
            adv = torch.where(better, o.adv_pred, adv)
            nrm = torch.where(better, o.norm, nrm)
            pick = torch.where(better, torch.full_like(pick, j), pick)
            succ = succ | o.success
        queries = torch.stack([o.queries for o in outcomes]).sum(dim=0)
        wall = sum(o.wall_time for o in outcomes)
        return _Outcome(adv, succ, nrm, queries, wall), pick

    def _stats(self, robust: Tensor, o: _Outcome) -> dict[str, Any]:
        k = int(robust.sum())
        lo, hi = wilson_interval(k, self.n)
        flipped = self.clean_ok & o.success
        n_ok = int(self.clean_ok.sum())
        norms = o.norm[flipped].double()
        return {
            "n": self.n,
            "robust_accuracy": k / self.n,
            "ci_low": lo,
            "ci_high": hi,
            "success_rate": int(flipped.sum()) / n_ok if n_ok else math.nan,
            "mean_norm": float(norms.mean()) if norms.numel() else math.nan,
            "median_norm": float(norms.quantile(0.5)) if norms.numel() else math.nan,
            "queries": int(o.queries.sum()),
            "wall_time": float(o.wall_time),
        }

    def _row(self, name: str, eps: float, params: Mapping[str, Any], o: _Outcome) -> tuple[dict[str, Any], Tensor]:  # fmt: skip
        robust = self.clean_ok & (o.adv_pred == self.y)
        stats = self._stats(robust, o)
        if self.store is not None and self.run_id is not None:
            eval_id = self.store.ensure_evaluation(self.run_id, name, self.norm, eps, params)
            self.store.update_evaluation_summary(eval_id, **stats)
        row = {"attack": name, "norm": self.norm, "eps": eps, "params": dict(params)}
        row["robust"] = int(robust.sum())
        row.update(stats)
        return row, robust

    # -- the whole evaluation -----------------------------------------------------------------------

    def run(self) -> tuple[list[dict[str, Any]], dict[tuple[str, float], Tensor], Examples | None]:
        self.clean()
        rows: list[dict[str, Any]] = []
        robust: dict[tuple[str, float], Tensor] = {}
        examples: Examples | None = None
        for eps in self.grid:
            outcomes = []
            for cfg in self.configs:
                # eps = 0 needs no attack at all, minimal or not (see bounded)
                minimal = cfg.spec.minimal and eps > 0
                o = self.minimal(cfg, eps) if minimal else self.bounded(cfg, eps)
                outcomes.append(o)
                row, rob = self._row(cfg.name, eps, cfg.params, o)
                rows.append(row)
                robust[(cfg.name, eps)] = rob
            wc, pick = self.worst(outcomes)
            params = {"attacks": [c.name for c in self.configs]}
            if self.store is not None and self.run_id is not None:
                eval_id = self.store.ensure_evaluation(self.run_id, WORST_CASE, self.norm, eps, params)  # fmt: skip
                self.store.add_samples(
                    eval_id, self._rows(0, self.n, wc.adv_pred, wc.success, wc.norm, wc.queries)
                )
            row, rob = self._row(WORST_CASE, eps, params, wc)
            rows.append(row)
            robust[(WORST_CASE, eps)] = rob
            self._emit(
                stage=WORST_CASE, attack=WORST_CASE, eps=eps, done=self.n, total=self.n,
                batch=1, batches=1, resumed=False,
            )  # fmt: skip
            if eps == self.eps_mid and self.keep > 0:
                examples = self.examples(eps, wc, pick)
        return rows, robust, examples

    def examples(self, eps: float, wc: _Outcome, pick: Tensor) -> Examples | None:
        """The first ``keep`` flipped samples at ``eps`` with the output of the worst-case pick.

        Outputs of batches that were resumed from the store are recomputed: each batch's random
        source depends only on its coordinates, so the attack reproduces them.
        """
        flipped = (self.clean_ok & wc.success).nonzero().squeeze(1)[: self.keep].tolist()
        if not flipped:
            return None
        size = self.spans[0][1] - self.spans[0][0]
        for i in flipped:
            cfg = self.configs[int(pick[i])]
            if i in self.cache[cfg.name]:
                continue
            b = i // size
            s, e = self.spans[b]
            if cfg.spec.minimal:
                threat = ThreatModel(self.norm, math.inf, self.lower, self.upper)
            else:
                threat = ThreatModel(self.norm, eps, self.lower, self.upper)
            # cache every flipped sample of the batch, not just the first few
            saved, self.keep = self.keep, len(self.cache[cfg.name]) + (e - s)
            try:
                self._attack_batch(cfg, threat, b, s, e, eps)
            finally:
                self.keep = saved
        chosen = []
        for i in flipped:
            name = self.configs[int(pick[i])].name
            hit = self.cache[name].get(i)
            if hit is None:
                log.warning("could not reproduce the adversarial example of sample %d", i)
                continue
            chosen.append((i, name, hit))
        if not chosen:
            return None
        idx = torch.tensor([c[0] for c in chosen], dtype=torch.long)
        dev_idx = idx.to(self.y.device)
        return Examples(
            eps=eps,
            indices=idx,
            x=self.x[dev_idx].detach().cpu(),
            x_adv=torch.stack([c[2][0] for c in chosen]),
            label=self.y[dev_idx].cpu(),
            clean_pred=self.clean_pred[dev_idx].cpu(),
            adv_pred=torch.tensor([c[2][1] for c in chosen], dtype=torch.long),
            attack=tuple(c[1] for c in chosen),
        )


def evaluate(
    model: nn.Module,
    data: DatasetLike,
    *,
    attacks: Sequence[AttackConfig | str | Mapping[str, Any]],
    norm: str,
    eps_grid: Sequence[float],
    batch_size: int = 250,
    lower: float = 0.0,
    upper: float = 1.0,
    seed: int = 0,
    store: RunStore | None = None,
    run_id: str | None = None,
    progress: Progress | None = None,
    keep_examples: int = 8,
) -> Evaluation:
    """Robust accuracy of ``model`` on ``data`` under each attack at each radius, and the worst case.

    The model is used as it is: its train/eval mode is not changed and it runs on the device the
    data is on. Clean predictions come first; then for each ``eps`` (ascending) each attack runs
    batch by batch over the samples classified correctly, and the per-sample worst case is taken.
    See the module docstring for the definitions of robust, success rate and worst case.

    Args:
        model: classifier returning logits for inputs in ``[lower, upper]``.
        data: a dataset (``.name``, ``.x``, ``.y``, ``.num_classes``), e.g.
            :class:`advlab.data.Dataset`; sample ``i`` is ``data.x[i]``.
        attacks: attack configurations (an :class:`AttackConfig`, a registered name, or
            ``{"name": ..., "params": {...}}``), each name once.
        norm: the threat model's norm (``"linf"``, ``"l2"``, ``"l1"``, ``"l0"``).
        eps_grid: radii to evaluate at, each finite and ``>= 0``; ``0`` gives clean accuracy.
        batch_size: samples per attack call (and per store transaction).
        lower, upper: the input box.
        seed: root of every batch's random source (see :func:`batch_seed`).
        store: a run store to write per-sample results to as each batch finishes.
        run_id: the run to write into (and resume from: batches already stored are read back,
            not recomputed). With a store and no ``run_id``, a new ``"evaluate"`` run is created
            and marked complete, failed or interrupted at the end; with a ``run_id``, the caller
            owns the run's status.
        progress: called after each batch with a dict with keys ``stage`` (``"clean"``,
            ``"attack"`` or ``"worst-case"``), ``attack``, ``eps``, ``done``, ``total``,
            ``batch``, ``batches`` and ``resumed`` (read from the store). An exception raised by
            it stops the evaluation; the batches stored so far are kept.
        keep_examples: how many successfully attacked samples to keep (at the middle positive
            eps) for the report's image grid.

    Returns:
        An :class:`Evaluation`.

    Raises:
        UnknownNameError: for an unregistered attack or run id.
        ConfigError: for bad parameters, or a ``run_id`` whose stored results come from another
            model or dataset.
        InputError: for data outside the box, or of the wrong shape or dtype.
        ModelOutputError: for a model whose logits are malformed or have the wrong class count.

    Example:
        >>> ev = evaluate(model, test_set, attacks=["fgsm", AttackConfig("pgd", {"steps": 50})],
        ...               norm="linf", eps_grid=[0.0, 0.1, 0.3])
        >>> ev.row("worst-case", 0.3)["robust_accuracy"]
    """
    if isinstance(attacks, str | AttackConfig | Mapping):
        attacks = [attacks]
    configs = [AttackConfig.parse(a) for a in attacks]
    if not configs:
        raise ConfigError("evaluate needs at least one attack, e.g. attacks=['pgd']")
    names = [c.name for c in configs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(
            f"attack {', '.join(map(repr, dup))} is listed twice; an evaluation holds one "
            "configuration per attack (run a second evaluation for other parameters)"
        )
    for c in configs:
        if c.name in _RESERVED:
            raise ConfigError(f"{c.name!r} is a reserved name in evaluations")
    threat = ThreatModel(norm, 0.0, lower, upper)  # validates norm and box
    for c in configs:
        if threat.norm not in c.spec.norms:
            raise ConfigError(
                f"attack {c.name!r} supports norms {', '.join(c.spec.norms)}, not {norm!r}; "
                "drop it or pick another norm"
            )
    grid = _check_grid(eps_grid)
    check_count(batch_size=batch_size)
    if isinstance(keep_examples, bool) or not isinstance(keep_examples, int) or keep_examples < 0:
        raise ConfigError(f"keep_examples must be an integer >= 0, got {keep_examples!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"seed must be an integer, got {seed!r}")
    name = str(getattr(data, "name", "dataset"))
    check_inputs(data.x, data.y, threat, name=f"dataset {name!r}")
    if data.y.device != data.x.device:
        raise ConfigError(f"dataset {name!r} has x on {data.x.device} and y on {data.y.device}")

    config: dict[str, Any] = {
        "dataset": name,
        "n": int(data.y.shape[0]),
        "num_classes": int(data.num_classes),
        "model_class": type(model).__name__,
        "norm": threat.norm,
        "eps_grid": list(grid),
        "attacks": [c.to_dict() for c in configs],
        "batch_size": batch_size,
        "lower": threat.lower,
        "upper": threat.upper,
        "seed": seed,
    }
    own_run = False
    if store is None and run_id is not None:
        raise ConfigError("run_id needs a store; pass store=RunStore(path) as well")
    if store is not None:
        if run_id is None:
            run_id = store.create_run("evaluate", config, environment_info(seed))
            own_run = True
        else:
            store.get_run(run_id)  # UnknownNameError for a wrong id

    engine = _Engine(
        model, data, configs, threat.norm, grid, batch_size, threat.lower, threat.upper, seed,
        store, run_id, progress, keep_examples,
    )  # fmt: skip
    try:
        rows, robust, examples = engine.run()
    except KeyboardInterrupt:
        if own_run and store is not None and run_id is not None:
            store.finish_run(run_id, "interrupted")
        raise
    except Exception:
        if own_run and store is not None and run_id is not None:
            store.finish_run(run_id, "failed")
        raise
    n = engine.n
    k = int(engine.clean_ok.sum())
    result = Evaluation(
        dataset=name,
        n=n,
        num_classes=int(data.num_classes),
        norm=threat.norm,
        eps_grid=grid,
        attacks=tuple(configs),
        clean_accuracy=k / n,
        clean_ci=wilson_interval(k, n),
        rows=rows,
        labels=data.y,
        clean_pred=engine.clean_pred,
        robust=robust,
        examples=examples,
        config=config,
        run_id=run_id,
    )
    if own_run and store is not None and run_id is not None:
        store.finish_run(run_id, "complete", summary(result))
    return result


def summary(ev: Evaluation) -> dict[str, Any]:
    """The short summary stored with a run: clean accuracy and the worst case per eps."""
    return {
        "dataset": ev.dataset,
        "n": ev.n,
        "norm": ev.norm,
        "clean_accuracy": ev.clean_accuracy,
        "worst_case": [
            {"eps": r["eps"], "robust_accuracy": r["robust_accuracy"]} for r in ev.curve(WORST_CASE)
        ],
    }
