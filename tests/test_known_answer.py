"""Known answers: on a linear binary classifier the minimal perturbations are closed-form.

For logits ``[0, f(x)]`` with ``f(x) = w.x + b`` the decision flips when ``f`` changes sign, so
the smallest perturbation is ``|f| / ||w||_2`` in L2 and ``|f| / ||w||_1`` in L-inf, as long as
the box does not bind (the inputs sit near 0.5 and the margins are small).
"""

from __future__ import annotations

import pytest
import torch

from advlab import ThreatModel
from advlab.attacks import fgsm, pgd

from .conftest import LinearBinary, linear_margin_batch

margin_batch = linear_margin_batch


@pytest.mark.parametrize(("norm", "dual"), [("linf", 1), ("l2", 2)])
def test_pgd_hits_the_closed_form_boundary(
    linear_binary: LinearBinary, norm: str, dual: int
) -> None:
    x, y, f = margin_batch(linear_binary)
    w = linear_binary.w.detach()
    eps_star = f / w.norm(p=dual)
    assert (x.min() > 0.2) and (x.max() < 0.8)
    # In L2 a random start is nearly orthogonal to w (64 dimensions) and the default path length
    # of 2.5 eps cannot rotate it to within 1% of the optimal direction, so L2 starts at x.
    kw = {"steps": 40, "seed": 0, "random_start": norm == "linf"}
    for i in range(len(y)):
        xi, yi, e = x[i : i + 1], y[i : i + 1], float(eps_star[i])
        above = pgd(linear_binary, xi, yi, ThreatModel(norm, e * 1.01), **kw)
        below = pgd(linear_binary, xi, yi, ThreatModel(norm, e * 0.99), **kw)
        assert bool(above.success), (i, e)
        assert not bool(below.success), (i, e)


def test_fgsm_is_exact_in_linf(linear_binary: LinearBinary) -> None:
    x, y, f = margin_batch(linear_binary)
    eps_star = f / linear_binary.w.detach().abs().sum()
    for i in range(len(y)):
        e = float(eps_star[i])
        xi, yi = x[i : i + 1], y[i : i + 1]
        assert bool(fgsm(linear_binary, xi, yi, ThreatModel("linf", e * 1.01)).success)
        assert not bool(fgsm(linear_binary, xi, yi, ThreatModel("linf", e * 0.99)).success)


def test_pgd_l1_reaches_the_boundary(linear_binary: LinearBinary) -> None:
    """In L1 the minimal perturbation moves the one coordinate with the largest |w_i|."""
    x, y, f = margin_batch(linear_binary, n=6)
    eps_star = f / linear_binary.w.detach().abs().max()
    for i in range(len(y)):
        e = float(eps_star[i])
        xi, yi = x[i : i + 1], y[i : i + 1]
        res = pgd(linear_binary, xi, yi, ThreatModel("l1", e * 1.01), steps=100, l1_sparsity=0.99)
        assert bool(res.success), (i, e)
        assert not bool(pgd(linear_binary, xi, yi, ThreatModel("l1", e * 0.99), steps=100).success)


@pytest.mark.parametrize("scale", [1.0, 1e-10, 1e-16, 1e-30])
def test_l2_step_has_full_length_for_tiny_gradients(scale: float) -> None:
    """A saturated cross-entropy gives gradients of ~1e-16; the L2 step must keep its length."""
    from advlab.attacks.gradient import steepest_step

    g = scale * torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    x = torch.full_like(g, 0.5)
    d = steepest_step(g, x, ThreatModel("l2", 1.0), 0.95)
    assert torch.allclose(d.flatten(1).norm(dim=1), torch.ones(3), atol=1e-5)
    assert torch.equal(
        steepest_step(torch.zeros_like(g), x, ThreatModel("l2", 1.0), 0.95), torch.zeros_like(g)
    )
