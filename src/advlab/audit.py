"""The main job: train (or load) a model, attack it over an eps grid, store and report.

``advlab audit`` with no arguments trains the default ``papernot-mnist`` model on the embedded
``mnist5k`` data (or reuses the copy cached in :func:`advlab.paths.cache_dir`), runs FGSM and
PGD over an L-inf eps grid on the 1,000 test images, and writes the records to the run store and
an HTML and JSON report. With ``certify`` (``advlab audit --certify``) it then computes each
sample's certified radius (:mod:`advlab.evaluate.certification`), and the reports set the
certified accuracy beside the robust accuracy and each sample's certified radius beside its
smallest adversarial perturbation.

Runs are leased (:mod:`advlab.store.lease`): an interrupted audit is resumed by the next identical
one (the store keeps every finished batch), an identical audit that is still running in another
process is waited for and its results reused, and an audit that fails is marked ``failed`` with
the reason.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from advlab.attacks import get_attack, targeted_grid
from advlab.attacks.base import probe
from advlab.data import Dataset, load_dataset
from advlab.defenses import TrainConfig, train_and_save
from advlab.errors import ConfigError, InputError, LeaseLost
from advlab.evaluate import AttackConfig, EvalConfig, Evaluation, evaluate
from advlab.evaluate.certification import (
    CertifiedSummary,
    certifiable,
    certified_accuracy,
    certified_radii,
    clean_correct,
)
from advlab.evaluate.engine import summary as run_summary
from advlab.evaluate.plan import CERTIFIABLE_NORMS
from advlab.evaluate.stats import wilson_interval
from advlab.fileio import atomic_write_json, check_writable_folder
from advlab.models import load_model
from advlab.oracle import Access, ModuleOracle, Oracle, QueryBudget
from advlab.paths import cache_dir
from advlab.provenance import capture
from advlab.registry import ATTACKS, CERTIFIERS, MODELS
from advlab.report import write_html_report, write_json_report
from advlab.results import Example
from advlab.store import RunStore, StoreSink
from advlab.store.lease import STALE_SECONDS, Heartbeat, claim, owner_id
from advlab.threat import ThreatModel

log = logging.getLogger(__name__)

Progress = Callable[[dict[str, Any]], None]

#: Seconds between two looks at a live identical audit that this one waits for.
WAIT_POLL_SECONDS = 2.0


@dataclass(frozen=True)
class AuditConfig:
    """Everything an audit depends on; two audits with equal configs give equal results.

    Attributes:
        model: a zoo name (trained on ``data`` and cached) or a path to a saved model.
        data: a dataset name or a ``.npz`` path; the audit uses its test split.
        data_dir: where standard datasets live (else ``$ADVLAB_DATA``).
        factory: ``package.module:function`` building the user's model, for a weights file.
        norm, eps: the threat model's norm and the eps grid.
        attacks: registered attack names: eps-bounded ones (fgsm, pgd, ...) run at every eps,
            minimal-perturbation ones (cw-l2, deepfool, ...) once, read at every eps.
        steps: iterations of the eps-bounded iterative attacks (pgd, bim).
        n: number of test samples (the first n), ``None`` for all.
        batch_size: samples per attack batch.
        seed: seeds training of the default model and the attacks' random streams.
        training: overrides of :class:`~advlab.defenses.TrainConfig`'s defaults for the
            default model.
        unsafe_allow_pickle: allow loading a pickled model (runs code from the file).
        certify: a certifier (``advlab list certifiers``) computing each sample's certified
            radius after the attacks, or ``None``.
        access: what the model reveals to the attacks: ``gradients`` (white-box, the default),
            ``scores``, ``topk`` or ``labels``; an attack that needs more is refused before any
            work (:class:`~advlab.oracle.Access`).
        queries: the most queries one attack may spend on one sample (its final verification
            included; :class:`~advlab.oracle.QueryBudget` ``per_sample``), or ``None``.
        attack_params: per attack name, hyper-parameters that override its defaults (and
            ``steps``), e.g. ``{"pgd": {"steps": 100, "restarts": 5}}``; checked against the
            attack's known parameters.
        targeted_grid: also draw the source x target grid of Carlini & Wagner's figures in the
            report: the first correctly classified input of each class attacked toward every
            other class by the strongest targeted attack of ``attacks`` (a minimal-perturbation
            one, unbounded; else an iterative one at the largest eps).
    """

    model: str = "papernot-mnist"
    data: str = "mnist5k"
    data_dir: str | None = None
    factory: str | None = None
    norm: str = "linf"
    eps: tuple[float, ...] = (0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3)
    attacks: tuple[str, ...] = ("fgsm", "pgd")
    steps: int = 40
    n: int | None = 1000
    batch_size: int = 250
    seed: int = 0
    training: dict[str, Any] = field(default_factory=dict)
    unsafe_allow_pickle: bool = False
    certify: str | None = None
    access: str = "gradients"
    queries: int | None = None
    attack_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    targeted_grid: bool = False

    def __post_init__(self) -> None:
        if not self.eps:
            raise ConfigError("the eps grid is empty; pass e.g. --eps 0,0.1,0.3")
        self.threats()  # validates the norm and each eps
        if not self.attacks:
            raise ConfigError("no attacks given; pass e.g. --attacks fgsm,pgd")
        access = Access.parse(self.access)
        for a in self.attacks:
            spec = get_attack(a)
            if self.norm not in spec.norms:
                raise ConfigError(
                    f"attack {a!r} supports norms {', '.join(spec.norms)}, not {self.norm!r}"
                )
            if spec.needs > access:
                fit = [n for n in ATTACKS.names() if get_attack(n).needs <= access
                       and self.norm in get_attack(n).norms]  # fmt: skip
                raise ConfigError(
                    f"attack {a!r} needs {spec.needs}, but --access {access} reveals only "
                    f"{access}; use an attack that needs no more, e.g. {', '.join(fit) or 'none'}"
                )
        for a, params in self.attack_params.items():
            if a not in self.attacks:
                raise ConfigError(
                    f"attack_params names {a!r}, which is not among the attacks "
                    f"({', '.join(self.attacks)}); add it to the attacks or drop its parameters"
                )
            if not isinstance(params, dict):
                raise ConfigError(f"the parameters of attack {a!r} must be a mapping, got "
                                  f"{params!r}")  # fmt: skip
            get_attack(a).resolve(params)  # unknown parameters name the known ones
        if self.queries is not None and (
            isinstance(self.queries, bool) or not isinstance(self.queries, int) or self.queries < 2
        ):
            raise ConfigError(
                f"queries must be an integer >= 2 (the search and the verification), got "
                f"{self.queries!r}"
            )
        if self.n is not None and self.n < 1:
            raise ConfigError(f"n must be >= 1, got {self.n}")
        if self.targeted_grid:
            self.grid_attack()  # raises when no attack is targeted
        if self.batch_size < 1 or self.steps < 1:
            raise ConfigError("batch_size and steps must be >= 1")
        TrainConfig.from_dict({**TrainConfig().to_dict(), **self.training})
        if self.certify is not None:
            CERTIFIERS.entry(self.certify)  # UnknownNameError listing the certifiers
            if access < Access.GRADIENTS:
                raise ConfigError(
                    f"certification reads the model's weights, but --access {access} hides "
                    "them; drop --certify or audit with --access gradients"
                )
            if self.norm not in CERTIFIABLE_NORMS:
                raise ConfigError(
                    f"certification bounds {', '.join(CERTIFIABLE_NORMS)} balls, not "
                    f"{self.norm!r}; drop --certify or use another --norm"
                )

    def threats(self) -> list[ThreatModel]:
        """The grid as threat models."""
        return _grid(self.norm, self.eps)

    def to_dict(self) -> dict[str, Any]:
        """The configuration as stored with the run (and matched to resume one). ``certify``
        is left out when unset, so audits without it match the runs of earlier versions."""
        d = asdict(self)
        d["eps"], d["attacks"] = list(self.eps), list(self.attacks)
        d["attack_params"] = self._effective_attack_params()
        for k, default in (("certify", None), ("access", "gradients"), ("queries", None),
                           ("attack_params", {}), ("targeted_grid", False)):  # fmt: skip
            if d[k] == default:
                del d[k]  # unset options leave the stored config as earlier versions wrote it
        return d

    def _effective_attack_params(self) -> dict[str, dict[str, Any]]:
        """``attack_params`` less what changes nothing (a value the attack would take anyway),
        so that ``{name: pgd, steps: 40}`` with ``steps: 40`` matches the run of ``--steps 40``."""
        out: dict[str, dict[str, Any]] = {}
        for a, params in self.attack_params.items():
            spec = get_attack(a)
            base = {"steps": self.steps} if "steps" in spec.defaults and not spec.minimal else {}
            ref, full = spec.resolve(base), spec.resolve({**base, **params})
            changed = {k: v for k, v in params.items() if full[k] != ref[k]}
            if changed:
                out[a] = changed
        return out

    def grid_attack(self) -> tuple[AttackConfig, ThreatModel]:
        """The attack and threat of the targeted grid: the first targeted minimal-perturbation
        attack (unbounded), else the first targeted iterative one, else the first targeted one
        (bounded ones at the largest eps of the grid)."""
        targeted = [a for a in self.attack_configs() if get_attack(a.name).targeted]
        # the strongest: a minimal-perturbation attack, else an iterative one, else the first
        targeted.sort(key=lambda a: (not get_attack(a.name).minimal, "steps" not in a.params))
        if targeted:
            a = targeted[0]
            eps = math.inf if get_attack(a.name).minimal else max(self.eps)
            return a, ThreatModel(self.norm, eps)
        known = [n for n in ATTACKS.names() if get_attack(n).targeted
                 and self.norm in get_attack(n).norms]  # fmt: skip
        raise ConfigError(
            f"the targeted grid needs a targeted attack among the attacks "
            f"({', '.join(self.attacks)}); add one of {', '.join(known)}"
        )

    def oracle(self, model: nn.Module, meta: dict[str, Any]) -> ModuleOracle:
        """The door the audit queries ``model`` through: the access and query budget set."""
        budget = QueryBudget(per_sample=self.queries) if self.queries is not None else None
        return ModuleOracle(model, input_shape=input_shape(meta), access=self.access,
                            budget=budget)  # fmt: skip

    def eval_config(self) -> EvalConfig:
        """How the audit's evaluation runs."""
        return EvalConfig(batch_size=self.batch_size, seed=self.seed, certify=self.certify)

    def attack_configs(self) -> list[AttackConfig]:
        out = []
        for a in self.attacks:
            spec = get_attack(a)
            params = {"steps": self.steps} if "steps" in spec.defaults and not spec.minimal else {}
            params.update(self.attack_params.get(a, {}))
            out.append(AttackConfig(a, params))
        return out

    def training_config(self) -> TrainConfig:
        """How the default model is trained: TrainConfig's defaults, the audit's seed, and the
        ``training`` overrides."""
        return _training_config(self.seed, self.training)


