"""The main job: train (or load) a model, attack it over an eps grid, store and report.

``advlab audit`` with no arguments trains the default ``papernot-mnist`` model on the embedded
``mnist5k`` data (or reuses the copy cached in :func:`advlab.paths.cache_dir`), runs FGSM and
PGD over an L-inf eps grid on the 1,000 test images, and writes the records to the run store and
an HTML and JSON report.

Runs are leased (:mod:`advlab.store.lease`): an interrupted audit is resumed by the next identical
one (the store keeps every finished batch), an identical audit that is still running in another
process is waited for and its results reused, and an audit that fails is marked ``failed`` with
the reason.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from advlab.attacks import get_attack
from advlab.attacks.base import probe
from advlab.data import Dataset, load_dataset
from advlab.defenses import TrainConfig, train_and_save
from advlab.errors import ConfigError, LeaseLost
from advlab.evaluate import AttackConfig, EvalConfig, Evaluation, evaluate
from advlab.evaluate.engine import summary as run_summary
from advlab.fileio import check_writable_folder
from advlab.models import load_model
from advlab.oracle import ModuleOracle, Oracle
from advlab.paths import cache_dir
from advlab.provenance import capture
from advlab.registry import MODELS
from advlab.report import write_html_report, write_json_report
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

    def __post_init__(self) -> None:
        if not self.eps:
            raise ConfigError("the eps grid is empty; pass e.g. --eps 0,0.1,0.3")
        self.threats()  # validates the norm and each eps
        if not self.attacks:
            raise ConfigError("no attacks given; pass e.g. --attacks fgsm,pgd")
        for a in self.attacks:
            spec = get_attack(a)
            if self.norm not in spec.norms:
                raise ConfigError(
                    f"attack {a!r} supports norms {', '.join(spec.norms)}, not {self.norm!r}"
                )
        if self.n is not None and self.n < 1:
            raise ConfigError(f"n must be >= 1, got {self.n}")
        if self.batch_size < 1 or self.steps < 1:
            raise ConfigError("batch_size and steps must be >= 1")
        TrainConfig.from_dict({**TrainConfig().to_dict(), **self.training})

    def threats(self) -> list[ThreatModel]:
        """The grid as threat models."""
        for e in self.eps:
            if (
                not isinstance(e, int | float)
                or e != e
                or e in (float("inf"), float("-inf"))
                or e < 0
            ):
                raise ConfigError(
                    f"each eps of the grid must be a finite number >= 0 (inf means unbounded, "
                    f"which only a minimal attack's own threat model allows), got {e!r}"
                )
        return [ThreatModel(self.norm, e) for e in self.eps]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["eps"], d["attacks"] = list(self.eps), list(self.attacks)
        return d

    def attack_configs(self) -> list[AttackConfig]:
        out = []
        for a in self.attacks:
            spec = get_attack(a)
            params = {"steps": self.steps} if "steps" in spec.defaults and not spec.minimal else {}
            out.append(AttackConfig(a, params))
        return out

    def training_config(self) -> TrainConfig:
        """How the default model is trained: TrainConfig's defaults, the audit's seed, and the
        ``training`` overrides."""
        return TrainConfig.from_dict(
            {**TrainConfig().to_dict(), "seed": self.seed, **self.training}
        )


@dataclass
class AuditOutcome:
    run_id: str
    evaluation: Evaluation
    model_info: dict[str, Any]
    html: Path
    json: Path
    reused: bool = False


def _emit(progress: Progress | None, **event: Any) -> None:
    if progress is not None:
        progress(event)


def check_out_dir(out_dir: Path) -> Path:
    """Fail at the door when the report folder cannot be created or written."""
    return check_writable_folder(out_dir, f"--out {out_dir}")


def prepare_model(cfg: AuditConfig, progress: Progress | None) -> tuple[nn.Module, dict[str, Any]]:
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


def _input_shape(meta: dict[str, Any]) -> tuple[int, ...] | None:
    shape = (meta.get("arch_kwargs") or {}).get("in_shape")
    return tuple(int(s) for s in shape) if isinstance(shape, list | tuple) else None


def run_audit(
    cfg: AuditConfig,
    *,
    store: RunStore,
    out_dir: Path,
    progress: Progress | None = None,
) -> AuditOutcome:
    """Run an audit end to end (module docstring).

    Raises:
        ConfigError: the report folder cannot be written (checked before any work).
    """
    t0 = time.perf_counter()
    out_dir = check_out_dir(out_dir)
    splits = load_dataset(cfg.data, data_dir=cfg.data_dir)
    test: Dataset = splits.test.take(cfg.n)
    model, model_info = prepare_model(cfg, progress)
    oracle = probe(ModuleOracle(model, input_shape=_input_shape(model_info)), test.x,
                   test.num_classes)  # fmt: skip
    config = cfg.to_dict()
    config["model_sha256"] = model_info.get("weights_sha256")
    provenance = capture(seed=cfg.seed, config=config)
    waited: str | None = None
    while True:
        got = claim(store, "audit", config, provenance, waiting_for=waited)
        if got.action == "reuse":
            return _reuse(cfg, store, got.run_id, out_dir, oracle, model_info, test, progress)
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
            html, js = _reports(cfg, run_id, ev, model_info, test, splits.meta, out_dir, t0)
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
        oracle, test, cfg.attack_configs(), cfg.threats(),
        EvalConfig(batch_size=cfg.batch_size, seed=cfg.seed), sink=sink, progress=progress,
        provenance=provenance,
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
) -> tuple[Path, Path]:
    extra = {
        "title": f"advlab audit: {cfg.model} on {cfg.data}",
        "run_id": run_id,
        "model": {k: v for k, v in model_info.items() if k != "versions"} | {"name": cfg.model},
        "dataset": {"name": cfg.data, "n": len(test), **data_meta},
        "config": cfg.to_dict(),
        "wall_time": time.perf_counter() - t0,
    }
    run_dir = out_dir / run_id
    json_path = write_json_report(run_dir / "report.json", ev, extra)
    html_path = write_html_report(run_dir / "report.html", ev, extra)
    return html_path, json_path


def _reuse(
    cfg: AuditConfig,
    store: RunStore,
    run_id: str,
    out_dir: Path,
    oracle: Oracle,
    model_info: dict[str, Any],
    test: Dataset,
    progress: Progress | None,
) -> AuditOutcome:
    """The results of an identical audit that another process completed while this one waited
    (read from the store: nothing is recomputed and the reports are not written again)."""
    run = store.get_run(run_id)
    _emit(progress, stage="reuse", message=f"reusing run {run_id}, completed by another process")
    ev = _evaluate(cfg, oracle, test, StoreSink(store, run_id), run.provenance, None)
    html = Path((run.summary or {}).get("report") or out_dir / run_id / "report.html")
    return AuditOutcome(run_id, ev, model_info, html, html.with_name("report.json"), reused=True)
