"""High-confidence transfer (Carlini & Wagner 2017, Figures 9 and 10): C&W L2 with a growing
confidence kappa transfers better.

Source: the zoo CNN trained on full MNIST (bench/out/papernot-mnist-full.safetensors), attacked
white-box with C&W L2 (advlab's default preset, untargeted) at each kappa. Targets: the 784-100-
100-10 MLP and wong-mnist from bench/out, both trained on full MNIST, judged through label-only
oracles (one query per image). Images: the first --n test images all three classify correctly.
Transfer success: the target misclassifies the example. The mean L2 of the examples is printed
beside it (a higher kappa buys transfer with distortion). Writes a table, the JSON and a plot
(bench/out/kappa_transfer.png).

C&W (their Fig. 9/10, MNIST): transfer success rises with kappa, to nearly 100% for large kappa.

    python bench/reproduce_kappa_transfer.py --threads 1
"""

from __future__ import annotations

import math
import time

import torch

from _common import predict
from advlab.oracle import ModuleOracle
from advlab.threat import ThreatModel
from advlab.transfer import transfer_attack
from reproduce_substitute import OUT, frozen, log, options, pct, save, setup


def main() -> None:
    p = options(__doc__, 100)
    p.add_argument("--kappas", default="0,5,10,20,30,40")
    args = p.parse_args()
    splits, dev = setup(args)
    source = frozen("papernot-mnist-full.safetensors", dev)
    targets = {"mlp": frozen("mlp-mnist-full.safetensors", dev),
               "wong": frozen("wong-mnist-full.safetensors", dev)}  # fmt: skip
    tx, ty = splits.test.x.to(dev), splits.test.y.to(dev)
    ok = predict(source, tx) == ty
    for m in targets.values():
        ok &= predict(m, tx) == ty
    idx = torch.nonzero(ok).squeeze(1)[: args.n]
    x, y = tx[idx], ty[idx]
    kappas = [float(k) for k in args.kappas.split(",")]
    params = {"binary_search_steps": 4, "steps": 100} if args.quick else {}
    threat = ThreatModel("l2", math.inf)
    rows = []
    for kappa in kappas:
        tick = time.perf_counter()
        res = {}
        x_adv = None
        for name, m in targets.items():
            if x_adv is None:  # craft once on the source, then judge on each target
                r = transfer_attack(source, ModuleOracle(m, access="labels"), x, y, threat,
                                    attack="cw-l2", params={"confidence": kappa, **params})  # fmt: skip
                x_adv, src_ok, l2 = r.x_adv, r.extras["source_success"], r.norms
            else:
                from advlab.transfer import verify_on

                r = verify_on(ModuleOracle(m, access="labels"), x, x_adv, y, threat)
            res[name] = r.success_rate
        assert x_adv is not None
        row = {"kappa": kappa, "source_success": float(src_ok.float().mean()),
               "mean_l2": float(l2[src_ok].mean()) if bool(src_ok.any()) else None,
               "transfer": res, "seconds": time.perf_counter() - tick}  # fmt: skip
        rows.append(row)
        log(f"kappa {kappa:g}: {res}, {row['seconds']:.0f} s")
    print(f"C&W L2 transfer vs confidence: papernot-mnist -> mlp / wong, {len(x)} images of "
          f"{'mnist5k' if args.quick else 'mnist'} (untargeted)")  # fmt: skip
    print(f"{'kappa':>6}{'white-box':>11}{'mean L2':>9}{'-> mlp':>9}{'-> wong':>9}{'time':>7}")
    for r in rows:
        l2 = "-" if r["mean_l2"] is None else f"{r['mean_l2']:.2f}"
        print(f"{r['kappa']:>6g}{pct(r['source_success']):>11}{l2:>9}"
              f"{pct(r['transfer']['mlp']):>9}{pct(r['transfer']['wong']):>9}"
              f"{r['seconds']:>6.0f}s")  # fmt: skip
    print(f"({args.threads} thread(s), {dev})")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    for name in targets:
        ax.plot(kappas, [100 * r["transfer"][name] for r in rows], marker="o", label=f"-> {name}")
    ax.set_xlabel("confidence kappa")
    ax.set_ylabel("transfer success (%)")
    ax.set_ylim(0, 100)
    ax.set_title("C&W L2 from papernot-mnist", fontsize=9)
    ax.legend()
    fig.tight_layout()
    suffix = "-quick" if args.quick else ""
    fig.savefig(OUT / f"kappa_transfer{suffix}.png", dpi=120)
    print(save(f"kappa_transfer{suffix}.json", {"n": len(x), "rows": rows, "params": params,
                                               "threads": args.threads, "device": str(dev)}))  # fmt: skip


if __name__ == "__main__":
    main()