def _grid(norm: str, eps: tuple[float, ...]) -> list[ThreatModel]:
    for e in eps:
        if not isinstance(e, int | float) or e != e or e in (float("inf"), float("-inf")) or e < 0:
            raise ConfigError(
                f"each eps of the grid must be a finite number >= 0 (inf means unbounded, "
                f"which only a minimal attack's own threat model allows), got {e!r}"
            )
    return [ThreatModel(norm, e) for e in eps]


@dataclass(frozen=True)
class CertifyConfig:
    """What ``advlab certify`` computes: certified accuracy at each eps and/or each sample's
    certified radius, of a model on the first ``n`` test samples of a dataset.

    Attributes:
        model, data, data_dir, factory, seed, training, unsafe_allow_pickle: the model and
            data, found as the audit finds them (a zoo model is trained and cached with the
            audit's settings, so both commands use one copy).
        method: a registered certifier (``advlab list certifiers``).
        norm: ``linf``, ``l2`` or ``l1``.
        eps: radii at which to report certified accuracy (may be empty with ``radius``).
        radius: also search each sample's certified radius by bisection.
        steps: bisection steps of that search.
        n: number of test samples (the first n), ``None`` for all.
        batch_size: samples bounded at once.
    """

    model: str = "papernot-mnist"
    data: str = "mnist5k"
    data_dir: str | None = None
    factory: str | None = None
    method: str = "crown"
    norm: str = "linf"
    eps: tuple[float, ...] = ()
    radius: bool = False
    steps: int = 15
    n: int | None = 100
    batch_size: int = 250
    seed: int = 0
    training: dict[str, Any] = field(default_factory=dict)
    unsafe_allow_pickle: bool = False

    def __post_init__(self) -> None:
        CERTIFIERS.entry(self.method)  # UnknownNameError listing the certifiers
        if self.norm not in CERTIFIABLE_NORMS:
            raise ConfigError(
                f"certification bounds {', '.join(CERTIFIABLE_NORMS)} balls, not {self.norm!r}"
            )
        self.threats()  # validates each eps
        if len(set(self.eps)) != len(self.eps):
            raise ConfigError(f"an eps is listed twice in {list(self.eps)}; list each once")
        if not self.eps and not self.radius:
            raise ConfigError(
                "nothing to certify: pass --eps (certified accuracy at those radii) and/or "
                "--radius (each sample's certified radius)"
            )
        if self.n is not None and self.n < 1:
            raise ConfigError(f"n must be >= 1, got {self.n}")
        if self.batch_size < 1 or self.steps < 1:
            raise ConfigError("batch_size and steps must be >= 1")
        TrainConfig.from_dict({**TrainConfig().to_dict(), **self.training})

    def threats(self) -> list[ThreatModel]:
        """The radii as threat models, ascending."""
        return _grid(self.norm, tuple(sorted(self.eps)))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["eps"] = sorted(self.eps)
        return d

    def training_config(self) -> TrainConfig:
        """How a zoo model is trained: as the audit trains it."""
        return _training_config(self.seed, self.training)


