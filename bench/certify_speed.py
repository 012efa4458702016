"""Speed of advlab's bounds: CROWN on the 784-100-100-10 MNIST MLP for 500 images at L-inf
eps = 0.02 (the issue's target: under one second on 2 CPU cores), and IBP, CROWN-IBP and
alpha-CROWN beside it.

Each method runs `--repeats` times on the same batch; the best time is reported, with its
ratio to one forward pass of the model on the same batch in the same process (a reference that
scales with the machine, which is shared and noisy here).

    python bench/certify_speed.py                 # 2 threads
    python bench/certify_speed.py --threads 1
"""

from __future__ import annotations

import time

import torch

import _repro
from advlab.certify import margin_bounds
from advlab.defenses import TrainConfig
from advlab.threat import ThreatModel


def best_time(fn: object, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        tick = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append(time.perf_counter() - tick)
    return min(times)


def main() -> None:
    p = _repro.options(__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    r = _repro.context("certify", args)
    cfg = TrainConfig(epochs=2 if r.quick else 5, batch_size=128, lr=1e-3, val_size=1000)
    model, _ = r.model("mlp", "mlp", cfg)
    n = args.n or 500
    x, y = r.test_set(n)
    threat = ThreatModel("linf", 0.02)
    with torch.no_grad():
        forward = best_time(lambda: model(x), args.repeats * 4)
    print(
        f"bounds on mlp (784-100-100-10), {n} images, {threat.norm} eps={threat.eps}, "
        f"{torch.get_num_threads()} thread(s); forward pass {1000 * forward:.2f} ms"
    )
    print(f"{'method':14}{'seconds':>10}{'x forward':>11}{'certified':>11}")
    for method in ("ibp", "crown-ibp", "crown", "alpha-crown"):
        reps = 1 if method == "alpha-crown" else args.repeats
        ctx = torch.enable_grad if method == "alpha-crown" else torch.no_grad
        out: dict[str, torch.Tensor] = {}

        def run(method: str = method, ctx: object = ctx, out: dict = out) -> None:
            with ctx():  # type: ignore[operator]
                out["m"] = margin_bounds(model, x, y, threat, method=method).detach()

        secs = best_time(run, reps)
        cert = float((out["m"] > 0).all(dim=1).float().mean())
        print(f"{method:14}{secs:>10.3f}{secs / forward:>11.0f}{100 * cert:>10.1f}%")
    print("target: crown under 1 s")


if __name__ == "__main__":
    main()
