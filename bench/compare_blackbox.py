"""Black-box attacks against the references: advlab Square, HopSkipJump (and ZOO) vs ART and foolbox.

On the zoo CNN ``papernot-mnist`` trained on full MNIST and the first ``--n`` correctly
classified MNIST test images:

* ``square``: advlab ``square`` L-inf eps 0.3 vs ART ``SquareAttack`` (p_init 0.8, one restart),
  both with a budget of ``--square-queries`` queries per image;
* ``hsj``: advlab ``hopskipjump`` L2 vs ART ``HopSkipJump`` and foolbox ``HopSkipJumpAttack``.
  The references run ``--ref-iters`` iterations (their own stopping rule); advlab gets the
  *smaller* of their mean per-image query counts as its per-image cap, so it never uses more;
* ``zoo``: advlab ``zoo`` vs ART ``ZooAttack`` (same c, steps, 128 coordinates, no resize or
  importance sampling), only when advlab's ``zoo`` attack is registered (``--zoo-n`` images).

The references' queries are counted by wrapping the model in a counting torch module (every
image through ``forward``); advlab's are its oracle's per-sample counts (the final verification
query included). Every output is re-verified on the model here. Ratio columns are advlab over
the reference: success ratio >= 1, queries ratio <= 1 and time ratio <= 0.5 are the targets of
issue 9. Then the quality figures of issue 9 (``--quality``, on by default):

* Square L-inf eps 0.3 on the undefended model: success, mean and median queries;
* Square on the PGD-trained ``bench/out/advtrain/pgd.safetensors`` at eps 0.3 against white-box
  PGD-100 (advlab ``pgd``, steps 100, step 0.01) on the same images: robust accuracies;
* HopSkipJump L2 median distance at 1k, 5k and 25k queries, C&W L2's median (advlab ``cw-l2``,
  defaults) on the same images, and the ratio at 25k (target <= 1.3).

Prints one table and writes ``bench/out/compare_blackbox.json``.

    .venv/bin/python bench/compare_blackbox.py --n 100 --threads 1
    .venv/bin/python bench/compare_blackbox.py --n 10 --only square,hsj --no-quality
    .venv/bin/python bench/compare_blackbox.py --only zoo --zoo-n 20      # the ZOO row alone
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

import advlab
from _common import first_correct, load_frozen, predict
from advlab import ATTACKS, ThreatModel
from advlab.attacks import get_attack
from advlab.data import load_dataset
from advlab.oracle import ModuleOracle

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data"
DEFAULT_MODEL = REPO / "bench" / "out" / "papernot-mnist-full.safetensors"
DEFAULT_PGD_MODEL = REPO / "bench" / "out" / "advtrain" / "pgd.safetensors"
SECTIONS = ("square", "hsj", "zoo")


class Counting(nn.Module):
    """The model, counting every image that goes through ``forward``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.count = 0
        self.eval()

    def forward(self, x: Tensor) -> Tensor:
        self.count += int(x.shape[0])
        x = x.to(torch.float32)  # ART sends float64 from some attacks
        out: Tensor = self.model(x)
        return out


@torch.no_grad()
def check(model: nn.Module, x: Tensor, y: Tensor, x_adv: Tensor, norm: str,
          eps: float) -> dict[str, Tensor]:  # fmt: skip
    """Re-verify outputs: in the box (and ball), misclassified; their L2 and L-inf sizes."""
    x_adv = x_adv.detach().to(x.device, torch.float32).reshape(x.shape)
    d = (x_adv - x).flatten(1)
    size = d.norm(dim=1) if norm == "l2" else d.abs().amax(dim=1)
    valid = torch.isfinite(d).all(dim=1) & (x_adv.flatten(1) >= -1e-6).all(dim=1)
    valid &= (x_adv.flatten(1) <= 1 + 1e-6).all(dim=1) & (size <= eps * (1 + 1e-5) + 1e-6)
    pred = predict(model, torch.where(valid.view(-1, 1, 1, 1), x_adv, x))
    return {"success": (pred != y) & valid, "size": size}