@dataclass
class CertifyOutcome:
    """What :func:`run_certify` computed.

    Attributes:
        rows: certified accuracy at each eps, ascending (empty without ``eps``).
        correct: ``(n,)`` bool, classified correctly clean.
        radii: ``(n,)`` certified radii (``0`` where misclassified), with ``radius``.
        json: the JSON result, where an output folder was given.
    """

    config: CertifyConfig
    model_info: dict[str, Any]
    n: int
    clean_accuracy: float
    clean_ci: tuple[float, float]
    rows: list[CertifiedSummary]
    correct: Tensor
    radii: Tensor | None
    json: Path | None
    wall_time: float

    def radius_stats(self) -> dict[str, Any] | None:
        """Mean and median certified radius over the correctly classified samples."""
        if self.radii is None:
            return None
        r = self.radii[self.correct.cpu()]
        return {
            "over": "correctly classified samples", "n": int(r.numel()),
            "mean": float(r.mean()) if r.numel() else None,
            "median": float(r.quantile(0.5)) if r.numel() else None,
            "min": float(r.min()) if r.numel() else None,
            "max": float(r.max()) if r.numel() else None,
        }  # fmt: skip


@dataclass
class AuditOutcome:
    run_id: str
    evaluation: Evaluation
    model_info: dict[str, Any]
    html: Path
    json: Path
    reused: bool = False
    #: ``"waited"`` (another process completed it while this one waited) or ``"stored"`` (an
    #: identical audit had completed before), where ``reused``.
    reused_how: str | None = None


