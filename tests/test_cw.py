"""Carlini-Wagner attacks: known answers on a linear model, confidence, targets, solvers, failures."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch import nn

from advlab.attacks import get_attack, select_targets
from advlab.attacks.base import MARGIN_RTOL, margin
from advlab.attacks.cw import cw_l0, cw_l2, cw_linf
from advlab.errors import ConfigError
from advlab.threat import ThreatModel

from .conftest import LinearBinary, make_cnn

INF = math.inf

# Small budgets that still reach the answers below.
FAST: dict[str, dict[str, Any]] = {
    "cw-l2": {"steps": 100, "binary_search_steps": 6},
    "cw-linf": {"steps": 50, "c_init": 0.1, "lr": 0.01},
    "cw-l0": {"steps": 50, "c_max": 1e3, "lr": 0.05},
}
NORM = {"cw-l2": "l2", "cw-linf": "linf", "cw-l0": "l0"}


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """These attacks run thousands of tiny tensor ops; one thread avoids thread wake-up costs."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _linear_batch(model: LinearBinary, n: int = 4, shape: tuple[int, ...] = (1, 8, 8)):
    """Inputs near 0.5 (so the box does not bind), labels = the model's predictions, and f."""
    g = torch.Generator().manual_seed(0)
    x = 0.5 + 0.02 * torch.randn(n, *shape, generator=g)
    with torch.no_grad():
        f = model(x)[:, 1]
    return x, (f > 0).long(), f