def stats(v: dict[str, Tensor], queries: Tensor | None, total_queries: int, n: int,
          seconds: float) -> dict[str, Any]:  # fmt: skip
    s = v["success"].cpu()
    size = v["size"].cpu()[s].double()
    return {
        "n": n,
        "success_rate": float(s.double().mean()),
        "mean_queries": total_queries / n,
        "median_queries": float(queries.double().median()) if queries is not None else math.nan,
        "median_size": float(size.median()) if len(size) else math.nan,
        "time_s": seconds,
    }


def timed(fn: Any) -> tuple[Any, float]:
    t = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, time.perf_counter() - t


def art_classifier(model: nn.Module, device: str) -> Any:
    from art.estimators.classification import PyTorchClassifier

    return PyTorchClassifier(
        model=model, loss=nn.CrossEntropyLoss(), input_shape=(1, 28, 28), nb_classes=10,
        clip_values=(0.0, 1.0), device_type="gpu" if device.startswith("cuda") else "cpu",
    )  # fmt: skip


def row(section: str, lib: str, r: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"section": section, "lib": lib, **r, **extra}


def ratios(adv: dict[str, Any], ref: dict[str, Any]) -> dict[str, float]:
    def q(a: float, b: float) -> float:
        return a / b if b and math.isfinite(a) and math.isfinite(b) else math.nan

    return {
        "success_ratio": q(adv["success_rate"], ref["success_rate"]),
        "queries_ratio": q(adv["mean_queries"], ref["mean_queries"]),
        "size_ratio": q(adv["median_size"], ref["median_size"]),
        "time_ratio": q(adv["time_s"], ref["time_s"]),
    }


def run_square(model: nn.Module, x: Tensor, y: Tensor, a: argparse.Namespace) -> list[dict]:
    eps, budget = 0.3, a.square_queries
    out = []
    oracle = ModuleOracle(model)
    res, t = timed(lambda: get_attack("square")(oracle, x, y, ThreatModel("linf", eps),
                                                n_queries=budget, seed=a.seed))  # fmt: skip
    ours = stats(check(model, x, y, res.x_adv, "linf", eps), res.queries, oracle.used, len(x), t)
    out.append(row("square", "advlab", ours))
    _progress(out[-1])
    from art.attacks.evasion import SquareAttack

    counting = Counting(model)
    att = SquareAttack(art_classifier(counting, a.device), norm=np.inf, eps=eps,
                       max_iter=budget, p_init=0.8, nb_restarts=1, batch_size=len(x),
                       verbose=False)  # fmt: skip
    np.random.seed(a.seed)  # noqa: NPY002  (ART draws from the global NumPy RNG)
    xa, t = timed(lambda: att.generate(x.cpu().numpy(), y=y.cpu().numpy()))
    ref = stats(check(model, x, y, torch.as_tensor(xa), "linf", eps), None, counting.count,
                len(x), t)  # fmt: skip
    out.append(row("square", "art", ref, **ratios(ours, ref)))
    _progress(out[-1])
    return out