def _emit(progress: Progress | None, **event: Any) -> None:
    if progress is not None:
        progress(event)


def check_out_dir(out_dir: Path) -> Path:
    """Fail at the door when the report folder cannot be created or written."""
    return check_writable_folder(out_dir, f"--out {out_dir}")


class ModelSource(Protocol):
    """Where a model comes from (an :class:`AuditConfig` or a :class:`CertifyConfig`): a zoo
    name trained on ``data`` with the audit's training settings and cached (so every command
    shares one copy), or a path to a saved model."""

    @property
    def model(self) -> str: ...
    @property
    def data(self) -> str: ...
    @property
    def data_dir(self) -> str | None: ...
    @property
    def factory(self) -> str | None: ...
    @property
    def unsafe_allow_pickle(self) -> bool: ...
    def training_config(self) -> TrainConfig: ...


def _training_config(seed: int, training: dict[str, Any]) -> TrainConfig:
    return TrainConfig.from_dict({**TrainConfig().to_dict(), "seed": seed, **training})


def prepare_model(cfg: ModelSource, progress: Progress | None) -> tuple[nn.Module, dict[str, Any]]:
    """Load the user's model, or train (or reuse the cached copy of) the zoo model."""
    if cfg.model not in MODELS:
        path = Path(cfg.model).expanduser()
        model, meta = load_model(
            path, factory=cfg.factory, allow_unsafe_pickle=cfg.unsafe_allow_pickle
        )
        return model.eval(), {"source": str(path), **meta}
    tcfg = cfg.training_config()
    key_src = json.dumps({"arch": cfg.model, "data": cfg.data, "train": tcfg.to_dict()},
                         sort_keys=True)  # fmt: skip
    key = hashlib.sha256(key_src.encode()).hexdigest()[:12]
    weights = cache_dir() / "models" / f"{cfg.model}-{cfg.data}-{key}.safetensors"
    if weights.exists():
        _emit(progress, stage="model", message=f"reusing cached model {weights}")
        model, meta = load_model(weights)
        return model.eval(), {"source": str(weights), "cached": True, **meta}
    _emit(progress, stage="model", message=f"training {cfg.model} on {cfg.data} (cached after)")
    model, meta = train_and_save(
        cfg.model, cfg.data, tcfg, weights, data_dir=cfg.data_dir, progress=progress
    )
    return model, {"source": str(weights), "cached": False, **meta}


