"""Reproduce CNN-Cert's MNIST table for the 4-layer, 5-filter CNN: certified L-inf, L2 and L1
radii (lower bounds) beside attack distances (upper bounds), and the time per image.

Paper (Boopathy et al. 2019, Tables 3-5, 10 MNIST test images, random target classes):
certified radii 0.04 / 0.15 / 0.28 with ReLU (0.05 / 0.18 / 0.34 with general activations),
C&W/EAD attack distances 0.15 / 3.14 / 14.45, 1-2 s per image.

Here: `cnn-cert-mnist` (3 conv layers of 5 3x3 filters, then FC: 8,680 hidden neurons), ReLU and
tanh, 5 epochs of Adam on full MNIST. The first `--n` (10) correctly classified test images, each
with a random target class (seeded), as in the paper. Certified radius: CROWN (CNN-Cert's bounds) by 15-step bisection, starting from [0, attack
distance]. Upper bounds: targeted C&W L-inf and C&W L2 (minimal attacks), and for L1 the
smallest radius at which targeted PGD-L1 (100 steps) succeeds, by 10-step bisection (advlab has no
EAD). Time per image: the bisection's wall time divided by n, on the machine's threads.

    python bench/reproduce_cnncert.py --quick          # mnist5k, 3 images
    python bench/reproduce_cnncert.py --threads 2
"""

from __future__ import annotations

import math
import time
from functools import partial

import torch

import _repro
from _repro import Repro, log
from advlab.attacks import get_attack
from advlab.certify import certified_radius
from advlab.defenses import TrainConfig
from advlab.threat import ThreatModel

PAPER = {
    "relu": {"linf": 0.04, "l2": 0.15, "l1": 0.28},
    "tanh": {"linf": 0.05, "l2": 0.18, "l1": 0.34},
    "attack": {"linf": 0.15, "l2": 3.14, "l1": 14.45},
}
NORMS = ("linf", "l2", "l1")


def pgd_l1_distance(model: object, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor,
                    top: float = 60.0, steps: int = 10) -> torch.Tensor:  # fmt: skip
    """Per-sample smallest L1 radius at which targeted PGD-L1 succeeds (bisection)."""
    lo = torch.zeros(len(x))
    hi = torch.full((len(x),), top)
    pgd = get_attack("pgd")
    for _ in range(steps):
        mid = (lo + hi) / 2
        ok = torch.zeros(len(x), dtype=torch.bool)
        for i in range(len(x)):
            res = pgd(model, x[i : i + 1], y[i : i + 1], ThreatModel("l1", float(mid[i])),
                      target=target[i : i + 1], steps=100, restarts=1, seed=0)  # fmt: skip
            ok[i] = bool(res.success[0])
        hi, lo = torch.where(ok, mid, hi), torch.where(ok, lo, mid)
    return hi


def attack_distances(model: object, x: torch.Tensor, y: torch.Tensor,
                     target: torch.Tensor) -> dict[str, list[float]]:  # fmt: skip
    out = {}
    for norm, name in (("linf", "cw-linf"), ("l2", "cw-l2")):
        res = get_attack(name)(model, x, y, ThreatModel(norm, math.inf), target=target, seed=0)
        out[norm] = torch.where(
            res.success, res.norms, torch.full_like(res.norms, math.nan)
        ).tolist()
    out["l1"] = pgd_l1_distance(model, x, y, target).tolist()
    return out


def certify(model: object, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor,
            upper: dict[str, list[float]]) -> dict[str, object]:  # fmt: skip
    out: dict[str, object] = {}
    for norm in NORMS:
        top = torch.tensor(upper[norm]).nan_to_num(nan={"linf": 1.0, "l2": 28.0, "l1": 784.0}[norm])
        for kind, tgt in (("target", target),):
            tick = time.perf_counter()
            r = certified_radius(model, x, y, ThreatModel(norm, 0.0), method="crown", steps=15,
                                 hi=top * 1.0001, target=tgt)  # fmt: skip
            out[f"{kind}.{norm}"] = r.tolist()
            out[f"{kind}.{norm}.seconds"] = (time.perf_counter() - tick) / len(x)
    return out


def main() -> None:
    args = _repro.options(__doc__.splitlines()[0]).parse_args()
    r = Repro("certify", args)
    n = args.n or (3 if r.quick else 10)
    print(f"CNN-Cert, 4-layer 5-filter MNIST CNN, {r.data}, {n} images, random targets, "
          f"{torch.get_num_threads()} thread(s)")  # fmt: skip
    print(f"{'':22}{'L-inf':>16}{'L2':>16}{'L1':>16}   s/image (linf, l2, l1)")
    for act in ("relu", "tanh"):
        cfg = TrainConfig(epochs=2 if r.quick else 5, batch_size=128, lr=1e-3, val_size=1000)
        model, meta = r.model(f"cnncert-{act}", "cnn-cert-mnist", cfg,
                              arch_kwargs={"activation": act})  # fmt: skip
        test = r.splits.test
        pred = _repro.predict(model, test.x[:500].to(r.device))
        idx = torch.nonzero(pred.cpu() == test.y[:500]).flatten()[:n]
        x, y = test.x[idx].to(r.device), test.y[idx].to(r.device)
        g = torch.Generator().manual_seed(0)
        target = (y + torch.randint(1, 10, (n,), generator=g)) % 10
        sig = {"weights": meta["weights_sha256"], "idx": idx.tolist(), "target": target.tolist()}
        upper = r.cached(f"cnncert-{act}-attacks", partial(attack_distances, model, x, y, target),
                         sig)  # fmt: skip
        log(f"certifying {act}")
        cert = r.cached(f"cnncert-{act}-certify", partial(certify, model, x, y, target, upper),
                        {**sig, "upper": upper, "method": "crown"})  # fmt: skip

        def mean(v: list[float]) -> float:
            t = torch.tensor(v)
            return float(t[torch.isfinite(t)].mean())

        def row(label: str, vals: dict[str, float], paper: dict[str, float] | None,
                secs: str = "") -> None:  # fmt: skip
            cells = "".join(
                f"{vals[k]:>8.3f}" + (f" ({paper[k]:.2f})" if paper else " " * 7) for k in NORMS
            )
            print(f"{label:22}{cells}   {secs}")

        secs = ", ".join(f"{cert[f'target.{k}.seconds']:.2f}" for k in NORMS)
        row(f"{act} certified", {k: mean(cert[f"target.{k}"]) for k in NORMS}, PAPER[act], secs)
        row(f"{act} attack", {k: mean(upper[k]) for k in NORMS}, PAPER["attack"])
        sound = all(
            c <= u * 1.0001 for k in NORMS
            for c, u in zip(cert[f"target.{k}"], upper[k], strict=True) if math.isfinite(u))  # fmt: skip
        print(f"{'':22}certified <= attack on every image: {sound}")
    print("(paper values in parentheses; the paper's attack distances are for its ReLU model)")


if __name__ == "__main__":
    main()