def run_hsj(model: nn.Module, x: Tensor, y: Tensor, a: argparse.Namespace) -> list[dict]:
    import foolbox as fb
    from art.attacks.evasion import HopSkipJump

    refs: list[dict] = []
    counting = Counting(model)
    att = HopSkipJump(art_classifier(counting, a.device), norm=2, max_iter=a.ref_iters,
                      max_eval=10000, init_eval=100, init_size=100, batch_size=256,
                      verbose=False)  # fmt: skip
    np.random.seed(a.seed)  # noqa: NPY002  (ART draws from the global NumPy RNG)
    xa, t = timed(lambda: att.generate(x.cpu().numpy()))
    refs.append(row("hsj", "art", stats(check(model, x, y, torch.as_tensor(xa), "l2", math.inf),
                                        None, counting.count, len(x), t)))  # fmt: skip
    _progress(refs[-1])
    counting = Counting(model)
    fmodel = fb.PyTorchModel(counting, bounds=(0, 1), device=a.device)
    fatt = fb.attacks.HopSkipJumpAttack(steps=a.ref_iters, constraint="l2")
    torch.manual_seed(a.seed)
    (_, xf, _), t = timed(lambda: fatt(fmodel, x, y, epsilons=None))
    refs.append(row("hsj", "foolbox", stats(check(model, x, y, xf, "l2", math.inf), None,
                                            counting.count, len(x), t)))  # fmt: skip
    _progress(refs[-1])
    cap = int(min(r["mean_queries"] for r in refs))
    oracle = ModuleOracle(model, access="labels")
    res, t = timed(lambda: get_attack("hopskipjump")(oracle, x, y, ThreatModel("l2", math.inf),
                                                     max_queries=cap, seed=a.seed))  # fmt: skip
    ours = row("hsj", "advlab", stats(check(model, x, y, res.x_adv, "l2", math.inf), res.queries,
                                      oracle.used, len(x), t), max_queries=cap)  # fmt: skip
    _progress(ours)
    out = [ours]
    for r in refs:
        out.append({**r, **ratios(ours, r)})
    return out


def run_zoo(model: nn.Module, x: Tensor, y: Tensor, a: argparse.Namespace) -> list[dict]:
    if "zoo" not in ATTACKS.names():
        print("zoo: advlab's 'zoo' attack is not registered; row skipped")
        return []
    from art.attacks.evasion import ZooAttack

    x, y = x[: a.zoo_n], y[: a.zoo_n]
    steps, c = a.zoo_steps, 1.0
    oracle = ModuleOracle(model, output="logits")
    params = {"steps": steps, "binary_search_steps": 1, "c_init": c, "coordinates": 128}
    res, t = timed(lambda: get_attack("zoo")(oracle, x, y, ThreatModel("l2", math.inf),
                                             seed=a.seed, **params))  # fmt: skip
    ours = stats(check(model, x, y, res.x_adv, "l2", math.inf), res.queries, oracle.used,
                 len(x), t)  # fmt: skip
    out = [row("zoo", "advlab", ours, params=params)]
    _progress(out[-1])
    counting = Counting(model)
    att = ZooAttack(art_classifier(counting, a.device), confidence=0.0, learning_rate=1e-2,
                    max_iter=steps, binary_search_steps=1, initial_const=c, abort_early=True,
                    use_resize=False, use_importance=False, nb_parallel=128, batch_size=1,
                    variable_h=1e-4, verbose=False)  # fmt: skip
    np.random.seed(a.seed)  # noqa: NPY002  (ART draws from the global NumPy RNG)
    xa, t = timed(lambda: att.generate(x.cpu().numpy()))
    ref = stats(check(model, x, y, torch.as_tensor(xa), "l2", math.inf), None, counting.count,
                len(x), t)  # fmt: skip
    out.append(row("zoo", "art", ref, **ratios(ours, ref)))
    _progress(out[-1])
    return out


def quality(model: nn.Module, x: Tensor, y: Tensor, test: Any, a: argparse.Namespace) -> dict:
    """The figures of issue 9 for Square and HopSkipJump (module docstring)."""
    q: dict[str, Any] = {}
    if "square" in a.quality_parts:
        q.update(_square_quality(model, x, y, test, a))
    if "hsj" in a.quality_parts:
        q.update(_hsj_quality(model, x, y, a))
    return q