def input_shape(meta: dict[str, Any]) -> tuple[int, ...] | None:
    """The per-sample input shape a model's metadata records, if any."""
    shape = (meta.get("arch_kwargs") or {}).get("in_shape")
    return tuple(int(s) for s in shape) if isinstance(shape, list | tuple) else None


def run_audit(
    cfg: AuditConfig,
    *,
    store: RunStore,
    out_dir: Path,
    progress: Progress | None = None,
    fresh: bool = False,
) -> AuditOutcome:
    """Run an audit end to end (module docstring).

    An audit whose configuration (model weights' hash included) equals a completed run's
    reuses that run: its cells are read from the store and no attack runs again; with
    ``fresh`` it is computed again in a new run.

    Raises:
        ConfigError: the report folder cannot be written (checked before any work).
    """
    t0 = time.perf_counter()
    out_dir = check_out_dir(out_dir)
    splits = load_dataset(cfg.data, data_dir=cfg.data_dir)
    test: Dataset = splits.test.take(cfg.n)
    model, model_info = prepare_model(cfg, progress)
    oracle = probe(cfg.oracle(model, model_info), test.x, test.num_classes)
    if cfg.certify is not None:
        certifiable(oracle, cfg.certify)  # an unsupported layer fails here, before any run
    config = cfg.to_dict()
    config["model_sha256"] = model_info.get("weights_sha256")
    provenance = capture(seed=cfg.seed, config=config)
    waited: str | None = None
    while True:
        got = claim(store, "audit", config, provenance, waiting_for=waited,
                    reuse_complete=not fresh)  # fmt: skip
        if got.action == "reuse":
            return _reuse(cfg, store, got.run_id, out_dir, oracle, model_info, test, progress,
                          waited=got.run_id == waited, splits_meta=splits.meta, t0=t0)  # fmt: skip
        if got.action != "wait":
            break
        if waited is None:
            _emit(progress, stage="wait", message=(
                f"an identical audit is running (run {got.run_id}, process {got.owner}); waiting "
                f"for it to finish (its lease expires {STALE_SECONDS:.0f} s after its owner stops)"
            ))  # fmt: skip
        waited = got.run_id
        time.sleep(WAIT_POLL_SECONDS)
    run_id = got.run_id
    if got.action == "resume":
        _emit(progress, stage="resume", message=f"resuming interrupted run {run_id}")
        provenance = store.get_run(run_id).provenance
    me = owner_id()
    try:
        with Heartbeat(store.path, run_id):
            ev = _evaluate(cfg, oracle, test, StoreSink(store, run_id, owner=me), provenance,
                           progress)  # fmt: skip
            html, js = _reports(cfg, run_id, ev, model_info, test, splits.meta, out_dir, t0,
                                oracle, progress)  # fmt: skip
    except LeaseLost:
        raise  # the run belongs to another process now: its status is not ours to set
    except KeyboardInterrupt:
        store.finish_run(run_id, "interrupted", owner=me)
        raise
    except BaseException as e:
        store.finish_run(run_id, "failed", error=f"{type(e).__name__}: {e}"[:2000], owner=me)
        raise
    summary = {**run_summary(ev), "report": str(html.resolve())}
    store.finish_run(run_id, "complete", summary, owner=me)
    return AuditOutcome(run_id, ev, model_info, html, js)


