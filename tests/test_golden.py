"""Golden tensors: a few attacks on a fixed tiny model, compared with stored outputs.

A change in any attack's arithmetic shows up here as a diff, even when every property test
still passes. After an intended change, regenerate the file and commit it with the change that
explains it::

    ADVLAB_REGEN_GOLDEN=1 python -m pytest tests/test_golden.py

The model (:class:`RowwiseMLP`) uses no batched matrix products, so its outputs do not depend on
the BLAS library or the batch size; outputs are compared to 1e-5 and counts exactly.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from advlab import ThreatModel
from advlab.attacks import get_attack

from .conftest import RowwiseMLP

GOLDEN = Path(__file__).parent / "data" / "golden" / "attacks.safetensors"
REGEN = os.environ.get("ADVLAB_REGEN_GOLDEN") == "1"

CASES: dict[str, tuple[str, ThreatModel, dict]] = {
    "pgd-linf": ("pgd", ThreatModel("linf", 0.05), {"steps": 6, "restarts": 2}),
    "pgd-l1": ("pgd", ThreatModel("l1", 6.0), {"steps": 5}),
    "fgsm-l2": ("fgsm", ThreatModel("l2", 0.8), {}),
    "cw-l2": ("cw-l2", ThreatModel("l2", math.inf), {"binary_search_steps": 3, "steps": 25}),
    "cw-linf": ("cw-linf", ThreatModel("linf", math.inf), {"steps": 20, "max_rounds": 3}),
    "deepfool-l2": ("deepfool", ThreatModel("l2", math.inf), {"steps": 10}),
    "jsma": ("jsma", ThreatModel("l0", math.inf), {"gamma": 0.03}),
}


def _inputs() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    model = RowwiseMLP(7)
    x = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(11))
    with torch.no_grad():
        y = model(x).argmax(dim=1)
    return model, x, y


def _outputs() -> dict[str, torch.Tensor]:
    model, x, y = _inputs()
    out = {}
    for key, (name, threat, params) in CASES.items():
        res = get_attack(name)(model, x, y, threat, seed=5, **params)
        out[f"{key}.x_adv"] = res.x_adv.contiguous()
        out[f"{key}.success"] = res.success.to(torch.int8)
        out[f"{key}.queries"] = res.queries
    return out


def test_attacks_match_their_golden_outputs() -> None:
    got = _outputs()
    if REGEN or not GOLDEN.exists():
        if not REGEN:
            pytest.fail(f"{GOLDEN} is missing; create it with ADVLAB_REGEN_GOLDEN=1")
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        save_file(got, str(GOLDEN))
        pytest.skip("golden tensors regenerated")
    want = load_file(str(GOLDEN))
    assert sorted(got) == sorted(want), "cases changed: regenerate the golden file"
    for k in sorted(want):
        if k.endswith(".x_adv"):
            torch.testing.assert_close(got[k], want[k], rtol=0, atol=1e-5, msg=k)
        else:
            assert torch.equal(got[k], want[k]), (k, got[k], want[k])
