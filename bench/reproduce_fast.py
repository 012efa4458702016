"""Reproduce Wong, Rice & Kolter 2020 on MNIST: fast adversarial training (FGSM from a random
start, step 1.25 eps) at L-inf eps = 0.3, beside PGD training's cost.

Paper (`wong-mnist`, 10 epochs): 98.5% clean, 88.77% against PGD-50 with 10 restarts; the point
of the paper is the training time, a fraction of PGD training's. Target: PGD-50x10 >= 85%.

Budget: as the paper (`wong-mnist`, 10 epochs of Adam with the cyclic learning rate, peak
5e-3, batches of 100, step 0.375) except that eps grows from 0 over the first 20% of training,
as in reproduce_madry.py; the guard checks PGD-20 accuracy on 1,000 held-out training
images after each epoch and rolls back on a collapse. The PGD-training reference is
reproduce_madry.py's model (PGD-40, same epochs, schedule and batches), trained here if it is
missing. Times: the two full runs' training times (validation excluded), which depend on what
else ran on the machine meanwhile, and a same-process measurement: one epoch of each recipe on
the same 2,000 images, interleaved, median of 3.

    python bench/reproduce_fast.py --quick
    python bench/reproduce_fast.py --threads 1
"""

from __future__ import annotations

import _repro
from _repro import Repro, robust_accuracy
from advlab.defenses import TrainConfig
from advlab.threat import ThreatModel
from reproduce_madry import EPS, RAMP, pgd_model


def step_time_ratio(r: Repro, pgd_recipe: dict, fast_cfg: TrainConfig, samples: int = 2000,
                    repeats: int = 3) -> dict:  # fmt: skip
    """Training time of one epoch of each recipe on the same images, in this process,
    interleaved (the two full runs above may have shared the machine with other jobs, so their
    wall-time ratio depends on the load; this one does not)."""
    import statistics
    import time

    from advlab.data.base import Dataset
    from advlab.defenses import train
    from advlab.models import build_model

    tr = r.splits.train
    data = Dataset("timing", tr.x[:samples], tr.y[:samples], tr.num_classes)
    base = {"epochs": 1, "batch_size": 100, "lr": 5e-3, "optimizer": "adam",
            "scheduler": "cyclic", "seed": 0}  # fmt: skip
    cfgs = {
        "pgd": TrainConfig(**base, recipe="pgd", recipe_params=pgd_recipe["recipe_params"]),
        "fast": TrainConfig(**base, recipe="fast",
                            recipe_params={**fast_cfg.recipe_params, "guard_drop": 1.0}),
    }  # fmt: skip
    times: dict[str, list[float]] = {"pgd": [], "fast": []}
    for _ in range(repeats):
        for name, c in cfgs.items():
            model = build_model("wong-mnist", seed=0).to(r.device)
            tick = time.perf_counter()
            train(model, data, c, device=r.device)
            times[name].append(time.perf_counter() - tick)
    pgd_t, fast_t = statistics.median(times["pgd"]), statistics.median(times["fast"])
    return {"samples": samples, "repeats": repeats, "pgd": pgd_t, "fast": fast_t,
            "ratio": pgd_t / fast_t}  # fmt: skip


def main() -> None:
    opts = _repro.options(__doc__.splitlines()[0])
    opts.add_argument("--no-ramp", action="store_true",
                      help="the paper's schedule exactly: full eps from the first step")  # fmt: skip
    args = opts.parse_args()
    ramp = 0.0 if args.no_ramp else RAMP
    key = "fast-noramp" if args.no_ramp else "fast"
    r = Repro("advtrain", args)
    cfg = TrainConfig(
        epochs=10, batch_size=100, lr=5e-3, optimizer="adam", scheduler="cyclic", seed=0,
        recipe="fast", recipe_params={"eps": EPS, "step_size": 1.25 * EPS, "ramp": ramp},
        val_size=200 if r.quick else 1000, val_steps=10 if r.quick else 20,
    )  # fmt: skip
    fast, fast_meta = r.model(key, "wong-mnist", cfg)
    _, pgd_meta = pgd_model(r)
    n = r.args.n or (200 if r.quick else 1000)
    x, y = r.test_set(n)
    steps, restarts, step = (20, 2, 0.03) if r.quick else (50, 10, 0.01)
    sig = {"weights": fast_meta["weights_sha256"], "n": n, "steps": steps, "restarts": restarts,
           "step_size": step, "eps": EPS, "losses": ["ce", "margin"]}  # fmt: skip
    res = r.cached(
        f"{key}-eval",
        lambda: robust_accuracy(
            fast, x, y, ThreatModel("linf", EPS), steps=steps, restarts=restarts, step_size=step
        ),
        sig,
    )
    t_fast, t_pgd = _repro.training_seconds(fast_meta), _repro.training_seconds(pgd_meta)
    same_process = step_time_ratio(r, pgd_meta["recipe"], cfg)
    stopped = fast_meta["extra"]["training"].get("stopped")
    print(f"Fast FGSM training, wong-mnist, {r.data}, eps={EPS}, eps ramp {ramp:g}")
    _repro.print_robust_table(res, "98.5%", "88.77%", "", ">= 85%")
    print(
        f"training time: fast {t_fast:.0f} s, PGD-{pgd_meta['recipe']['recipe_params']['steps']}"
        f" {t_pgd:.0f} s: ratio {t_fast / t_pgd:.3f} (PGD / fast = {t_pgd / t_fast:.1f}x)"
    )
    print(f"same-process timing (one epoch on {same_process['samples']} images, interleaved, "
          f"median of {same_process['repeats']}): PGD {same_process['pgd']:.2f} s, fast "
          f"{same_process['fast']:.2f} s: PGD / fast = {same_process['ratio']:.1f}x")  # fmt: skip
    if stopped:
        print(f"guard: {stopped}")
    print(f"target met: {res['worst'] >= 0.85}" + ("  (--quick: not the target)"
                                                   if r.quick else ""))  # fmt: skip


if __name__ == "__main__":
    main()
