"""Soundness properties checked for every registered attack and every norm it supports.

The cases are built from the registry, so a newly registered attack is tested for free.
"""

from __future__ import annotations

import inspect
import math

import pytest
import torch

import advlab  # noqa: F401  (registers the built-in attacks)
from advlab import ATTACKS, ThreatModel
from advlab.attacks import get_attack, select_targets
from advlab.errors import ConfigError, InputError

from .conftest import make_cnn

#: Small budgets so the suite stays fast; every other parameter keeps its default.
FAST: dict[str, dict] = {
    "pgd": {"steps": 5},
    "bim": {"steps": 5},
    "cw-l2": {"steps": 30, "binary_search_steps": 2, "lr": 0.1},
    "cw-linf": {"steps": 30, "max_rounds": 3},
    "cw-l0": {"steps": 30, "max_rounds": 3},
    "deepfool": {"steps": 10},
    "jsma": {"gamma": 0.05},
    "lbfgs": {"max_iter": 10, "c_steps": 2},
    "zoo": {"steps": 20, "binary_search_steps": 2, "coordinates": 32, "lr": 0.1},
    "autozoom": {"steps": 60, "switch_every": 20, "lr": 0.1},
    "square": {"n_queries": 40},
    "hopskipjump": {"max_queries": 400, "num_iterations": 3, "init_num_evals": 20},
}
BOUNDED_EPS = {"linf": 0.1, "l2": 1.0, "l1": 5.0, "l0": 20.0}


def cases() -> list[tuple[str, str]]:
    return [(name, norm) for name in ATTACKS.names() for norm in get_attack(name).norms]


def accepts(name: str, param: str) -> bool:
    return param in inspect.signature(get_attack(name).fn).parameters and (
        param != "target" or get_attack(name).targeted
    )


def params_for(name: str) -> dict:
    return {k: v for k, v in FAST.get(name, {}).items() if accepts(name, k)}


def threat_for(name: str, norm: str) -> ThreatModel:
    return ThreatModel(norm, math.inf if get_attack(name).minimal else BOUNDED_EPS[norm])


def run(name: str, model, x, y, threat, seed: int = 0, **kw):
    return get_attack(name)(model, x, y, threat, seed=seed, **params_for(name), **kw)


@pytest.fixture(scope="module")
def setup() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    model = make_cnn(seed=4)
    g = torch.Generator().manual_seed(7)
    x = torch.rand(6, 1, 28, 28, generator=g)
    x[0] = (x[0] > 0.5).float()  # a sample made of pixels exactly on the box edges
    y = model(x).argmax(dim=1)
    return model, x, y


def test_registry_has_the_foundation_attacks() -> None:
    assert {"fgsm", "pgd"} <= set(ATTACKS.names())


@pytest.mark.parametrize(("name", "norm"), cases())
def test_output_in_ball_and_box_and_success_reverified(name: str, norm: str, setup) -> None:
    model, x, y = setup
    threat = threat_for(name, norm)
    res = run(name, model, x, y, threat)
    assert res.x_adv.shape == x.shape and res.x_adv.dtype == x.dtype
    assert threat.contains(res.x_adv, x).all()
    assert float(res.x_adv.min()) >= 0.0 and float(res.x_adv.max()) <= 1.0
    with torch.no_grad():
        pred = model(res.x_adv).argmax(dim=1)
    assert torch.equal(res.success, pred != y)
    assert torch.equal(res.pred, pred)
    assert torch.allclose(res.norms, threat.norms(res.x_adv - x))
    assert (res.queries >= 0).all() and res.queries.dtype == torch.long
    assert res.attack == name and len(res) == x.shape[0]


@pytest.mark.parametrize(("name", "norm"), cases())
def test_bounded_threat_is_respected(name: str, norm: str, setup) -> None:
    """Every attack, minimal ones too, stays inside a finite ball when given one."""
    model, x, y = setup
    threat = ThreatModel(norm, BOUNDED_EPS[norm] / 4)
    res = run(name, model, x, y, threat)
    assert threat.contains(res.x_adv, x).all()


@pytest.mark.parametrize(("name", "norm"), cases())
def test_eps_zero_returns_input(name: str, norm: str, setup) -> None:
    model, x, y = setup
    res = run(name, model, x, y, ThreatModel(norm, 0.0))
    assert torch.equal(res.x_adv, x)
    assert not res.success.any()  # y is the clean prediction


@pytest.mark.parametrize(("name", "norm"), cases())
def test_seeded_and_pure(name: str, norm: str, setup) -> None:
    model, x, y = setup
    x_before, y_before = x.clone(), y.clone()
    model.train()  # a mode the attack must leave alone (the model has no dropout/batchnorm)
    try:
        a = run(name, model, x, y, threat_for(name, norm), seed=11)
        assert model.training
    finally:
        model.eval()
    b = run(name, model, x, y, threat_for(name, norm), seed=11)
    assert not model.training
    assert torch.equal(a.x_adv, b.x_adv)
    assert torch.equal(a.success, b.success)
    assert torch.equal(x, x_before) and torch.equal(y, y_before)


