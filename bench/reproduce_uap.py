"""Universal adversarial perturbations (Moosavi-Dezfooli et al. 2017) on MNIST.

One L-inf perturbation per radius (0.2 and 0.3) for the zoo CNN trained on full MNIST
(bench/out/papernot-mnist-full.safetensors), computed by Algorithm 1 (DeepFool inner step in
L-inf, overshoot 0.02, at most --passes passes, stop at 80% fooling) from the first --train
training images, and evaluated on the first --n test images, which it never saw. Fooling: the
prediction on clip(x + v) differs from the prediction on x. For scale, the fooling rate of
uniform random sign noise of the same radius is printed beside it, and the same perturbation is
sent to two other models (transfer across architectures, the paper's Table 2 in spirit).

The paper reports (ImageNet, L-inf xi = 10/255) 78-93% fooling on held-out images; MNIST has no
published figure to match, so this bench measures and reports.

    python bench/reproduce_uap.py --threads 1
"""

from __future__ import annotations

import time

import torch

from advlab.threat import ThreatModel
from advlab.transfer import fooling_rate, universal_perturbation
from reproduce_substitute import frozen, log, options, pct, save, setup


def main() -> None:
    p = options(__doc__, 1000)
    p.add_argument("--train", type=int, default=1000, help="images the perturbation is built on")
    p.add_argument("--passes", type=int, default=5)
    p.add_argument("--batch", type=int, default=1,
                   help="DeepFool batch (1: the paper's sequential algorithm)")  # fmt: skip
    p.add_argument("--eps", default="0.2,0.3")
    args = p.parse_args()
    splits, dev = setup(args)
    model = frozen("papernot-mnist-full.safetensors", dev)
    others = {"mlp": frozen("mlp-mnist-full.safetensors", dev),
              "wong": frozen("wong-mnist-full.safetensors", dev)}  # fmt: skip
    train_set = splits.train if splits.train is not None else splits.test
    xt = train_set.x[: (200 if args.quick else args.train)].to(dev)
    xe = splits.test.x[: args.n].to(dev)
    rows = {}
    for eps in (float(e) for e in args.eps.split(",")):
        threat = ThreatModel("linf", eps)
        tick = time.perf_counter()
        uap = universal_perturbation(model, xt, threat, target_rate=0.8,
                                     max_passes=2 if args.quick else args.passes,
                                     batch_size=args.batch, seed=args.seed,
                                     progress=lambda e: log(e["message"]))  # fmt: skip
        seconds = time.perf_counter() - tick
        g = torch.Generator().manual_seed(args.seed)
        noise = (torch.randint(0, 2, xe.shape[1:], generator=g).float() * 2 - 1) * eps
        rows[str(eps)] = {
            "train_fooling": uap.fooling_rate,
            "heldout_fooling": fooling_rate(model, xe, uap.delta),
            "random_sign_fooling": fooling_rate(model, xe, noise[None].to(dev)),
            "transfer": {k: fooling_rate(m, xe, uap.delta) for k, m in others.items()},
            "passes": len(uap.history), "queries": uap.queries, "seconds": seconds,
            "history": uap.history, "linf": float(uap.delta.abs().max()),
        }  # fmt: skip
    print(f"Universal perturbations: papernot-mnist, built on {len(xt)} training images, "
          f"fooling rate on {len(xe)} held-out test images")  # fmt: skip
    print(f"{'L-inf eps':>10}{'train':>9}{'held-out':>10}{'random':>9}{'-> mlp':>9}"
          f"{'-> wong':>9}{'passes':>8}{'time':>8}")  # fmt: skip
    for eps, r in rows.items():
        print(f"{eps:>10}{pct(r['train_fooling']):>9}{pct(r['heldout_fooling']):>10}"
              f"{pct(r['random_sign_fooling']):>9}{pct(r['transfer']['mlp']):>9}"
              f"{pct(r['transfer']['wong']):>9}{r['passes']:>8}{r['seconds']:>7.0f}s")  # fmt: skip
    print(f"({args.threads} thread(s), {dev}, DeepFool batch {args.batch})")
    print(save(f"uap{'-quick' if args.quick else ''}.json", {
        "n_train": len(xt), "n_heldout": len(xe), "batch": args.batch, "rows": rows,
        "threads": args.threads, "device": str(dev)}))  # fmt: skip


if __name__ == "__main__":
    main()
