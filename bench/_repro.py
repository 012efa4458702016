"""What the defense reproductions share: command-line options, resumable training of named
models, cached evaluation stages, and the honest robust-accuracy measurement. Not part of the
library.

Every reproduction writes into one folder (``bench/out/<name>[-quick]/``):

* ``<key>.safetensors`` (+ ``.json``): each trained model. A finished model is reused; a killed
  training run resumes from its ``<key>.ckpt`` (bit-identically, by the training loop).
* ``<key>.eval.json``: each evaluation stage, written atomically when it finishes and reused on
  the next run (``--fresh`` recomputes them).

So a full run can be killed at any point and restarted with the same command.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from _common import predict
from advlab.attacks import pgd
from advlab.data import load_dataset
from advlab.defenses import TrainConfig, recipe_params, train_and_save
from advlab.fileio import atomic_write_text
from advlab.models import load_model
from advlab.threat import ThreatModel

#: cross-entropy and margin robust accuracies further apart than this suggest gradient masking
MASKING_GAP = 0.05
OUT = Path(__file__).resolve().parent / "out"


def options(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true",
                   help="mnist5k and small budgets: minutes on a CPU")  # fmt: skip
    p.add_argument(
        "--data-dir",
        default=str(OUT.parents[1].parent / "shared" / "data"),
        help="folder holding mnist/ (IDX)",
    )
    p.add_argument("--out", default=None, help="output folder (default bench/out/<name>)")
    p.add_argument("--n", type=int, default=None, help="test images to evaluate on")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default=None, help="cpu or cuda")
    p.add_argument("--fresh", action="store_true", help="recompute cached evaluations")
    return p


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Repro:
    """One reproduction's folder, data and device."""

    def __init__(self, name: str, args: argparse.Namespace) -> None:
        torch.set_num_threads(args.threads)
        self.args = args
        self.quick = bool(args.quick)
        self.data = "mnist5k" if self.quick else "mnist"
        self.data_dir = None if self.quick else args.data_dir
        self.out = Path(args.out or OUT / f"{name}{'-quick' if self.quick else ''}")
        self.out.mkdir(parents=True, exist_ok=True)
        self.device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.splits = load_dataset(self.data, data_dir=self.data_dir)

    def test_set(self, n: int) -> tuple[Tensor, Tensor]:
        test = self.splits.test
        return test.x[:n].to(self.device), test.y[:n].to(self.device)

    def model(
        self, key: str, arch: str, cfg: TrainConfig, arch_kwargs: dict[str, Any] | None = None
    ) -> tuple[nn.Module, dict[str, Any]]:
        """The model ``key``: loaded if finished, else trained (resuming its checkpoint)."""
        path = self.out / f"{key}.safetensors"
        if not path.exists():
            log(f"training {key}: {arch} {arch_kwargs or ''} {cfg.recipe} {cfg.recipe_params}")

            def show(event: dict[str, Any]) -> None:
                if event.get("event") == "epoch":
                    log(f"  {key}: {event['message']}")

            train_and_save(arch, self.data, cfg, path, data_dir=self.data_dir, progress=show,
                           arch_kwargs=arch_kwargs, device=str(self.device))  # fmt: skip
        model, meta = load_model(path)
        want = {**cfg.to_dict(), "recipe_params": recipe_params(cfg.recipe, cfg.recipe_params)}
        if meta.get("recipe") != want:
            raise SystemExit(
                f"{path} was trained with another configuration than this script asks for; "
                "delete it (and its .eval.json files) to retrain, or use another --out"
            )
        model.to(self.device).eval()
        for p in model.parameters():
            p.requires_grad_(False)
        return model, dict(meta)

    def cached(
        self, key: str, fn: Callable[[], dict[str, Any]], signature: dict[str, Any]
    ) -> dict[str, Any]:
        """``fn()``'s result, stored in ``<key>.eval.json`` with ``signature`` (what it depends
        on: the weights' SHA-256, the images, the attacks and their budgets) and reused only
        when the stored signature is the same, unless ``--fresh``."""
        path = self.out / f"{key}.eval.json"
        sig = json.loads(json.dumps(signature))  # as it reads back
        if path.exists() and not self.args.fresh:
            stored = json.loads(path.read_text())
            if stored.get("signature") == sig:
                return dict(stored["result"])
            log(f"{path.name} was computed for another model or budget: recomputing")
        log(f"evaluating {key}")
        tick = time.perf_counter()
        result = fn()
        result["eval_seconds"] = time.perf_counter() - tick
        atomic_write_text(path, json.dumps({"signature": sig, "result": result}, indent=1))
        return result

    def save(self, name: str, payload: dict[str, Any]) -> Path:
        path = self.out / name
        atomic_write_text(path, json.dumps(payload, indent=1))
        return path