@pytest.mark.parametrize(("name", "norm"), cases())
def test_targeted_success_means_target(name: str, norm: str, setup) -> None:
    model, x, y = setup
    if not accepts(name, "target") or name == "deepfool":
        pytest.skip(f"{name} is untargeted by design")
    t = select_targets(model, x, y, "random", seed=2)
    res = run(name, model, x, y, threat_for(name, norm), target=t)
    with torch.no_grad():
        pred = model(res.x_adv).argmax(dim=1)
    assert torch.equal(res.success, pred == t)
    assert res.targeted and torch.equal(res.target, t)


@pytest.mark.parametrize("name", ATTACKS.names())
def test_bad_inputs_rejected(name: str, setup) -> None:
    model, x, y = setup
    threat = threat_for(name, get_attack(name).norms[0])
    bad = x.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(InputError, match="NaN"):
        run(name, model, bad, y, threat)
    with pytest.raises(InputError, match="outside"):
        run(name, model, x * 255, y, threat)
    with pytest.raises(InputError, match="one entry per sample"):
        run(name, model, x, y[:2], threat)
    if accepts(name, "target") and name != "deepfool":
        with pytest.raises(InputError, match="true label"):
            run(name, model, x, y, threat, target=y.clone())


def test_wrong_norm_rejected(setup) -> None:
    model, x, y = setup
    with pytest.raises(ConfigError, match="supports norms"):
        get_attack("fgsm")(model, x, y, ThreatModel("l0", 3))


def test_model_output_checked(setup) -> None:
    from advlab.errors import ModelOutputError

    _, x, y = setup

    class NaNModel(torch.nn.Module):
        def forward(self, z: torch.Tensor) -> torch.Tensor:
            return torch.full((z.shape[0], 10), float("nan")) + 0 * z.flatten(1)[:, :10]

    class OneLogit(torch.nn.Module):
        def forward(self, z: torch.Tensor) -> torch.Tensor:
            return z.flatten(1)[:, :1]

    with pytest.raises(ModelOutputError, match="NaN"):
        get_attack("pgd")(NaNModel(), x, y, ThreatModel("linf", 0.1), steps=2)
    with pytest.raises(ModelOutputError, match="classes"):
        get_attack("fgsm")(OneLogit(), x, y, ThreatModel("linf", 0.1))


def test_pgd_bad_parameters(setup) -> None:
    model, x, y = setup
    tm = ThreatModel("linf", 0.1)
    with pytest.raises(ConfigError, match="steps"):
        get_attack("pgd")(model, x, y, tm, steps=0)
    with pytest.raises(ConfigError, match="step_size"):
        get_attack("pgd")(model, x, y, tm, step_size=-1.0)
    with pytest.raises(ConfigError, match="loss"):
        get_attack("pgd")(model, x, y, tm, loss="hinge")


@pytest.mark.parametrize(("name", "norm"), [(n, m) for n, m in cases() if get_attack(n).minimal])
def test_minimal_attacks_succeed_decisively_in_any_batch(name: str, norm: str) -> None:
    """A minimal attack's answer sits next to the decision boundary; its success must not depend
    on float round-off: the same answer one by one, in the batch, and shuffled among others."""
    from advlab.attacks.base import margin

    model = make_cnn(seed=4)
    g = torch.Generator().manual_seed(9)
    x = torch.rand(12, 1, 28, 28, generator=g)
    with torch.no_grad():
        y = model(x).argmax(dim=1)
    res = run(name, model, x, y, ThreatModel(norm, math.inf))
    assert res.success.any()
    with torch.no_grad():
        batch = model(res.x_adv)
        alone = torch.cat([model(res.x_adv[i : i + 1]) for i in range(len(x))])
        perm = torch.randperm(len(x), generator=g)
        mixed = torch.cat([res.x_adv, x])[torch.cat([perm, perm + len(x)])]
        shuffled = model(mixed)[: len(x)][perm.argsort()]
    for logits in (batch, alone, shuffled):
        assert torch.equal(logits.argmax(1) != y, res.success)
    # the documented rule: a margin of at least 1e-3 of the two logits compared (or of 1)
    own = alone.gather(1, y[:, None]).squeeze(1).abs()
    other = alone.scatter(1, y[:, None], float("-inf")).amax(1).abs()
    scale = torch.maximum(torch.maximum(own, other), torch.ones_like(own))
    m = margin(alone, y)[res.success]
    assert (m >= 0.5e-3 * scale[res.success]).all(), m