def _evaluate(
    cfg: AuditConfig,
    oracle: Oracle,
    test: Dataset,
    sink: StoreSink,
    provenance: dict[str, Any],
    progress: Progress | None,
) -> Evaluation:
    """The audit's evaluation: computed into ``sink``, or read back where it holds everything."""
    return evaluate(
        oracle, test, cfg.attack_configs(), cfg.threats(), cfg.eval_config(), sink=sink,
        progress=progress, provenance=provenance,
    )  # fmt: skip


def _reports(
    cfg: AuditConfig,
    run_id: str,
    ev: Evaluation,
    model_info: dict[str, Any],
    test: Dataset,
    data_meta: dict[str, Any],
    out_dir: Path,
    t0: float,
    oracle: Oracle,
    progress: Progress | None = None,
) -> tuple[Path, Path]:
    extra = {
        "title": f"advlab audit: {cfg.model} on {cfg.data}",
        "run_id": run_id,
        "model": {k: v for k, v in model_info.items() if k != "versions"} | {"name": cfg.model},
        "dataset": {"name": cfg.data, "n": len(test), **data_meta},
        "config": cfg.to_dict(),
        "wall_time": time.perf_counter() - t0,
        "example_confidence": example_confidence(
            oracle, [*ev.examples, *ev.failures], test.x.device
        ),
    }
    json_extra = dict(extra)
    grid = audit_targeted_grid(cfg, oracle, test, ev) if cfg.targeted_grid else None
    if isinstance(grid, str):
        _emit(progress, stage="report", message=grid)
    elif grid is not None:
        extra["targeted_grid"] = grid
        # the JSON keeps the grid's outcome (which source became which class), not its images
        json_extra["targeted_grid"] = {k: v.tolist() if isinstance(v, Tensor) else v
                                       for k, v in grid.items()
                                       if k in ("attack", "index", "pred", "success")}  # fmt: skip
    run_dir = out_dir / run_id
    json_path = write_json_report(run_dir / "report.json", ev, json_extra)
    html_path = write_html_report(run_dir / "report.html", ev, extra)
    return html_path, json_path


def audit_targeted_grid(
    cfg: AuditConfig, oracle: Oracle, test: Dataset, ev: Evaluation
) -> dict[str, Any] | str:
    """The report's source x target grid (:func:`advlab.attacks.targeted_grid`) on the
    correctly classified test inputs, or why it is left out."""
    attack, threat = cfg.grid_attack()
    clean = ev.records[("clean", ev.norm, 0.0)]
    ok = torch.tensor([r.index for r in clean if r.clean_pred == r.label], dtype=torch.long)
    x, y = test.x[ok], test.y[ok]
    try:
        grid = targeted_grid(attack.name, oracle, x, y, threat, num_classes=test.num_classes,
                             seed=cfg.seed, **attack.params)  # fmt: skip
    except InputError as e:
        return f"targeted grid left out: {e}"
    return {k: v.cpu() if isinstance(v, Tensor) else v for k, v in grid.items()}


def example_confidence(
    oracle: Oracle, examples: Sequence[Example], device: torch.device
) -> dict[int, list[float]]:
    """For the report's image grid: per kept example, the model's softmax probability of its
    predicted class on the clean and on the adversarial input (two queries per example, through
    the oracle); empty when the oracle reveals no scores."""
    if not examples or oracle.access < Access.SCORES:
        return {}
    x = torch.stack([e.x for e in examples] + [e.x_adv for e in examples])
    with torch.no_grad():
        s = oracle.scores(x.to(device)).double().cpu()
    p = s.softmax(dim=1) if oracle.output == "logits" else s
    top = p.max(dim=1).values.tolist()
    k = len(examples)
    return {e.index: [top[j], top[k + j]] for j, e in enumerate(examples)}


