"""The defense entries of the reproduction catalog ported from bench/ (madry-capacity,
fast-fgsm, msd): their parameters resolve, their training configurations are valid recipes,
fast-fgsm's cost reference is the madry entry's PGD model, and fast-fgsm runs for real with a
tiny budget, asserting on the direction of its result."""

from __future__ import annotations

from pathlib import Path

import pytest

from advlab.defenses import recipe_params
from advlab.registry import REPRODUCTIONS
from advlab.reproduce import Context, run_reproduction
from advlab.reproduce.defenses import (
    _capacity_recipe,
    _madry_pgd_config,
    _msd_extra_attacks,
    _msd_recipes,
)


def test_capacity_and_msd_train_valid_recipes() -> None:
    cap = REPRODUCTIONS.get("madry-capacity").resolve(quick=False)
    assert cap["scales"] == [1, 2, 4, 8]
    for recipe in ("standard", "fgsm-augment", "pgd"):
        recipe_params(recipe, _capacity_recipe(cap, recipe))  # raises on a bad parameter
    assert _capacity_recipe(cap, "fgsm-augment")["ratio"] == 1.0  # every example replaced
    e = REPRODUCTIONS.get("msd")
    p = e.resolve(quick=False)
    recipes = _msd_recipes(p)
    assert set(recipes) == {"pgd-linf", "pgd-l2", "pgd-l1", "msd"}
    for recipe, params in recipes.values():
        recipe_params(recipe, params)
        assert params["ramp"] == 0.2
    assert recipes["pgd-l1"][1] == {"eps": 10.0, "norm": "l1", "steps": 10, "step_size": 2.0,
                                    "ramp": 0.2}  # fmt: skip
    attacks = {(norm, name) for norm, name, _ in _msd_extra_attacks(p)}
    assert {("l2", "hopskipjump"), ("linf", "hopskipjump"), ("linf", "square"),
            ("l2", "square"), ("l2", "cw-l2"), ("l2", "deepfool")} == attacks  # fmt: skip
    assert _msd_extra_attacks(p)[0][2] == {}  # C&W's own defaults in the full run
    quick = _msd_extra_attacks(e.resolve(quick=True))
    assert quick[0][2] == {"binary_search_steps": 4, "steps": 100}


@pytest.mark.parametrize("quick", [False, True])
def test_fast_fgsm_times_the_madry_entrys_pgd_model(quick: bool, tmp_path: Path) -> None:
    def config(name: str) -> object:
        e = REPRODUCTIONS.get(name)
        ctx = Context(e, e.resolve(quick=quick), quick=quick, out=tmp_path / name)
        return _madry_pgd_config(ctx)

    assert config("fast-fgsm") == config("madry")


def test_fast_fgsm_tiny_run_is_cheaper_than_pgd_and_robust(tmp_path: Path) -> None:
    tiny = {"epochs": 2, "eps": 0.1, "fgsm_step": 0.125, "train_steps": 7,
            "train_step_size": 0.025, "n": 60, "steps": 10, "restarts": 1, "step_size": 0.025,
            "timing_samples": 300, "timing_repeats": 1}  # fmt: skip
    run = run_reproduction("fast-fgsm", quick=True, overrides=tiny, out=tmp_path)
    assert {"fast.safetensors", "pgd.safetensors"} <= {p.name for p in tmp_path.iterdir()}
    data = run.outcome.data
    fast = data["fast"]
    assert fast["clean"] >= 0.8
    assert 0.3 <= fast["worst"] <= fast["clean"]  # robust to a small eps, never above clean
    assert data["timing"]["ratio"] > 1.5  # PGD-7 training costs several FGSM steps
    assert data["training_seconds"]["pgd"] > data["training_seconds"]["fast"]
    figures = {f.label: f for f in run.outcome.figures}
    ratio = next(f for label, f in figures.items() if "same process" in label)
    assert ratio.passed is True and ratio.measured == pytest.approx(data["timing"]["ratio"])
