"""Reproduce Madry et al. 2018 Figure 4 (MNIST): the effect of network capacity on natural,
FGSM-trained and PGD-trained networks at L-inf eps = 0.3.

`madry-mnist` at capacity scale 1, 2, 4, 8 (the paper's scale 16 is the full network, so widths
1/16 .. 8/16 of it: 2/4 to 16/32 conv filters, 64 to 512 hidden units), each trained with
`standard`, `fgsm-augment` (every example replaced by its FGSM point: ratio 1) and `pgd`. For
each model: accuracy on natural, FGSM and PGD examples (PGD: worst case of cross-entropy and
margin). Paper: capacity alone helps little; FGSM training overfits to FGSM (high FGSM,
near-zero PGD accuracy) at small capacity; PGD training needs capacity, and its PGD accuracy
rises with it (to about 89% at scale 16).

Budget: the issue allows `--quick` on mnist5k for this one: 10 epochs of Adam (1e-3, cosine,
batch 64), PGD-7 training (step 0.1) with eps ramped over the first 30% of training,
evaluation with FGSM and PGD-20 on 200 test images. The full mode trains on full MNIST with the
same settings (about 3 hours on one core). A plot goes to capacity.png.

    python bench/reproduce_capacity.py --quick
"""

from __future__ import annotations

import _repro
from _repro import Repro, correct, pct, robust_accuracy
from advlab.attacks import fgsm
from advlab.defenses import TrainConfig
from advlab.threat import ThreatModel

EPS = 0.3
SCALES = (1, 2, 4, 8)
RECIPES = {
    "standard": {},
    "fgsm-augment": {"eps": EPS, "ratio": 1.0, "ramp": 0.3},
    "pgd": {"eps": EPS, "steps": 7, "step_size": 0.1, "ramp": 0.3},
}


def main() -> None:
    args = _repro.options(__doc__.splitlines()[0]).parse_args()
    r = Repro("capacity", args)
    x, y = r.test_set(args.n or 200)
    threat = ThreatModel("linf", EPS)
    table: dict[str, dict[int, dict]] = {k: {} for k in RECIPES}
    for recipe, params in RECIPES.items():
        for scale in SCALES:
            cfg = TrainConfig(epochs=10, batch_size=64, lr=1e-3, scheduler="cosine", seed=0,
                              recipe=recipe, recipe_params=params)  # fmt: skip
            key = f"{recipe}-x{scale}"
            model, meta = r.model(key, "madry-mnist", cfg, arch_kwargs={"width": scale / 16})

            def run(model=model) -> dict:
                pgd = robust_accuracy(model, x, y, threat, steps=20, restarts=1, step_size=0.03)
                fg = fgsm(model, x, y, threat)
                return {"natural": float(correct(model, x, y).float().mean()),
                        "fgsm": float((~fg.success & (fg.pred == y)).float().mean()),
                        "pgd": pgd["worst"], "masking": pgd["masking"]}  # fmt: skip

            sig = {"weights": meta["weights_sha256"], "n": len(x), "pgd": [20, 1, 0.03]}
            table[recipe][scale] = r.cached(key, run, sig)
    print(f"Capacity (Madry et al. Fig. 4), madry-mnist, {r.data}, eps={EPS}, {len(x)} images")
    print(f"{'training':>14}{'scale':>7}{'natural':>9}{'FGSM':>8}{'PGD':>8}")
    for recipe, rows in table.items():
        for scale, row in rows.items():
            flag = "  (CE/margin disagree: masking)" if row["masking"] else ""
            print(f"{recipe:>14}{scale:>7}{pct(row['natural']):>9}{pct(row['fgsm']):>8}"
                  f"{pct(row['pgd']):>8}{flag}")  # fmt: skip
    pgd_rises = table["pgd"][SCALES[-1]]["pgd"] >= table["pgd"][SCALES[0]]["pgd"]
    print(f"  [{'ok' if pgd_rises else 'MISSED'}] PGD training's PGD accuracy rises with capacity")
    _plot(r, table)
    r.save("summary.json", {k: {str(s): v for s, v in rows.items()} for k, rows in table.items()})


def _plot(r: Repro, table: dict[str, dict[int, dict]]) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 3.2), layout="constrained")
    FigureCanvasAgg(fig)
    for i, (recipe, rows) in enumerate(table.items()):
        ax = fig.add_subplot(1, 3, i + 1)
        for metric in ("natural", "fgsm", "pgd"):
            ax.plot(list(rows), [100 * rows[s][metric] for s in rows], marker="o", label=metric)
        ax.set_xscale("log", base=2)
        ax.set_title(f"{recipe} training")
        ax.set_xlabel("capacity scale")
        ax.set_ylabel("accuracy (%)")
        ax.set_ylim(0, 101)
        ax.grid(True, alpha=0.3)
    fig.axes[0].legend(frameon=False)
    fig.savefig(r.out / "capacity.png", dpi=110)


if __name__ == "__main__":
    main()
