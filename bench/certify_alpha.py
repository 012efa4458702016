"""Optimized slopes (alpha-CROWN) against fixed CROWN slopes: mean certified L-inf radius on the
same images (issue target: at least 10% larger).

Models: the 784-100-100-10 MNIST MLP (standard training; every intermediate bound is
re-optimized) and the PGD-trained `wong-mnist` of `advlab reproduce certified-training` (`--pgd-model`) when
it exists (its 3,136- and 1,568-neuron convolution layers exceed alpha-CROWN's memory limit, so
there only the last pass's slopes and the FC layer's bounds are optimized). Radius by 15-step
bisection; alpha-CROWN runs `--steps` Adam steps (learning rate `--lr`) at every bisection step.

    python bench/certify_alpha.py --n 30
"""

from __future__ import annotations

import time
from pathlib import Path

import _repro
from advlab.certify import certified_radius
from advlab.defenses import TrainConfig
from advlab.models import load_model
from advlab.threat import ThreatModel


def main() -> None:
    p = _repro.options(__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--pgd-model", default="advlab-out/reproduce/certified-training/pgd.safetensors",
                   help="the PGD-trained wong-mnist of `advlab reproduce certified-training`")  # fmt: skip
    args = p.parse_args()
    r = _repro.context("certify", args)
    n = args.n or (10 if r.quick else 30)
    cfg = TrainConfig(epochs=2 if r.quick else 5, batch_size=128, lr=1e-3, val_size=1000)
    models = {"mlp": r.model("mlp", "mlp", cfg)[0]}
    pgd_path = Path(args.pgd_model)
    if pgd_path.exists() and not r.quick:
        models["wong-mnist (PGD)"] = load_model(pgd_path)[0].eval()
    x, y = r.test_set(n)
    threat = ThreatModel("linf", 0.0)
    print(
        f"mean certified L-inf radius, {n} test images, {r.data}, alpha: {args.steps} Adam "
        f"steps, lr {args.lr}"
    )
    print(f"{'model':20}{'CROWN':>10}{'alpha':>10}{'gain':>8}{'CROWN s':>9}{'alpha s':>9}")
    for name, model in models.items():
        for q in model.parameters():
            q.requires_grad_(False)
        out = {}
        for method in ("crown", "alpha-crown"):
            opts = {"alpha_steps": args.steps, "alpha_lr": args.lr} if method != "crown" else {}
            tick = time.perf_counter()
            rad = certified_radius(model, x, y, threat, method=method, hi=0.5, **opts)
            out[method] = (float(rad.mean()), time.perf_counter() - tick, rad)
        c, a = out["crown"], out["alpha-crown"]
        assert bool((a[2] >= c[2] - 1e-6).all()), "alpha-CROWN certified less than CROWN"
        print(
            f"{name:20}{c[0]:>10.4f}{a[0]:>10.4f}{100 * (a[0] / c[0] - 1):>7.1f}%"
            f"{c[1]:>9.1f}{a[1]:>9.1f}"
        )
    print("target: gain >= 10%")


if __name__ == "__main__":
    main()
