"""ThreatModel: validation, projection, containment and random starts."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from advlab import ThreatModel
from advlab.errors import ConfigError, InputError
from advlab.rng import SampleRNG
from advlab.threat import check_inputs, lp_norms, project_l1_box

NORMS = ["linf", "l2", "l1"]


def test_rejects_bad_parameters() -> None:
    with pytest.raises(ConfigError, match="eps must be >= 0"):
        ThreatModel("linf", -0.1)
    with pytest.raises(ConfigError, match="unknown norm 'l3'"):
        ThreatModel("l3", 0.1)
    with pytest.raises(ConfigError, match="lower < upper"):
        ThreatModel("l2", 1.0, lower=1.0, upper=0.0)
    with pytest.raises(ConfigError, match="eps must be"):
        ThreatModel("l2", float("nan"))


def test_inf_eps_is_box_only() -> None:
    tm = ThreatModel("l2", math.inf)
    x = torch.full((2, 5), 0.5)
    out = tm.project(x + 10, x)
    assert torch.equal(out, torch.ones_like(x))
    assert tm.contains(out, x).all()
    with pytest.raises(ConfigError, match="finite eps"):
        tm.random_start(x, SampleRNG(0, 2))


@settings(max_examples=60, deadline=None)
@given(
    norm=st.sampled_from(NORMS),
    eps=st.floats(0.0, 3.0),
    scale=st.floats(0.01, 10.0),
    seed=st.integers(0, 2**16),
)
def test_project_lands_inside(norm: str, eps: float, scale: float, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    tm = ThreatModel(norm, eps)
    x = torch.rand(4, 3, 5, generator=g)
    x[0] = 0.0  # inputs on the box edge
    x[1] = 1.0
    v = x + scale * torch.randn(x.shape, generator=g)
    p = tm.project(v, x)
    assert tm.contains(p, x).all()
    # Projection is idempotent on points already inside.
    assert torch.allclose(tm.project(p, x), p, atol=1e-5)


@settings(max_examples=40, deadline=None)
@given(eps=st.floats(0.05, 5.0), seed=st.integers(0, 2**16))
def test_l1_box_projection_is_the_nearest_point(eps: float, seed: int) -> None:
    """KKT check: no feasible point from a random direction is closer than the projection."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(1, 12, generator=g, dtype=torch.float64)
    v = 2 * torch.randn(1, 12, generator=g, dtype=torch.float64)
    d = project_l1_box(v, torch.tensor([eps], dtype=torch.float64), -x, 1 - x, iters=80)
    assert float(d.abs().sum()) <= eps + 1e-9
    assert bool(((x + d) >= -1e-12).all() and ((x + d) <= 1 + 1e-12).all())
    base = float((d - v).norm())
    tm = ThreatModel("l1", eps)
    for _ in range(50):
        other = (
            tm.project(x + d + 0.05 * torch.randn(1, 12, generator=g, dtype=torch.float64), x) - x
        )
        assert float((other - v).norm()) >= base - 1e-6


def test_linf_projection_is_exact() -> None:
    tm = ThreatModel("linf", 0.1)
    x = torch.tensor([[0.05, 0.5, 0.95]])
    out = tm.project(torch.tensor([[-1.0, 0.55, 2.0]]), x)
    assert torch.allclose(out, torch.tensor([[0.0, 0.55, 1.0]]))


def test_norms() -> None:
    d = torch.tensor([[3.0, -4.0, 0.0]])
    assert lp_norms(d, "linf").item() == 4.0
    assert lp_norms(d, "l2").item() == 5.0
    assert lp_norms(d, "l1").item() == 7.0
    assert lp_norms(d, "l0").item() == 2.0


def test_l0_projection_keeps_largest() -> None:
    tm = ThreatModel("l0", 2)
    x = torch.full((1, 4), 0.5)
    out = tm.project(x + torch.tensor([[0.1, -0.4, 0.3, 0.05]]), x)
    assert torch.allclose(out - x, torch.tensor([[0.0, -0.4, 0.3, 0.0]]))


@pytest.mark.parametrize("norm", NORMS)
def test_random_start_inside_and_seeded(norm: str) -> None:
    tm = ThreatModel(norm, 0.5)
    x = torch.rand(8, 1, 6, 6, generator=torch.Generator().manual_seed(0))
    a = tm.random_start(x, SampleRNG(5, 8))
    b = tm.random_start(x, SampleRNG(5, 8))
    assert torch.equal(a, b)
    # a sample's start depends on its stream, not on the batch it is in
    c = tm.random_start(x[3:5], SampleRNG(5, 8), torch.tensor([3, 4]))
    assert torch.equal(c, a[3:5])
    assert tm.contains(a, x).all()
    assert not torch.equal(a, x)
    if norm != "linf":  # L2/L1 radii spread through the ball rather than sitting on the sphere
        r = tm.norms(a - x)
        assert float(r.min()) < 0.8 * float(r.max())


def test_check_inputs_errors() -> None:
    tm = ThreatModel("linf", 0.1)
    y = torch.zeros(2, dtype=torch.long)
    with pytest.raises(InputError, match="NaN"):
        check_inputs(torch.tensor([[0.1, float("nan")], [0.1, 0.2]]), y, tm)
    with pytest.raises(InputError, match="outside the threat model's box"):
        check_inputs(torch.full((2, 3), 255.0), y, tm)
    with pytest.raises(InputError, match="floating-point"):
        check_inputs(torch.zeros(2, 3, dtype=torch.uint8), y, tm)
    with pytest.raises(InputError, match="batch"):
        check_inputs(torch.zeros(3), y, tm)
    with pytest.raises(InputError, match="one entry per sample"):
        check_inputs(torch.zeros(3, 3), y, tm)
    with pytest.raises(InputError, match="integer"):
        check_inputs(torch.zeros(2, 3), y.float(), tm)
