"""Foundation quality figures: the audit's default model on mnist5k.

Trains ``papernot-mnist`` exactly as ``advlab audit`` does (or reuses the cached copy), then
prints its clean test accuracy on the 1,000 mnist5k test images and its robust accuracy under
untargeted PGD-40 in L-inf at eps = 0.3 (step 0.01, random start), with wall times.

Run:  python bench/foundation_quality.py      Targets: clean >= 96%, robust <= 1%.
"""

from __future__ import annotations

import time

import torch

from advlab import ThreatModel
from advlab.attacks import pgd
from advlab.audit import AuditConfig, prepare_model
from advlab.data import load_dataset
from advlab.defenses import evaluate_accuracy


def main() -> None:
    torch.set_num_threads(2)
    splits = load_dataset("mnist5k")
    t0 = time.perf_counter()
    model, info = prepare_model(AuditConfig(), None)
    t_model = time.perf_counter() - t0
    acc = evaluate_accuracy(model, splits.test)
    x, y = splits.test.x, splits.test.y
    t0 = time.perf_counter()
    robust = []
    for i in range(0, len(y), 250):
        res = pgd(model, x[i : i + 250], y[i : i + 250], ThreatModel("linf", 0.3), steps=40,
                  step_size=0.01, seed=i)  # fmt: skip
        robust.append(res.robust)
    t_attack = time.perf_counter() - t0
    rob = float(torch.cat(robust).float().mean())
    print(f"model: {info['source']} (cached={info.get('cached')}, {t_model:.0f} s to obtain)")
    print(f"clean accuracy, mnist5k test (n={len(y)}): {acc:.2%}   target >= 96%")
    print(
        f"robust accuracy, PGD-40 linf eps=0.3:     {rob:.2%}   target <= 1%   ({t_attack:.0f} s)"
    )


if __name__ == "__main__":
    main()
