"""C&W L2 budgets: the ``"paper"`` preset against cheaper ones, and the two early-exit rules.

For each model, attacks the first N correctly classified full-MNIST test digits (untargeted,
``eps = inf``) and prints success, median and mean L2 of the successes, wall time, queries per
image, and the median ratio to the ``"paper"`` preset (9 x 1000 iterations, lr 0.01, c 1e-3).
A budget qualifies as a default when it reaches the same success and a median within 1% of the
paper's.

Section ``abort`` runs foolbox's setting (5 x 100, lr 0.1, c_init 1) with each combination of
the two early-exit rules (the reference's loss-plateau rule ``abort_early`` and advlab's
stalled-failure rule ``abort_stalled``), to see what each costs in strength and saves in time.

Run:
    python bench/cw_presets.py --models bench/out/papernot-mnist-full.safetensors,bench/out/mlp-mnist-full.safetensors
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Any

import torch

from _common import first_correct, load_frozen
from advlab import ThreatModel
from advlab.attacks import cw_l2
from advlab.data import load_dataset
from advlab.fileio import atomic_write_json

REPO = Path(__file__).resolve().parent.parent
CANDIDATES: dict[str, dict[str, Any]] = {
    "paper": {"preset": "paper"},
    "default": {"preset": "default"},
    "5x100 lr.1 c.01": {"binary_search_steps": 5, "steps": 100, "lr": 0.1, "c_init": 1e-2},
    "5x200 lr.05 c.01": {"binary_search_steps": 5, "steps": 200, "lr": 0.05, "c_init": 1e-2},
    "6x200 lr.05 c.01": {"binary_search_steps": 6, "steps": 200, "lr": 0.05, "c_init": 1e-2},
    "7x300 lr.05 c.01": {"binary_search_steps": 7, "steps": 300, "lr": 0.05, "c_init": 1e-2},
    "8x300 lr.02 c.01": {"binary_search_steps": 8, "steps": 300, "lr": 0.02, "c_init": 1e-2},
    "6x300 lr.02 c.01": {"binary_search_steps": 6, "steps": 300, "lr": 0.02, "c_init": 1e-2},
    "7x200 lr.02 c.01": {"binary_search_steps": 7, "steps": 200, "lr": 0.02, "c_init": 1e-2},
    "8x200 lr.02 c.01": {"binary_search_steps": 8, "steps": 200, "lr": 0.02, "c_init": 1e-2},
    "7x300 lr.02 c.01": {"binary_search_steps": 7, "steps": 300, "lr": 0.02, "c_init": 1e-2},
}
ABORT = {
    "both rules": {"abort_early": True, "abort_stalled": True},
    "loss plateau only": {"abort_early": True, "abort_stalled": False},
    "stalled only": {"abort_early": False, "abort_stalled": True},
    "no early exit": {"abort_early": False, "abort_stalled": False},
}
FOOLBOX = {"binary_search_steps": 5, "steps": 100, "lr": 0.1, "c_init": 1.0}


def run(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int, **kw: Any
) -> dict[str, Any]:
    t0 = time.perf_counter()
    norms, succ, queries = [], [], []
    for i in range(0, len(x), batch):
        r = cw_l2(model, x[i : i + batch], y[i : i + batch], ThreatModel("l2", math.inf), **kw)
        with torch.no_grad():  # re-checked here, one by one
            pred = torch.cat([model(r.x_adv[j : j + 1]).argmax(1) for j in range(len(r))])
        succ.append(pred != y[i : i + batch])
        norms.append(r.norms)
        queries.append(r.queries)
    s = torch.cat(succ)
    n = torch.cat(norms)[s].double()
    return {
        "n": len(x), "success": float(s.double().mean()),
        "median": float(n.median()) if len(n) else math.nan,
        "mean": float(n.mean()) if len(n) else math.nan,
        "seconds": time.perf_counter() - t0,
        "queries_per_image": float(torch.cat(queries).double().mean()),
        "norms": torch.cat(norms).tolist(), "succ": s.tolist(),
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=str(REPO / "bench/out/papernot-mnist-full.safetensors"))
    ap.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--only", default="presets,abort")
    ap.add_argument("--abort-budget", choices=["foolbox", "default"], default="foolbox",
                    help="the budget the early-exit rules are compared at")  # fmt: skip
    ap.add_argument("--candidates", default=",".join(CANDIDATES))
    ap.add_argument("--out", type=Path, default=REPO / "bench/out/cw_presets.json")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    test = load_dataset("mnist", data_dir=a.data_dir).test
    out: dict[str, Any] = {}
    for path in a.models.split(","):
        model = load_frozen(path)
        x, y, _ = first_correct(model, test, a.n)
        name = Path(path).stem
        print(f"\n== {name}: first {len(x)} correctly classified MNIST test digits")
        res: dict[str, Any] = {}
        sections = a.only.split(",")
        if "presets" in sections:
            print(f"{'budget':22s} {'success':>8s} {'median':>8s} {'mean':>8s} {'time s':>8s} "
                  f"{'q/img':>8s} {'med/paper':>9s}")  # fmt: skip
            for label in a.candidates.split(","):
                r = res[label] = run(model, x, y, a.batch, **CANDIDATES[label])
                ref = res.get("paper")
                ratio = r["median"] / ref["median"] if ref else math.nan
                print(f"{label:22s} {r['success']:8.3f} {r['median']:8.4f} {r['mean']:8.4f} "
                      f"{r['seconds']:8.1f} {r['queries_per_image']:8.1f} {ratio:9.4f}", flush=True)  # fmt: skip
        if "abort" in sections:
            budget = FOOLBOX if a.abort_budget == "foolbox" else {"preset": "default"}
            print(f"\n{a.abort_budget} setting {budget}:")
            for label, kw in ABORT.items():
                r = res[f"abort: {label}"] = run(model, x, y, a.batch, **budget, **kw)
                print(f"{label:22s} {r['success']:8.3f} {r['median']:8.4f} {r['mean']:8.4f} "
                      f"{r['seconds']:8.1f} {r['queries_per_image']:8.1f}", flush=True)  # fmt: skip
        out[name] = res
    atomic_write_json(a.out, out)
    print(f"\nwrote {a.out}")


if __name__ == "__main__":
    main()
