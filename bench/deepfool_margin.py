"""DeepFool L2 against foolbox's, digit by digit, and the logit margin each answer keeps.

advlab's minimal attacks accept a point only with a logit margin above a noise floor
(``advlab.attacks.base.decisive``), so their answers are adversarial in any batch. This script
shows what that costs against foolbox's DeepFool, whose answers stop as soon as the label flips:
the median L2 ratio, on how many digits advlab is larger, and the margins of both, with the floor
on and (for comparison only) off.

Run:  python bench/deepfool_margin.py --model bench/out/mlp-mnist-full.safetensors
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch

import advlab.attacks.base as base
from _common import first_correct, load_frozen
from advlab import ThreatModel
from advlab.attacks import deepfool
from advlab.data import load_dataset

REPO = Path(__file__).resolve().parent.parent


def margins(model: torch.nn.Module, x_adv: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():  # one digit at a time: no batch effects
        return base.margin(torch.cat([model(x_adv[i : i + 1]) for i in range(len(x_adv))]), y)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=REPO / "bench/out/mlp-mnist-full.safetensors")
    ap.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--n", type=int, default=500)
    a = ap.parse_args()
    torch.set_num_threads(1)
    import foolbox as fb

    model = load_frozen(a.model)
    x, y, _ = first_correct(model, load_dataset("mnist", data_dir=a.data_dir).test, a.n)
    attack = fb.attacks.L2DeepFoolAttack(steps=50, candidates=10, overshoot=0.02)
    _, adv, ok = attack(fb.PyTorchModel(model, bounds=(0, 1)), x, y, epsilons=None)
    nf, mf = (adv - x).flatten(1).norm(dim=1), margins(model, adv, y)
    print(f"{a.model.name}: {len(x)} digits")
    print(f"  foolbox: median margin {float(mf.median()):.4g}; margins < 1e-4: "
          f"{int((mf < 1e-4).sum())}, < 1e-3: {int((mf < 1e-3).sum())}")  # fmt: skip
    saved = base.MARGIN_RTOL
    try:
        for rtol in (saved, 0.0):
            base.MARGIN_RTOL = rtol
            res = deepfool(model, x, y, ThreatModel("l2", math.inf), steps=50, overshoot=0.02)
            both = res.success & ok
            ma = margins(model, res.x_adv, y)
            ratio = float(res.norms[both].median() / nf[both].median())
            larger = int((res.norms[both] > nf[both] * (1 + 1e-6)).sum())
            label = "advlab" if rtol == saved else "advlab, floor off"
            print(f"  {label}: median L2 {ratio:.5f}x foolbox's, larger on {larger} of "
                  f"{int(both.sum())}; median margin {float(ma.median()):.4g}, margins < 1e-4: "
                  f"{int((ma < 1e-4).sum())}")  # fmt: skip
    finally:
        base.MARGIN_RTOL = saved


if __name__ == "__main__":
    main()