def _square_quality(model: nn.Module, x: Tensor, y: Tensor, test: Any,
                    a: argparse.Namespace) -> dict:  # fmt: skip
    q: dict[str, Any] = {}
    # Square L-inf 0.3, undefended
    res, t = timed(lambda: get_attack("square")(model, x, y, ThreatModel("linf", 0.3),
                                                n_queries=a.square_queries, seed=a.seed))  # fmt: skip
    qs = res.queries.double()
    q["square_undefended"] = {
        "n": len(x), "success_rate": res.success_rate, "mean_queries": float(qs.mean()),
        "median_queries": float(qs.median()),
        "mean_queries_successful": float(qs[res.success].mean()) if res.success.any() else None,
        "time_s": t,
    }  # fmt: skip
    print("square undefended:", q["square_undefended"], flush=True)
    # Square vs PGD-100 on the PGD-trained model
    if a.pgd_model.exists():
        robust = load_frozen(a.pgd_model)
        xr, yr, _ = first_correct(robust, test, a.n_pgd)  # on the CPU, where the data is
        robust = robust.to(a.device)
        xr, yr = xr.to(a.device), yr.to(a.device)
        tm = ThreatModel("linf", 0.3)
        sq, t_sq = timed(lambda: get_attack("square")(robust, xr, yr, tm,
                                                      n_queries=a.square_queries, seed=a.seed))  # fmt: skip
        pgd, t_pgd = timed(lambda: get_attack("pgd")(robust, xr, yr, tm, steps=100,
                                                     step_size=0.01, seed=a.seed))  # fmt: skip
        both = (~sq.success & ~pgd.success).double().mean()
        q["square_vs_pgd100"] = {
            "n": len(xr), "square_robust_accuracy": sq.robust_accuracy,
            "pgd100_robust_accuracy": pgd.robust_accuracy,
            "gap_points": 100 * (sq.robust_accuracy - pgd.robust_accuracy),
            "worst_case_robust_accuracy": float(both),
            "square_mean_queries": float(sq.queries.double().mean()),
            "time_square_s": t_sq, "time_pgd_s": t_pgd,
        }  # fmt: skip
        print("square vs pgd-100:", q["square_vs_pgd100"], flush=True)
    return q


def _hsj_quality(model: nn.Module, x: Tensor, y: Tensor, a: argparse.Namespace) -> dict:
    q: dict[str, Any] = {}
    # HopSkipJump L2 at several budgets vs C&W L2
    hs: dict[str, Any] = {}
    for budget in a.hsj_budgets:
        oracle = ModuleOracle(model, access="labels")
        res, t = timed(lambda b=budget, o=oracle: get_attack("hopskipjump")(  # type: ignore[misc]
            o, x, y, ThreatModel("l2", math.inf), max_queries=b, seed=a.seed))  # fmt: skip
        hs[str(budget)] = {
            "success_rate": res.success_rate,
            "median_l2": float(res.norms[res.success].double().median()),
            "mean_queries": float(res.queries.double().mean()), "time_s": t,
        }  # fmt: skip
        print(f"hopskipjump {budget}:", hs[str(budget)], flush=True)
    cw, t = timed(lambda: get_attack("cw-l2")(model, x, y, ThreatModel("l2", math.inf),
                                              seed=a.seed))  # fmt: skip
    cw_med = float(cw.norms[cw.success].double().median())
    top = str(max(a.hsj_budgets))
    q["hopskipjump_vs_cw"] = {
        "n": len(x), "hsj": hs, "cw_l2_median": cw_med, "cw_success_rate": cw.success_rate,
        "cw_time_s": t, f"ratio_at_{top}": hs[top]["median_l2"] / cw_med,
    }  # fmt: skip
    print("hopskipjump vs cw-l2:", q["hopskipjump_vs_cw"], flush=True)
    return q


def _progress(r: dict[str, Any]) -> None:
    print(f"  {r['section']:7s} {r['lib']:8s} success {r['success_rate']:.3f} "
          f"queries {r['mean_queries']:.1f} size {r['median_size']:.4f} "
          f"time {r['time_s']:.1f}s", flush=True)  # fmt: skip


