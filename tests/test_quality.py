"""Quality of the main job's default model (slow: trains papernot-mnist on mnist5k, ~2 min)."""

from __future__ import annotations

import pytest
import torch

from advlab import ThreatModel
from advlab.attacks import pgd
from advlab.audit import AuditConfig, prepare_model
from advlab.data import load_dataset
from advlab.defenses import evaluate_accuracy


@pytest.mark.slow
def test_default_model_accuracy_and_pgd40() -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        splits = load_dataset("mnist5k")
        model, _ = prepare_model(AuditConfig(), None)
        assert evaluate_accuracy(model, splits.test) >= 0.96
        x, y = splits.test.x, splits.test.y
        robust = torch.cat([
            pgd(model, x[i : i + 500], y[i : i + 500], ThreatModel("linf", 0.3), steps=40,
                step_size=0.01, seed=i).robust
            for i in range(0, len(y), 500)
        ])  # fmt: skip
        assert float(robust.float().mean()) <= 0.01
    finally:
        torch.set_num_threads(threads)
