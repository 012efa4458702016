"""Which random start should PGD-L2 use? Robust accuracy for three start distributions.

A point drawn uniformly from the volume of a d-dimensional L2 ball has radius ``eps * U^(1/d)``;
for MNIST (d = 784) that is ``>= 0.99 eps`` with probability ``1 - 0.99^784 ~ 0.9996``, so every
start lies on the sphere, as far from ``x`` as the budget allows. advlab's
``ThreatModel.random_start`` instead draws a uniformly random direction and a radius uniform in
``[0, eps]``. This script measures, on one model and one image set, PGD-L2 (eps 2, step 0.1,
40 steps by default) robust accuracy for

* ``none``: no random start (the first iterate is ``x``);
* ``volume``: a direction uniform on the sphere, radius ``eps * U^(1/d)`` (uniform in the ball;
  what foolbox and ART draw);
* ``radius``: a direction uniform on the sphere, radius ``eps * U`` (advlab's current start; what
  torchattacks draws);

each followed by the same projection onto the ball and the box. The alternatives are
:class:`ThreatModel` subclasses that override ``random_start`` only, passed to advlab's own
``pgd``, so everything else (steps, projection, best-iterate tracking) is the same code.
With ``--restarts R`` each random start is also run with R restarts, both with every run
starting at random and with the first run starting at ``x`` (``random_start=False``). Random
variants are repeated over ``--seeds`` seeds: the table gives the mean and the range.

``--loss margin`` runs PGD on the C&W margin instead of cross-entropy: on a confident model the
softmax saturates and the cross-entropy gradient of many inputs is below the 1e-12 floor of the
L2 step normalization, which weakens PGD whatever the start.

It also reports, per distribution, the mean L2 norm of the start after the box clamp (on MNIST
most pixels are 0 or 1, so the clamp removes about half of a random perturbation) and the
accuracy at the start point itself.

Run:  python bench/l2_random_start.py --model bench/out/papernot-mnist-full.safetensors
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from _common import first_correct, load_frozen
from advlab import ThreatModel
from advlab.attacks import pgd
from advlab.data import load_dataset
from advlab.fileio import atomic_write_json
from advlab.rng import SampleRNG

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
DEFAULT_MODEL = REPO / "bench" / "out" / "papernot-mnist-full.safetensors"
DEFAULT_OUT = REPO / "bench" / "out" / "l2_random_start.json"


def _direction(x: Tensor, rng: SampleRNG, rows: Tensor | None) -> Tensor:
    d = rng.normal(tuple(x.shape[1:]), rows, dtype=x.dtype, device=x.device)
    n = d.flatten(1).norm(dim=1).clamp(min=1e-12)
    return d / n.view(-1, *([1] * (x.dim() - 1)))


@dataclass(frozen=True)
class VolumeStart(ThreatModel):
    """L2 threat model whose random start is uniform in the ball's volume: radius eps * U^(1/d)."""

    def random_start(self, x: Tensor, rng: SampleRNG, rows: Tensor | None = None) -> Tensor:
        dim = x[0].numel()
        u = rng.uniform((), rows, dtype=x.dtype, device=x.device)
        r = self.eps * u.pow(1.0 / dim)
        d = _direction(x, rng, rows)
        return self.project(x + d * r.view(-1, *([1] * (x.dim() - 1))), x)


STARTS: dict[str, type[ThreatModel]] = {"volume": VolumeStart, "radius": ThreatModel}


@torch.no_grad()
def accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    return float((model(x).argmax(dim=1) == y).double().mean())


