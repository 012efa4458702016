"""PGD loop overhead: time(PGD-k) / (k * time(one forward+backward)) on the same batch.

The reference pass is what one PGD step must do at minimum: a forward pass and the gradient of
the loss with respect to the input (torch.autograd.grad, no parameter gradients). PGD runs with
``early_stop=False`` so every sample stays in the batch for all k steps (with early stopping the
ratio would drop below 1 on weak models and say nothing about the loop). Timings alternate
between the two in one process and the medians are compared, so machine noise largely cancels.

Run:  python bench/pgd_overhead.py [--steps 40] [--batch 256] [--reps 5] [--model papernot-mnist]
Target (foundation issue): ratio <= 1.15.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from advlab import ThreatModel
from advlab.attacks import pgd
from advlab.models import build_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--model", default="papernot-mnist")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_model(args.model).eval()
    x = torch.rand(args.batch, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 10, (args.batch,), generator=torch.Generator().manual_seed(1))
    threat = ThreatModel("linf", 0.3)

    def fwd_bwd() -> None:
        xr = x.clone().requires_grad_(True)
        loss = F.cross_entropy(model(xr), y, reduction="sum")
        torch.autograd.grad(loss, xr)

    def fwd_bwd_params() -> None:
        model.zero_grad(set_to_none=True)
        xr = x.clone().requires_grad_(True)
        F.cross_entropy(model(xr), y, reduction="sum").backward()

    def attack() -> None:
        pgd(model, x, y, threat, steps=args.steps, step_size=0.01, early_stop=False,
            seed=0)  # fmt: skip

    for fn in (fwd_bwd, fwd_bwd_params, attack):  # warm-up
        fn()
    ref, ref_p, att = [], [], []
    for _ in range(args.reps):
        t0 = time.perf_counter()
        for _ in range(args.steps):
            fwd_bwd()
        ref.append((time.perf_counter() - t0) / args.steps)
        t0 = time.perf_counter()
        for _ in range(args.steps):
            fwd_bwd_params()
        ref_p.append((time.perf_counter() - t0) / args.steps)
        t0 = time.perf_counter()
        attack()
        att.append(time.perf_counter() - t0)
    r, rp, a = statistics.median(ref), statistics.median(ref_p), statistics.median(att)
    print(f"model={args.model} batch={args.batch} steps={args.steps} reps={args.reps} "
          f"threads={torch.get_num_threads()}")  # fmt: skip
    print(f"forward+input-gradient pass     : {r * 1e3:8.2f} ms")
    print(f"forward+full backward (params)  : {rp * 1e3:8.2f} ms")
    print(f"PGD-{args.steps} (early_stop=False)      : {a * 1e3:8.2f} ms")
    print(f"ratio PGD-k / (k * fwd+input-grad) = {a / (args.steps * r):.3f}   (target <= 1.15)")
    print(f"ratio PGD-k / (k * fwd+full-bwd)   = {a / (args.steps * rp):.3f}")


if __name__ == "__main__":
    main()
