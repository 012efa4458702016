"""The main job: train (or load) a model, attack it over an eps grid, store and report.

``advlab audit`` with no arguments trains the default ``papernot-mnist`` model on the embedded
``mnist5k`` data (or reuses the copy cached in :func:`advlab.paths.cache_dir`), runs FGSM and
PGD over an L-inf eps grid on the 1,000 test images, and writes the run store rows and an HTML
and JSON report. An interrupted audit resumes where it stopped: the run store keeps every
finished batch, and re-running the same command skips them.
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

import torch
from torch import nn

from advlab.attacks import get_attack
from advlab.attacks.base import check_model
from advlab.data import Dataset, load_dataset
from advlab.defenses import TrainConfig, evaluate_accuracy, train
from advlab.errors import ConfigError, InputError
from advlab.evaluate import AttackConfig, Evaluation, evaluate
from advlab.evaluate.engine import attack_parameters
from advlab.models import build_model, load_model, save_model
from advlab.paths import cache_dir
from advlab.registry import MODELS
from advlab.report import write_html_report, write_json_report
from advlab.store import RunStore, environment_info
from advlab.threat import ThreatModel

log = logging.getLogger(__name__)

Progress = Callable[[dict[str, Any]], None]

#: How the default model is trained when no cached copy exists.
DEFAULT_TRAINING = {
    "epochs": 8, "batch_size": 64, "lr": 1e-3, "optimizer": "adam", "scheduler": "cosine", "seed": 0,
}  # fmt: skip


@dataclass(frozen=True)
class AuditConfig:
    """Everything an audit depends on; two audits with equal configs give equal results.

    Attributes:
        model: a zoo name (trained on ``data`` and cached) or a path to a saved model.
        data: a dataset name or a ``.npz`` path; the audit uses its test split.
        data_dir: where standard datasets live (else ``$ADVLAB_DATA``).
        factory: ``package.module:function`` building the user's model, for a weights file.
        norm, eps: the threat model's norm and the eps grid.
        attacks: registered attack names (bounded attacks such as fgsm and pgd).
        steps: iterations for iterative attacks.
        n: number of test samples (the first n), ``None`` for all.
        batch_size: samples per attack batch.
        seed: seeds training of the default model and the attacks' random starts.
        training: overrides of :data:`DEFAULT_TRAINING` for the default model.
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
        for e in self.eps:
            ThreatModel(self.norm, e)  # validates norm and each eps
        if not self.eps:
            raise ConfigError("the eps grid is empty; pass e.g. --eps 0,0.1,0.3")
        for a in self.attacks:
            spec = get_attack(a)
            if spec.minimal:
                raise ConfigError(
                    f"{a!r} searches for a minimal perturbation and has no eps; audit runs "
                    "eps-bounded attacks such as fgsm, pgd"
                )
            if self.norm not in spec.norms:
                raise ConfigError(f"attack {a!r} does not support norm {self.norm!r}")
        if self.n is not None and self.n < 1:
            raise ConfigError(f"n must be >= 1, got {self.n}")
        if self.batch_size < 1 or self.steps < 1:
            raise ConfigError("batch_size and steps must be >= 1")
        unknown = set(self.training) - set(TrainConfig.__dataclass_fields__)
        if unknown:
            raise ConfigError(f"unknown training options {sorted(unknown)}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["eps"], d["attacks"] = list(self.eps), list(self.attacks)
        return d

    def attack_configs(self) -> list[AttackConfig]:
        out = []
        for a in self.attacks:
            spec = get_attack(a)
            params = {"steps": self.steps} if "steps" in (attack_parameters(spec) or ()) else {}
            out.append(AttackConfig(a, params))
        return out


@dataclass
class AuditOutcome:
    run_id: str
    evaluation: Evaluation
    model_info: dict[str, Any]
    html: Path
    json: Path


def _emit(progress: Progress | None, **event: Any) -> None:
    if progress is not None:
        progress(event)


def prepare_model(
    cfg: AuditConfig, data_train: Dataset | None, data_test: Dataset, progress: Progress | None
) -> tuple[nn.Module, dict[str, Any]]:
    """Load the user's model, or train/reuse the cached zoo model."""
    if cfg.model not in MODELS:
        path = Path(cfg.model).expanduser()
        model, meta = load_model(
            path, factory=cfg.factory, allow_unsafe_pickle=cfg.unsafe_allow_pickle
        )
        return model.eval(), {"source": str(path), **meta}
    if data_train is None or len(data_train) == 0:
        raise InputError(
            f"dataset {cfg.data!r} has no training split to train {cfg.model!r} on; pass a "
            "trained model with --model PATH or use a dataset with a train split"
        )
    tcfg = {**DEFAULT_TRAINING, "seed": cfg.seed, **cfg.training}
    c, h, w = data_train.input_shape
    arch_kwargs = {"num_classes": data_train.num_classes, "in_shape": [c, h, w]}
    key_src = json.dumps({"arch": cfg.model, "data": cfg.data, "kw": arch_kwargs, "train": tcfg},
                         sort_keys=True)  # fmt: skip
    key = hashlib.sha256(key_src.encode()).hexdigest()[:12]
    stem = cache_dir() / "models" / f"{cfg.model}-{cfg.data}-{key}"
    weights = stem.with_suffix(".safetensors")
    if weights.exists():
        _emit(progress, stage="model", message=f"reusing cached model {weights}")
        model, meta = load_model(weights)
        return model.eval(), {"source": str(weights), "cached": True, **meta}
    model = build_model(
        cfg.model, seed=tcfg["seed"], num_classes=data_train.num_classes, in_shape=(c, h, w)
    )
    _emit(progress, stage="model", message=f"training {cfg.model} on {cfg.data} (cached after)")
    train_cfg = TrainConfig(**tcfg)
    train(
        model, data_train, train_cfg, checkpoint_path=stem.with_suffix(".ckpt"), progress=progress
    )
    model.eval()
    acc = evaluate_accuracy(model, data_test, batch_size=cfg.batch_size)
    save_model(
        model, weights, arch=cfg.model, arch_kwargs=arch_kwargs, dataset=cfg.data,
        clean_accuracy=acc, recipe={"name": train_cfg.recipe, **tcfg}, seed=cfg.seed,
    )  # fmt: skip
    stem.with_suffix(".ckpt").unlink(missing_ok=True)
    _, meta = load_model(weights)
    return model, {"source": str(weights), "cached": False, **meta}


def run_audit(
    cfg: AuditConfig,
    *,
    store: RunStore,
    out_dir: Path,
    progress: Progress | None = None,
) -> AuditOutcome:
    """Run an audit end to end (see module docstring). Resumes an interrupted identical audit."""
    t0 = time.perf_counter()
    splits = load_dataset(cfg.data, data_dir=cfg.data_dir)
    test = splits.test.take(cfg.n)
    model, model_info = prepare_model(cfg, splits.train, test, progress)
    check_model(model, test.x, test.y, test.num_classes)
    config = cfg.to_dict()
    config["model_sha256"] = model_info.get("weights_sha256")
    run_id = store.find_resumable("audit", config)
    if run_id is None:
        run_id = store.create_run("audit", config, environment=environment_info(cfg.seed))
    else:
        store.set_status(run_id, "running")
        _emit(progress, stage="resume", message=f"resuming interrupted run {run_id}")
    try:
        ev = evaluate(
            model, test, attacks=cfg.attack_configs(), norm=cfg.norm, eps_grid=list(cfg.eps),
            batch_size=cfg.batch_size, seed=cfg.seed, store=store, run_id=run_id,
            progress=progress,
        )  # fmt: skip
    except KeyboardInterrupt:
        store.finish_run(run_id, "interrupted", None)
        raise
    except BaseException:
        store.finish_run(run_id, "failed", None)
        raise
    extra = {
        "title": f"advlab audit: {cfg.model} on {cfg.data}",
        "run_id": run_id,
        "model": {k: v for k, v in model_info.items() if k != "versions"} | {"name": cfg.model},
        "dataset": {"name": cfg.data, "n": len(test), **splits.meta},
        "config": config,
        "seed": cfg.seed,
        "wall_time": time.perf_counter() - t0,
        "torch_threads": torch.get_num_threads(),
    }
    run_dir = Path(out_dir) / run_id
    json_path = write_json_report(run_dir / "report.json", ev, extra)
    html_path = write_html_report(run_dir / "report.html", ev, extra)
    summary = {"clean_accuracy": ev.clean_accuracy, "report": str(html_path)}
    store.finish_run(run_id, "complete", summary)
    return AuditOutcome(run_id, ev, model_info, html_path, json_path)