def run(
    model: nn.Module, x: Tensor, y: Tensor, threat: ThreatModel, *, random_start: bool,
    restarts: int, seed: int, a: argparse.Namespace,
) -> tuple[float, float]:  # fmt: skip
    """Robust accuracy (re-checked here: in the ball, in the box, still correct) and seconds."""
    t0 = time.perf_counter()
    res = pgd(model, x, y, threat, steps=a.steps, step_size=a.step, restarts=restarts,
              random_start=random_start, loss=a.loss, seed=seed)  # fmt: skip
    secs = time.perf_counter() - t0
    d = (res.x_adv - x).flatten(1)
    inside = (d.norm(dim=1) <= a.eps * (1 + 1e-5) + 1e-5) & (res.x_adv >= 0).flatten(1).all(1)
    inside &= (res.x_adv <= 1).flatten(1).all(1)
    if not bool(inside.all()):
        raise RuntimeError(f"{int((~inside).sum())} PGD outputs outside the threat set")
    with torch.no_grad():
        robust = model(res.x_adv).argmax(dim=1) == y
    return float(robust.double().mean()), secs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    ap.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--n", type=int, default=500, help="first N correctly classified test images")
    ap.add_argument("--eps", type=float, default=2.0)
    ap.add_argument("--step", type=float, default=0.1)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--loss", choices=("ce", "margin"), default="ce", help="PGD's loss")
    ap.add_argument("--restarts", type=int, default=5, help="also run with R restarts (0: skip)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)

    model = load_frozen(a.model)
    x, y, idx = first_correct(model, load_dataset("mnist", data_dir=a.data_dir).test, a.n)
    dim = x[0].numel()
    print(f"model {a.model}; {len(x)} correctly classified MNIST test images; d = {dim}; "
          f"PGD-L2 eps={a.eps} step={a.step} steps={a.steps} loss={a.loss}; threads={torch.get_num_threads()}")  # fmt: skip
    print(f"P(volume-uniform radius >= 0.99 eps) = {1 - 0.99**dim:.4f}; "
          f"E[radius]/eps: volume {dim / (dim + 1):.4f}, radius-uniform 0.5")  # fmt: skip

    rows: list[dict[str, Any]] = []
    print("\nstart distribution (before PGD), mean over seeds:")
    for name, cls in STARTS.items():
        tm = cls("l2", a.eps)
        norms, accs = [], []
        for s in range(a.seeds):
            x0 = tm.random_start(x, SampleRNG(s, x.shape[0]))
            norms.append(float((x0 - x).flatten(1).norm(dim=1).mean()))
            accs.append(accuracy(model, x0, y))
        print(f"  {name:7s} mean ||start - x|| after the box clamp = {sum(norms) / len(norms):.3f}"
              f" (eps {a.eps}); accuracy at the start = {sum(accs) / len(accs):.3f}")  # fmt: skip

    configs: list[tuple[str, type[ThreatModel], bool, int]] = [("none", ThreatModel, False, 1)]
    configs += [(n, c, True, 1) for n, c in STARTS.items()]
    if a.restarts > 1:
        for n, c in STARTS.items():
            configs.append((f"{n} x{a.restarts}", c, True, a.restarts))
            configs.append((f"x, then {n} x{a.restarts - 1}", c, False, a.restarts))
    print(f"\n{'start':22s} {'restarts':>8s} {'rob.acc mean':>12s} {'min':>6s} {'max':>6s} "
          f"{'time s':>7s}")  # fmt: skip
    for name, cls, rs, restarts in configs:
        tm = cls("l2", a.eps)
        seeds = range(a.seeds) if (rs or restarts > 1) else range(1)
        accs, times = [], []
        for s in seeds:
            acc, secs = run(model, x, y, tm, random_start=rs, restarts=restarts, seed=s, a=a)
            accs.append(acc)
            times.append(secs)
        mean = sum(accs) / len(accs)
        row = {"start": name, "restarts": restarts, "random_start": rs, "robust_accuracy": accs,
               "mean": mean, "time_s": times}  # fmt: skip
        rows.append(row)
        print(f"{name:22s} {restarts:8d} {mean:12.4f} {min(accs):6.3f} {max(accs):6.3f} "
              f"{sum(times) / len(times):7.2f}", flush=True)  # fmt: skip

    best = min(rows, key=lambda r: (r["mean"], r["restarts"]))
    print(
        f"\nlowest robust accuracy: {best['start']} ({best['mean']:.4f}); all rows attack the "
        "same images, so the min-max range over seeds is the noise to compare gaps against"
    )
    result = {"model": str(a.model), "n": len(x), "eps": a.eps, "step": a.step, "loss": a.loss,
              "steps": a.steps, "seeds": a.seeds, "rows": rows, "indices": idx.tolist()}  # fmt: skip
    a.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(a.out, result)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