def _binary_images(model: nn.Module, n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    x = (torch.rand(n, 1, 28, 28, generator=g) > 0.5).float()
    with torch.no_grad():
        y = model(x).argmax(dim=1)
    return x, y


def test_registered_as_minimal_attacks() -> None:
    for name, norm in NORM.items():
        spec = get_attack(name)
        assert spec.norms == (norm,)
        assert spec.minimal


def test_cw_l2_finds_closed_form_minimum_on_linear_model(linear_binary: LinearBinary) -> None:
    x, y, f = _linear_batch(linear_binary)
    res = cw_l2(linear_binary, x, y, ThreatModel("l2", INF))
    # the closest point with a margin of at least the noise floor (1e-3 here: logits are small)
    exact = (f.abs() + MARGIN_RTOL) / linear_binary.w.detach().norm()
    assert res.success.all()
    ratio = res.norms / exact
    assert (ratio >= 1 - 1e-4).all(), ratio
    assert (ratio <= 1.01).all(), ratio


def test_cw_linf_finds_closed_form_minimum_on_linear_model(linear_binary: LinearBinary) -> None:
    x, y, f = _linear_batch(linear_binary)
    res = cw_linf(linear_binary, x, y, ThreatModel("linf", INF), tau_decay=0.95, **FAST["cw-linf"])
    exact = f.abs() / linear_binary.w.detach().abs().sum()
    assert res.success.all()
    ratio = res.norms / exact
    assert (ratio >= 1 - 1e-4).all(), ratio
    assert (ratio <= 1.06).all(), ratio


def test_cw_l0_changes_few_pixels_on_linear_model(linear_binary: LinearBinary) -> None:
    x, y, f = _linear_batch(linear_binary)
    res = cw_l0(linear_binary, x, y, ThreatModel("l0", INF), **FAST["cw-l0"])
    assert res.success.all()
    # fewest features that can flip the sign: each moves f by at most 0.5 |w_i| (x near 0.5)
    reach = torch.cumsum(0.5 * linear_binary.w.detach().abs().sort(descending=True).values, 0)
    k_min = torch.tensor([int((reach < fi.abs()).sum()) + 1 for fi in f])
    changed = (res.x_adv != x).flatten(1).sum(dim=1)
    assert res.extras["pixels_changed"].dtype == torch.int64
    assert torch.equal(res.extras["pixels_changed"], changed)
    assert torch.equal(res.norms.long(), changed)
    assert (changed >= k_min).all() and (changed <= k_min + 1).all(), (changed, k_min)


def test_cw_l0_counts_pixels_not_channels() -> None:
    g = torch.Generator().manual_seed(7)
    model = LinearBinary(torch.randn(3 * 4 * 4, generator=g), 0.1).eval()
    x, y, _ = _linear_batch(model, shape=(3, 4, 4))
    res = cw_l0(model, x, y, ThreatModel("l0", INF), **FAST["cw-l0"])
    assert res.success.all()
    pixels = (res.x_adv != x).any(dim=1).flatten(1).sum(dim=1)
    assert torch.equal(res.extras["pixels_changed"], pixels)
    assert (res.norms >= pixels).all() and (res.norms <= 3 * pixels).all()
    # all channels of a pixel are free together: some pixel changes in more than one channel
    assert ((res.x_adv != x).sum(dim=1) > 1).any()


def _sharp_cnn() -> nn.Module:
    """conftest's CNN with logits scaled by 10, so that margins of 2 and 5 are within reach."""
    model = make_cnn()
    with torch.no_grad():
        model[-1].weight.mul_(10)
        model[-1].bias.mul_(10)
    return model


@pytest.mark.parametrize("confidence", [2.0, 5.0])
def test_cw_l2_successes_have_the_requested_confidence(
    batch: tuple[torch.Tensor, torch.Tensor], confidence: float
) -> None:
    model = _sharp_cnn()
    x = batch[0][:8]
    with torch.no_grad():
        y = model(x).argmax(dim=1)
    threat = ThreatModel("l2", INF)
    res = cw_l2(model, x, y, threat, confidence=confidence, steps=100, binary_search_steps=6)
    assert res.success.all()
    with torch.no_grad():
        m = margin(model(res.x_adv), y)
    assert (m >= confidence - 1e-4).all(), m
    # more confidence costs more distance than the bare minimum
    plain = cw_l2(model, x, y, threat, steps=100, binary_search_steps=6)
    assert (res.norms > plain.norms).all()


def test_cw_linf_successes_have_the_requested_confidence(linear_binary: LinearBinary) -> None:
    x, y, f = _linear_batch(linear_binary)
    res = cw_linf(linear_binary, x, y, ThreatModel("linf", INF), confidence=2.0, **FAST["cw-linf"])
    assert res.success.all()
    with torch.no_grad():
        m = margin(linear_binary(res.x_adv), y)
    assert (m >= 2.0 - 1e-4).all(), m
    # a larger margin needs a larger perturbation: at least (|f| + 2) / ||w||_1
    exact = (f.abs() + 2.0) / linear_binary.w.detach().abs().sum()
    assert (res.norms >= exact * (1 - 1e-4)).all()


@pytest.mark.parametrize("name", sorted(NORM))
def test_targeted_attacks_hit_the_target(
    cnn: nn.Module, batch: tuple[torch.Tensor, torch.Tensor], name: str
) -> None:
    x, _ = batch
    x = x[:6]
    with torch.no_grad():
        y = cnn(x).argmax(dim=1)
    target = select_targets(cnn, x, y, seed=0)
    kw: dict[str, Any] = dict(FAST[name])
    if name == "cw-l0":
        kw["max_rounds"] = 3
    if name == "cw-l2":
        kw["binary_search_steps"] = 8
    res = get_attack(name)(cnn, x, y, ThreatModel(NORM[name], INF), target=target, **kw)
    assert res.targeted
    assert res.success.float().mean() >= 0.8
    assert torch.equal(res.pred[res.success], target[res.success])


@pytest.mark.parametrize(("solver", "lr"), [("sgd", 0.5), ("momentum", 0.02), ("adam", 0.05)])
def test_every_solver_moves_pixels_on_the_box_edge(solver: str, lr: float) -> None:
    """Binarized images: every pixel is exactly 0 or 1, where tanh is flat.

    Unpreconditioned gradient steps in w succeed on 1/8 (sgd) and 0/8 (momentum) of these
    images with the same budget.
    """
    model = make_cnn()
    x, y = _binary_images(model)
    res = cw_l2(
        model, x, y, ThreatModel("l2", INF), solver=solver, lr=lr, steps=100, binary_search_steps=5
    )
    assert res.success.all()
    assert ((res.x_adv >= 0) & (res.x_adv <= 1)).all()
    # pixels at 0 moved up and pixels at 1 moved down
    d = res.x_adv - x
    assert (d[x == 0] > 1e-3).any() and (d[x == 1] < -1e-3).any()


@pytest.mark.parametrize("name", sorted(NORM))
def test_failures_return_the_original_input(linear_binary: LinearBinary, name: str) -> None:
    x, y, _ = _linear_batch(linear_binary)
    kw: dict[str, Any] = {"steps": 1, "c_init": 1e-8}
    if name == "cw-l2":
        kw["binary_search_steps"] = 1
    else:
        kw["c_max"] = 1.5e-8
    res = get_attack(name)(linear_binary, x, y, ThreatModel(NORM[name], INF), **kw)
    assert not res.success.any()
    assert torch.equal(res.x_adv, x)
    assert (res.norms == 0).all()
    assert (res.queries >= 1).all()


@pytest.mark.parametrize("name", sorted(NORM))
def test_soundness(linear_binary: LinearBinary, name: str) -> None:
    """Inputs and mode untouched, output in the box, same output twice, queries counted."""
    x, y, _ = _linear_batch(linear_binary)
    x0 = x.clone()
    linear_binary.train()
    try:
        run = get_attack(name)
        a = run(linear_binary, x, y, ThreatModel(NORM[name], INF), **FAST[name])
        b = run(linear_binary, x, y, ThreatModel(NORM[name], INF), **FAST[name])
        assert linear_binary.training
    finally:
        linear_binary.eval()
    assert torch.equal(x, x0)
    assert torch.equal(a.x_adv, b.x_adv) and torch.equal(a.queries, b.queries)
    assert ((a.x_adv >= 0) & (a.x_adv <= 1)).all()
    assert a.queries.dtype == torch.int64 and (a.queries > 1).all()
    assert a.params == b.params and a.attack == name


def test_finite_eps_projects_and_rechecks(linear_binary: LinearBinary) -> None:
    x, y, f = _linear_batch(linear_binary)
    exact = f.abs() / linear_binary.w.detach().norm()
    small = cw_l2(linear_binary, x, y, ThreatModel("l2", float(exact.min()) * 0.5), steps=100)
    assert not small.success.any()
    assert (small.norms <= exact.min() * 0.5 + 1e-5).all()
    large = cw_l2(linear_binary, x, y, ThreatModel("l2", float(exact.max()) * 2), steps=100)
    assert large.success.all()


@pytest.mark.parametrize("name", sorted(NORM))
def test_eps_zero_and_already_adversarial_inputs_are_returned_as_is(
    linear_binary: LinearBinary, name: str
) -> None:
    x, y, _ = _linear_batch(linear_binary)
    res = get_attack(name)(linear_binary, x, y, ThreatModel(NORM[name], 0.0), **FAST[name])
    assert torch.equal(res.x_adv, x) and not res.success.any()
    wrong = 1 - y  # every input is already misclassified under these labels
    res = get_attack(name)(linear_binary, x, wrong, ThreatModel(NORM[name], INF), **FAST[name])
    assert torch.equal(res.x_adv, x) and res.success.all()
    assert (res.queries == 2).all()  # the start check and the verification


@pytest.mark.parametrize(
    ("name", "kw"),
    [
        ("cw-l2", {"confidence": -1.0}),
        ("cw-l2", {"steps": 0}),
        ("cw-l2", {"binary_search_steps": 0}),
        ("cw-l2", {"solver": "lbfgs"}),
        ("cw-l2", {"c_init": 0.0}),
        ("cw-l2", {"momentum": 1.0}),
        ("cw-l2", {"lr": -0.1}),
        ("cw-l2", {"preset": "fast"}),
        ("cw-linf", {"confidence": -0.5}),
        ("cw-linf", {"steps": 0}),
        ("cw-linf", {"tau_decay": 1.0}),
        ("cw-linf", {"c_max": 1e-6}),
        ("cw-linf", {"max_rounds": 0}),
        ("cw-l0", {"c_factor": 1.0}),
        ("cw-l0", {"steps": 0}),
        ("cw-l0", {"confidence": -1.0}),
    ],
)
def test_bad_parameters_are_rejected(
    linear_binary: LinearBinary, name: str, kw: dict[str, Any]
) -> None:
    x, y, _ = _linear_batch(linear_binary)
    with pytest.raises(ConfigError):
        get_attack(name)(linear_binary, x, y, ThreatModel(NORM[name], INF), **kw)


def test_wrong_norm_is_rejected(linear_binary: LinearBinary) -> None:
    x, y, _ = _linear_batch(linear_binary)
    with pytest.raises(ConfigError):
        get_attack("cw-l2")(linear_binary, x, y, ThreatModel("linf", INF))


def test_cw_l2_abandons_a_value_of_c_that_stalls_without_success(
    linear_binary: LinearBinary,
) -> None:
    x, y, _ = _linear_batch(linear_binary)
    steps = 1000
    common = {"c_init": 1e-6, "binary_search_steps": 1, "steps": steps}
    res = cw_l2(linear_binary, x, y, ThreatModel("l2", INF), **common)
    assert not res.success.any()
    assert (res.queries < steps // 2).all(), res.queries
    full = cw_l2(linear_binary, x, y, ThreatModel("l2", INF), abort_early=False,
                 abort_stalled=False, **common)  # fmt: skip
    assert (full.queries == steps + 2).all()  # the start check, the steps, the verification
    assert not full.success.any()