def fmt(v: Any, spec: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return format("-", ">" + spec.split(".")[0].lstrip(">"))
    return format(v, spec)


def print_table(rows: list[dict[str, Any]]) -> None:
    print(f"{'section':8s} {'lib':8s} {'n':>4s} {'success':>8s} {'mean q':>9s} {'median q':>9s} "
          f"{'med size':>9s} {'time s':>8s} {'succ r':>7s} {'q r':>6s} {'size r':>7s} "
          f"{'time r':>7s}")  # fmt: skip
    for r in rows:
        print(f"{r['section']:8s} {r['lib']:8s} {r['n']:4d} {r['success_rate']:8.3f} "
              f"{r['mean_queries']:9.1f} {fmt(r['median_queries'], '9.1f')} "
              f"{fmt(r['median_size'], '9.4f')} {r['time_s']:8.1f} "
              f"{fmt(r.get('success_ratio'), '7.3f')} {fmt(r.get('queries_ratio'), '6.3f')} "
              f"{fmt(r.get('size_ratio'), '7.3f')} {fmt(r.get('time_ratio'), '7.3f')}")  # fmt: skip
    print("ratios r: advlab / the row's library (success >= 1, queries <= 1, time <= 0.5 are the "
          "targets; size: median L-inf (square) or L2 (hsj, zoo) of successful outputs)")  # fmt: skip


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "torch": torch.__version__,
           "advlab": advlab.__version__}  # fmt: skip
    for mod in ("foolbox", "art"):
        try:
            out[mod] = importlib.import_module(mod).__version__
        except ImportError:
            out[mod] = "not installed"
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    ap.add_argument("--pgd-model", type=Path, default=DEFAULT_PGD_MODEL)
    ap.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--n", type=int, default=100, help="first N correctly classified images")
    ap.add_argument("--n-pgd", type=int, default=None, help="images for Square vs PGD (--n)")
    ap.add_argument("--only", default=",".join(SECTIONS), help=f"subset of {','.join(SECTIONS)}")
    ap.add_argument("--square-queries", type=int, default=10000)
    ap.add_argument("--ref-iters", type=int, default=15,
                    help="iterations of ART's and foolbox's HopSkipJump")  # fmt: skip
    ap.add_argument("--hsj-budgets", default="1000,5000,25000")
    ap.add_argument("--zoo-n", type=int, default=20)
    ap.add_argument("--zoo-steps", type=int, default=100)
    ap.add_argument("--quality", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--quality-parts", default="square,hsj", help="subset of square,hsj")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "compare_blackbox.json")
    a = ap.parse_args()
    a.hsj_budgets = [int(v) for v in a.hsj_budgets.split(",") if v.strip()]
    a.n_pgd = a.n_pgd or a.n
    torch.set_num_threads(a.threads)
    model = load_frozen(a.model)
    test = load_dataset("mnist", data_dir=a.data_dir).test
    x, y, _ = first_correct(model, test, a.n)  # on the CPU, where the data is
    model = model.to(a.device)
    x, y = x.to(a.device), y.to(a.device)
    only = [s.strip() for s in a.only.split(",") if s.strip()]
    rows: list[dict[str, Any]] = []
    runners = {"square": run_square, "hsj": run_hsj, "zoo": run_zoo}
    for sec in only:
        rows += runners[sec](model, x, y, a)
    q = quality(model, x, y, test, a) if a.quality else {}
    print()
    print(f"model {a.model.name}, first {len(x)} correctly classified MNIST test images, "
          f"device {a.device}, {a.threads} thread(s)")  # fmt: skip
    print_table(rows)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    cfg = {k: str(v) if isinstance(v, Path) else v for k, v in vars(a).items()}
    a.out.write_text(json.dumps({"config": cfg, "versions": _versions(), "rows": rows,
                                 "quality": q}, indent=1, default=str))  # fmt: skip
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