def training_seconds(meta: dict[str, Any]) -> float:
    """Seconds the saved model spent training, its per-epoch validation excluded."""
    rows = meta.get("extra", {}).get("training", {}).get("history") or []
    if not rows:
        return float("nan")
    return float(sum(r["seconds"] - r.get("val_seconds", 0.0) for r in rows))


def correct(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """``(N,)`` bool: which samples ``model`` classifies correctly."""
    return predict(model, x) == y


def robust_accuracy(
    model: nn.Module, x: Tensor, y: Tensor, threat: ThreatModel, *, steps: int, restarts: int,
    step_size: float | None = None, batch: int = 500, seed: int = 0,
) -> dict[str, Any]:  # fmt: skip
    """Accuracy under PGD with cross-entropy and with the logit margin (each with ``restarts``
    random restarts), and the per-sample worst case of both: a sample counts as robust only if
    it is classified correctly and neither attack succeeds. ``masking`` is set when the two
    losses disagree by more than :data:`MASKING_GAP` (a sign of gradient masking)."""
    ok = correct(model, x, y)
    alive = {"ce": ok.clone(), "margin": ok.clone()}
    for loss in alive:
        for i in range(0, len(x), batch):
            res = pgd(model, x[i : i + batch], y[i : i + batch], threat, steps=steps,
                      restarts=restarts, step_size=step_size, loss=loss, seed=seed)  # fmt: skip
            alive[loss][i : i + batch] &= ~res.success
    worst = alive["ce"] & alive["margin"]
    ce, mg = float(alive["ce"].float().mean()), float(alive["margin"].float().mean())
    return {
        "threat": str(threat), "n": len(x), "steps": steps, "restarts": restarts,
        "clean": float(ok.float().mean()), "ce": ce, "margin": mg,
        "worst": float(worst.float().mean()), "masking": abs(ce - mg) > MASKING_GAP,
        "robust": worst.tolist(),
    }  # fmt: skip


def print_robust_table(res: dict[str, Any], paper_clean: str, paper_worst: str,
                       target_clean: str, target_worst: str) -> None:  # fmt: skip
    """The paper-beside-measured table of a :func:`robust_accuracy` result."""
    print(f"{'':24}{'paper':>10}{'measured':>10}{'target':>10}")
    print(f"{'clean accuracy':24}{paper_clean:>10}{pct(res['clean']):>10}{target_clean:>10}")
    atk = f"PGD-{res['steps']}x{res['restarts']}"
    print(f"{atk + ' (CE)':24}{'':>10}{pct(res['ce']):>10}")
    print(f"{atk + ' (margin)':24}{'':>10}{pct(res['margin']):>10}")
    print(f"{atk + ' worst case':24}{paper_worst:>10}{pct(res['worst']):>10}{target_worst:>10}")
    print(masking_note(res))


def masking_note(r: dict[str, Any]) -> str:
    if not r.get("masking"):
        return ""
    return (f"  WARNING: PGD-CE {r['ce']:.1%} vs PGD-margin {r['margin']:.1%} at {r['threat']}: "
            "the losses disagree by more than 5 points, a sign of gradient masking")  # fmt: skip


def pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"