def _reuse(
    cfg: AuditConfig,
    store: RunStore,
    run_id: str,
    out_dir: Path,
    oracle: Oracle,
    model_info: dict[str, Any],
    test: Dataset,
    progress: Progress | None,
    *,
    waited: bool,
    splits_meta: dict[str, Any],
    t0: float,
) -> AuditOutcome:
    """The results of an identical audit that completed: another process's that this one
    waited for, or an earlier one (``waited=False``). They are read from the store (no attack
    runs again); the reports are written into ``out_dir`` only where they are not there yet."""
    run = store.get_run(run_id)
    how = "completed by another process" if waited else "an identical audit completed it"
    _emit(progress, stage="reuse", message=f"reusing run {run_id}, {how}")
    ev = _evaluate(cfg, oracle, test, StoreSink(store, run_id), run.provenance, None)
    html = out_dir / run_id / "report.html"
    if html.exists():
        js = html.with_name("report.json")
    else:
        html, js = _reports(
            cfg, run_id, ev, model_info, test, splits_meta, out_dir, t0, oracle, progress
        )
    return AuditOutcome(run_id, ev, model_info, html, js, reused=True,
                        reused_how="waited" if waited else "stored")  # fmt: skip


#: Identifies the JSON file ``advlab certify --out`` writes; bumped on incompatible changes.
CERTIFY_FORMAT, CERTIFY_FORMAT_VERSION = "advlab-certify", 1


def run_certify(
    cfg: CertifyConfig, *, out_dir: Path | None = None, progress: Progress | None = None
) -> CertifyOutcome:
    """``advlab certify``: certified accuracy at each eps (each sample's margins bounded at that
    radius) and, with ``radius``, each sample's certified radius (bisection); with ``out_dir``
    the result goes to ``out_dir/certify-<method>-<norm>.json``, written atomically.

    Raises:
        ConfigError: the output folder cannot be written, or the model has a layer the bounds
            do not support (checked before any bound is computed).
    """
    t0 = time.perf_counter()
    if out_dir is not None:
        out_dir = check_out_dir(out_dir)
    splits = load_dataset(cfg.data, data_dir=cfg.data_dir)
    test: Dataset = splits.test.take(cfg.n)
    model, model_info = prepare_model(cfg, progress)
    oracle = probe(ModuleOracle(model, input_shape=input_shape(model_info)), test.x,
                   test.num_classes)  # fmt: skip
    certifiable(oracle, cfg.method)
    provenance = capture(seed=cfg.seed, config=cfg.to_dict())
    correct = clean_correct(oracle, test.x, test.y, cfg.batch_size)
    rows = certified_accuracy(oracle, test.x, test.y, cfg.threats(), method=cfg.method,
                              batch_size=cfg.batch_size, progress=progress)  # fmt: skip
    radii = None
    if cfg.radius:
        radii = certified_radii(oracle, test.x, test.y, cfg.norm, method=cfg.method,
                                steps=cfg.steps, batch_size=cfg.batch_size, progress=progress)  # fmt: skip
    n, k = len(test), int(correct.sum())
    out = CertifyOutcome(
        config=cfg, model_info=model_info, n=n, clean_accuracy=k / n,
        clean_ci=wilson_interval(k, n), rows=rows, correct=correct.cpu(), radii=radii,
        json=None, wall_time=time.perf_counter() - t0,
    )  # fmt: skip
    if out_dir is not None:
        info = {k: v for k, v in model_info.items() if k != "versions"}
        doc = {
            "format": CERTIFY_FORMAT,
            "format_version": CERTIFY_FORMAT_VERSION,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "model": info | {"name": cfg.model},
            "dataset": {"name": cfg.data, "n": n, **splits.meta},
            "config": cfg.to_dict(),
            "clean_accuracy": out.clean_accuracy,
            "clean_ci": list(out.clean_ci),
            "certified": [r.to_dict() for r in rows],
            "radius": None if radii is None else {
                "method": cfg.method, "norm": cfg.norm, "steps": cfg.steps,
                **(out.radius_stats() or {}),
                "samples": [
                    {"index": i, "label": int(y), "correct": bool(c), "certified": float(r)}
                    for i, (y, c, r) in enumerate(zip(test.y.tolist(), out.correct.tolist(),
                                                      radii.tolist(), strict=True))
                ],
            },
            "provenance": provenance,
            "wall_time": time.perf_counter() - t0,
        }  # fmt: skip
        out.json = atomic_write_json(out_dir / f"certify-{cfg.method}-{cfg.norm}.json", doc)
    return out
