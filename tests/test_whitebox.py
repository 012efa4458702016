"""White-box attacks beyond PGD: DeepFool, JSMA, L-BFGS, BIM and the all-targets evaluation.

Known answers where they exist in closed form (DeepFool on a linear classifier), exact
cross-checks where an implementation can be compared to a brute-force one (JSMA's pair search,
the batched L-BFGS-B driver against plain SciPy), and the papers' invariants elsewhere
(JSMA's feature budget, BIM being PGD without random start).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterator

import numpy as np
import pytest
import scipy.optimize
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from advlab import ThreatModel
from advlab.attacks import (
    all_other_targets,
    bim,
    deepfool,
    get_attack,
    jsma,
    lbfgs,
    pgd,
    targeted_cases,
    targeted_grid,
)
from advlab.attacks.base import MARGIN_RTOL
from advlab.errors import ConfigError, InputError

from .conftest import LinearBinary, linear_margin_batch

UNBOUNDED = math.inf
jsma_module = sys.modules["advlab.attacks.jsma"]
lbfgs_module = sys.modules["advlab.attacks.lbfgs"]


def make_mlp(d: int = 64, classes: int = 10, seed: int = 0) -> nn.Module:
    """A small random MLP on ``(B, 1, 8, 8)`` inputs: cheap enough for JSMA's pair search."""
    g = torch.Generator().manual_seed(seed)
    m = nn.Sequential(nn.Flatten(), nn.Linear(d, 32), nn.ReLU(), nn.Linear(32, classes))
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g) / max(1, p.shape[-1]) ** 0.5)
    return m.eval()


@pytest.fixture(scope="module")
def mlp_batch() -> tuple[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Model, inputs inside (0.2, 0.8), clean predictions as labels, runner-up classes."""
    m = make_mlp()
    g = torch.Generator().manual_seed(1)
    x = 0.2 + 0.6 * torch.rand(12, 1, 8, 8, generator=g)
    with torch.no_grad():
        logits = m(x)
    y = logits.argmax(dim=1)
    runner_up = logits.scatter(1, y[:, None], float("-inf")).argmax(dim=1)
    return m, x, y, runner_up


def linear_batch(
    model: LinearBinary, n: int = 10
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return linear_margin_batch(model, n)


# ----------------------------------------------------------------------------------- DeepFool


@pytest.mark.parametrize(("norm", "dual"), [("l2", 2), ("linf", 1)])
def test_deepfool_finds_the_closed_form_minimum_on_a_linear_model(
    linear_binary: LinearBinary, norm: str, dual: int
) -> None:
    # The minimal perturbation to a margin tau (the noise floor, 1e-3 here) is
    # (|f| + tau) / ||w||_dual. DeepFool reaches it in one exact step and then scales the total
    # by (1 + overshoot), so the known answer is that times (1 + overshoot).
    x, y, f = linear_batch(linear_binary)
    w = linear_binary.w.detach()
    eta = 1e-4
    res = deepfool(linear_binary, x, y, ThreatModel(norm, UNBOUNDED), overshoot=eta, refine=0)
    assert res.success.all()
    delta = (res.x_adv - x).flatten(1)
    assert float(res.x_adv.min()) > 0.0 and float(res.x_adv.max()) < 1.0  # box never binds
    expected = (1 + eta) * (f + MARGIN_RTOL) / w.norm(p=dual)
    torch.testing.assert_close(res.norms, expected, rtol=2e-3, atol=1e-6)
    assert ((res.norms - f / w.norm(p=dual)).abs() <= 0.01 * f / w.norm(p=dual)).all()
    # The direction is the closed-form one: along -sign(f) w (L2) or -sign(f) sign(w) (Linf).
    sgn = torch.where(y == 1, -1.0, 1.0)[:, None]
    direction = w[None] if norm == "l2" else w.sign()[None]
    cos = torch.nn.functional.cosine_similarity(delta, sgn * direction, dim=1)
    assert (cos > 0.999).all()
    assert (res.queries <= 3).all()  # the clean point's step, the check it crossed, verification


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_deepfool_fools_every_sample_of_a_cnn_inside_the_box(
    cnn: nn.Module, batch, norm: str
) -> None:
    x, _ = batch
    with torch.no_grad():
        y = cnn(x).argmax(dim=1)
    res = deepfool(cnn, x, y, ThreatModel(norm, UNBOUNDED), steps=50)
    assert res.success.all()
    assert float(res.x_adv.min()) >= 0.0 and float(res.x_adv.max()) <= 1.0
    with torch.no_grad():
        assert (cnn(res.x_adv).argmax(dim=1) != y).all()
    # A minimal attack: well inside what PGD needs at a generous budget.
    big = 4.0 if norm == "l2" else 0.3
    assert (res.norms < big).all()


def test_deepfool_overshoot_acts_on_the_total(linear_binary: LinearBinary) -> None:
    # Doubling the overshoot scales the whole perturbation by (1 + 2 eta) / (1 + eta).
    x, y, _ = linear_batch(linear_binary)
    a = deepfool(linear_binary, x, y, ThreatModel("l2", UNBOUNDED), overshoot=0.1, refine=0)
    b = deepfool(linear_binary, x, y, ThreatModel("l2", UNBOUNDED), overshoot=0.2, refine=0)
    torch.testing.assert_close(
        b.norms / a.norms, torch.full_like(a.norms, 1.2 / 1.1), rtol=1e-3, atol=0
    )


def test_deepfool_refine_keeps_the_least_overshoot_that_still_flips(
    linear_binary: LinearBinary,
) -> None:
    # On a linear model one step lands on the boundary (up to round-off), so the least overshoot
    # of 0.2 * j / 4 that flips is j = 1 (or j = 0 where round-off already crossed): at most
    # 1.05 times the minimal distance instead of the paper's 1.2.
    x, y, f = linear_batch(linear_binary)
    exact = f.abs() / linear_binary.w.detach().norm()
    res = deepfool(linear_binary, x, y, ThreatModel("l2", UNBOUNDED), overshoot=0.2, refine=4)
    assert res.success.all()
    ratio = res.norms / exact
    assert (ratio <= 1.05 + 1e-4).all() and (ratio >= 1 - 1e-4).all(), ratio


def test_deepfool_refine_never_lengthens_the_perturbation(cnn: nn.Module, batch) -> None:
    x, _ = batch
    with torch.no_grad():
        y = cnn(x).argmax(dim=1)
    tm = ThreatModel("l2", UNBOUNDED)
    plain = deepfool(cnn, x, y, tm, overshoot=0.1, refine=0)
    refined = deepfool(cnn, x, y, tm, overshoot=0.1, refine=5)
    assert torch.equal(refined.success, plain.success)
    assert (refined.norms <= plain.norms + 1e-6).all()
    assert float(refined.norms.sum()) < float(plain.norms.sum())


def test_deepfool_skips_samples_already_misclassified(cnn: nn.Module, batch) -> None:
    x, _ = batch
    with torch.no_grad():
        pred = cnn(x).argmax(dim=1)
    y = (pred + 1) % 10  # every sample is already wrong
    res = deepfool(cnn, x, y, ThreatModel("l2", UNBOUNDED))
    assert res.success.all() and torch.equal(res.x_adv, x)
    assert (res.queries == 2).all()  # the clean pass and the verification


def test_deepfool_bad_parameters(cnn: nn.Module, batch) -> None:
    x, y = batch
    tm = ThreatModel("l2", UNBOUNDED)
    with pytest.raises(ConfigError, match="steps"):
        deepfool(cnn, x, y, tm, steps=0)
    with pytest.raises(ConfigError, match="overshoot"):
        deepfool(cnn, x, y, tm, overshoot=-0.1)
    with pytest.raises(ConfigError, match="overshoot"):
        deepfool(cnn, x, y, tm, overshoot=math.nan)
    with pytest.raises(ConfigError, match="candidates"):
        deepfool(cnn, x, y, tm, candidates=0)
    with pytest.raises(ConfigError, match="refine"):
        deepfool(cnn, x, y, tm, refine=-1)
    with pytest.raises(ConfigError, match="untargeted"):
        deepfool(cnn, x, y, tm, target=(y + 1) % 10)
    with pytest.raises(ConfigError, match="supports norms l2, linf"):
        deepfool(cnn, x, y, ThreatModel("l1", UNBOUNDED))


# --------------------------------------------------------------------------------------- JSMA


def brute_force_pair_scores(
    alpha: torch.Tensor, beta: torch.Tensor, domain: torch.Tensor, increase: bool
) -> torch.Tensor:
    a = alpha[:, :, None] + alpha[:, None, :]
    b = beta[:, :, None] + beta[:, None, :]
    ok = (a > 0) & (b < 0) if increase else (a < 0) & (b > 0)
    d = alpha.shape[1]
    ok &= domain[:, :, None] & domain[:, None, :] & ~torch.eye(d, dtype=torch.bool)[None]
    return torch.where(ok, -a * b, torch.full_like(a, -1.0))


@pytest.mark.parametrize("increase", [True, False])
@pytest.mark.parametrize("block", [jsma_module.PAIR_BLOCK, 7, 40])
def test_jsma_pair_search_matches_brute_force(increase: bool, block: int) -> None:
    g = torch.Generator().manual_seed(5)
    n, d = 5, 23
    alpha, beta = torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)
    domain = torch.rand(n, d, generator=g) > 0.3
    domain[4] = False
    domain[4, 3] = True  # a single feature left: no pair
    p, q, ok = jsma_module.best_pairs(alpha, beta, domain, increase=increase, block=block)
    scores = brute_force_pair_scores(alpha, beta, domain, increase)
    best = scores.flatten(1).max(dim=1).values
    assert torch.equal(ok, best > 0)
    rows = torch.arange(n)[ok]
    assert (p[ok] != q[ok]).all()
    torch.testing.assert_close(scores[rows, p[ok], q[ok]], best[ok])


@settings(max_examples=8, deadline=None)
@given(
    gamma=st.floats(min_value=0.01, max_value=1.0),
    theta=st.sampled_from([1.0, -1.0, 0.4, -0.25]),
    use_logits=st.booleans(),
    seed=st.integers(0, 3),
)
def test_jsma_never_exceeds_the_feature_budget(
    gamma: float, theta: float, use_logits: bool, seed: int
) -> None:
    m = make_mlp(d=16, classes=5, seed=seed)
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(6, 1, 4, 4, generator=g)
    with torch.no_grad():
        y = m(x).argmax(dim=1)
    t = (y + 1 + seed % 4) % 5
    res = jsma(
        m,
        x,
        y,
        ThreatModel("l0", UNBOUNDED),
        target=t,
        gamma=gamma,
        theta=theta,
        use_logits=use_logits,
    )
    changed = (res.x_adv != x).flatten(1).sum(dim=1)
    assert (changed <= math.floor(gamma * 16)).all()
    assert torch.equal(res.extras["features_changed"], changed)
    assert res.extras["features_changed"].dtype == torch.int64
    assert torch.equal(res.success, res.pred == t)
    fail = ~res.success
    assert torch.equal(res.x_adv[fail], x[fail])  # failures return the original input
    assert float(res.x_adv.min()) >= 0.0 and float(res.x_adv.max()) <= 1.0


@pytest.mark.parametrize("theta", [1.0, -1.0])
@pytest.mark.parametrize("use_logits", [True, False])
def test_jsma_increase_and_decrease_variants_hit_the_target(
    mlp_batch, theta: float, use_logits: bool
) -> None:
    m, x, y, runner_up = mlp_batch
    res = jsma(m, x, y, ThreatModel("l0", UNBOUNDED), target=runner_up, theta=theta, gamma=0.3,
               use_logits=use_logits)  # fmt: skip
    assert res.success.float().mean() >= 0.9
    assert torch.equal(res.pred[res.success], runner_up[res.success])
    delta = res.x_adv - x
    # The increasing variant only raises features, to the top of the box (theta = 1 saturates);
    # the decreasing one only lowers them, to the bottom.
    changed = delta != 0
    if theta > 0:
        assert (delta >= 0).all() and (res.x_adv[changed] == 1.0).all()
    else:
        assert (delta <= 0).all() and (res.x_adv[changed] == 0.0).all()
    assert (res.extras["features_changed"][res.success] % 2 == 0).all()  # pairs of features
    assert torch.equal(res.norms.long(), res.extras["features_changed"])


def test_jsma_untargeted_goes_to_the_runner_up_or_anywhere_else(mlp_batch) -> None:
    m, x, y, _ = mlp_batch
    res = jsma(m, x, y, ThreatModel("l0", UNBOUNDED), gamma=0.3)
    assert res.target is None
    assert res.success.float().mean() >= 0.9
    assert (res.pred[res.success] != y[res.success]).all()


def test_jsma_finite_eps_caps_the_budget(mlp_batch) -> None:
    m, x, y, runner_up = mlp_batch
    res = jsma(m, x, y, ThreatModel("l0", 4), target=runner_up, gamma=1.0)
    assert (res.extras["features_changed"] <= 4).all()
    assert ThreatModel("l0", 4).contains(res.x_adv, x).all()


def test_jsma_bad_parameters(mlp_batch) -> None:
    m, x, y, _ = mlp_batch
    tm = ThreatModel("l0", UNBOUNDED)
    for gamma in (0.0, -0.1, 1.5):
        with pytest.raises(ConfigError, match="gamma"):
            jsma(m, x, y, tm, gamma=gamma)
    for theta in (0.0, math.inf):
        with pytest.raises(ConfigError, match="theta"):
            jsma(m, x, y, tm, theta=theta)
    with pytest.raises(InputError, match="true label"):
        jsma(m, x, y, tm, target=y.clone())
    with pytest.raises(ConfigError, match="supports norms"):
        get_attack("jsma")(m, x, y, ThreatModel("l2", UNBOUNDED))


# ------------------------------------------------------------------------------------- L-BFGS


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """Run torch single-threaded for the L-BFGS tests.

    The attack answers its solver threads with many small batched passes; on a shared,
    oversubscribed 2-core test machine, libgomp's spinning intra-op workers make each pass
    ~100x slower than on one thread. This only changes speed, not results.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def test_lockstep_minimize_equals_separate_scipy_runs() -> None:
    rng = np.random.default_rng(0)
    n, d = 5, 12
    centers = rng.normal(size=(n, d)) * 2  # partly outside the box, so the bounds bind
    scales = rng.uniform(0.5, 3.0, size=(n, d))

    def value_grad(i: int, z: np.ndarray) -> tuple[float, np.ndarray]:
        r = z - centers[i]
        return float((scales[i] * r**2).sum() + (r**4).sum()), 2 * scales[i] * r + 4 * r**3

    calls: list[int] = []

    def evaluate(ids: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        calls.append(len(ids))
        out = [value_grad(int(i), p) for i, p in zip(ids, points, strict=True)]
        return np.array([v for v, _ in out]), np.stack([g for _, g in out])

    starts = np.full((n, d), 0.5)
    got = lbfgs_module.lockstep_minimize(starts, 0.0, 1.0, evaluate, max_iter=30)
    for i in range(n):
        ref = scipy.optimize.minimize(
            lambda z, i=i: value_grad(i, z), starts[i], jac=True, method="L-BFGS-B",
            bounds=scipy.optimize.Bounds(0.0, 1.0), options={"maxiter": 30, "maxfun": 70},
        )  # fmt: skip
        np.testing.assert_allclose(got[i], ref.x, rtol=1e-10, atol=1e-12)
    assert max(calls) > 1  # requests really were batched


def test_lockstep_minimize_propagates_errors() -> None:
    def evaluate(ids: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise InputError("boom")

    with pytest.raises(InputError, match="boom"):
        lbfgs_module.lockstep_minimize(np.zeros((3, 4)), 0.0, 1.0, evaluate, max_iter=5)


@pytest.mark.usefixtures("one_torch_thread")
def test_lbfgs_targeted_hits_the_target(mlp_batch) -> None:
    m, x, y, _ = mlp_batch
    t = (y + 5) % 10
    res = lbfgs(m, x, y, ThreatModel("l2", UNBOUNDED), target=t, max_iter=20, c_steps=2)
    assert res.success.all()
    assert torch.equal(res.pred, t)
    assert float(res.x_adv.min()) >= 0.0 and float(res.x_adv.max()) <= 1.0
    assert (res.queries > 3).all()


@pytest.mark.usefixtures("one_torch_thread")
def test_lbfgs_untargeted_and_search_over_c_shrinks_the_norm(mlp_batch) -> None:
    m, x, y, _ = mlp_batch
    tm = ThreatModel("l2", UNBOUNDED)
    short = lbfgs(m, x, y, tm, max_iter=20, c_steps=1)
    long = lbfgs(m, x, y, tm, max_iter=20, c_steps=3)
    assert long.success.all() and (long.pred != y).all()
    # More rounds of the search over c only add candidates; the smallest success is kept.
    both = short.success & long.success
    assert (long.norms[both] <= short.norms[both] + 1e-6).all()
    assert long.norms[both].mean() < short.norms[both].mean()


def test_lbfgs_bad_parameters(mlp_batch) -> None:
    m, x, y, _ = mlp_batch
    tm = ThreatModel("l2", UNBOUNDED)
    with pytest.raises(ConfigError, match="initial_const"):
        lbfgs(m, x, y, tm, initial_const=0.0)
    with pytest.raises(ConfigError, match="c_steps"):
        lbfgs(m, x, y, tm, c_steps=0)
    with pytest.raises(ConfigError, match="max_iter"):
        lbfgs(m, x, y, tm, max_iter=0)
    with pytest.raises(InputError, match="true label"):
        lbfgs(m, x, y, tm, target=y.clone())


# ---------------------------------------------------------------------------------------- BIM


def test_bim_is_pgd_without_random_start(cnn: nn.Module, batch) -> None:
    x, y = batch
    tm = ThreatModel("linf", 0.05)
    a = bim(cnn, x, y, tm, steps=6, step_size=0.01)
    b = pgd(cnn, x, y, tm, steps=6, step_size=0.01, random_start=False, restarts=1)
    assert torch.equal(a.x_adv, b.x_adv) and torch.equal(a.success, b.success)
    assert torch.equal(a.queries, b.queries)
    assert a.attack == "bim" and a.params["steps"] == 6


def test_bim_uses_kurakins_defaults(cnn: nn.Module, batch) -> None:
    x, y = batch
    # eps = 8 grey levels of 1/256: min(8 + 4, 1.25 * 8) = 10 steps of one grey level.
    res = bim(cnn, x, y, ThreatModel("linf", 8 / 256))
    assert res.params["steps"] == 10
    assert res.params["step_size"] == pytest.approx(1 / 256)
    bim_module = sys.modules["advlab.attacks.bim"]
    assert bim_module.kurakin_steps(ThreatModel("linf", 0.3)) == 81  # 76.8 levels
    assert bim_module.kurakin_steps(ThreatModel("linf", 2.0, lower=-1.0, upper=1.0)) == 256 + 4
    with pytest.raises(ConfigError, match="finite eps"):
        bim(cnn, x, y, ThreatModel("linf", UNBOUNDED))


# ---------------------------------------------------------------------------- all-targets cases


def test_all_other_targets() -> None:
    y = torch.tensor([0, 3, 4])
    t = all_other_targets(5, y)
    assert t.tolist() == [[1, 2, 3, 4], [0, 1, 2, 4], [0, 1, 2, 3]]
    assert t.dtype == torch.int64
    with pytest.raises(ConfigError, match="num_classes"):
        all_other_targets(1, torch.tensor([0]))
    with pytest.raises(InputError, match="labels"):
        all_other_targets(3, torch.tensor([3]))


def test_targeted_cases_orders_best_average_worst() -> None:
    m = make_mlp(classes=4, seed=2)
    g = torch.Generator().manual_seed(3)
    x = 0.2 + 0.6 * torch.rand(10, 1, 8, 8, generator=g)
    with torch.no_grad():
        y = m(x).argmax(dim=1)
    cases = targeted_cases("jsma", m, x, y, ThreatModel("l0", UNBOUNDED), num_classes=4, gamma=0.25)
    assert len(cases["results"]) == 3 and cases["targets"].shape == (10, 3)
    for j, r in enumerate(cases["results"]):
        assert torch.equal(r.target, cases["targets"][:, j])
    success = cases["success"]
    best, avg, worst = cases["best"], cases["average"], cases["worst"]
    assert torch.equal(best["success"], success.any(dim=1))
    assert torch.equal(worst["success"], success.all(dim=1))
    torch.testing.assert_close(avg["success"], success.float().mean(dim=1))
    assert avg["success_rate"] == pytest.approx(float(success.float().mean()))
    assert worst["success"].any() and not success.all()  # both branches are exercised
    ok = best["success"]
    assert (best["norms"][ok] <= avg["norms"][ok]).all()
    ok = worst["success"]
    assert (avg["norms"][ok] <= worst["norms"][ok]).all()
    assert torch.isinf(worst["norms"][~ok]).all()
    # The best target is a successful one and its distance is the reported best distance.
    ok = best["success"]
    j = (cases["targets"] == best["target"][:, None]).float().argmax(dim=1)
    assert success[ok, j[ok]].all()
    torch.testing.assert_close(cases["norms"][ok, j[ok]], best["norms"][ok])
    assert (best["target"][~ok] == -1).all()


def test_targeted_cases_rejects_a_given_target(mlp_batch) -> None:
    m, x, y, runner_up = mlp_batch
    with pytest.raises(ConfigError, match="target"):
        targeted_cases(
            "jsma", m, x, y, ThreatModel("l0", UNBOUNDED), num_classes=10, target=runner_up
        )


def test_targeted_grid_lays_out_sources_by_targets() -> None:
    m = make_mlp(classes=4, seed=7)  # predicts each of the 4 classes on some of these inputs
    g = torch.Generator().manual_seed(3)
    x = torch.rand(200, 1, 8, 8, generator=g)
    with torch.no_grad():
        y = m(x).argmax(dim=1)
    threat = ThreatModel("linf", 0.5)
    grid = targeted_grid("pgd", m, x, y, threat, num_classes=4, steps=10)
    first = [int(torch.nonzero(y == c)[0]) for c in range(4)]
    assert grid["index"].tolist() == first and grid["attack"] == "pgd"
    assert grid["x_adv"].shape == (4, 4, 1, 8, 8) and grid["pred"].shape == (4, 4)
    for i in range(4):
        assert torch.equal(grid["x_adv"][i, i], x[first[i]])  # the diagonal is the source
        assert int(grid["pred"][i, i]) == i and not grid["success"][i, i]
        for j in range(4):
            assert threat.contains(x[first[i]][None], grid["x_adv"][i, j][None]).all()
            with torch.no_grad():
                pred = int(m(grid["x_adv"][i, j][None]).argmax())
            assert pred == int(grid["pred"][i, j])  # the row and column are not swapped
            if i != j:
                assert bool(grid["success"][i, j]) == (pred == j)
    assert grid["success"].sum() >= 6  # a strong attack on a small model hits most targets
    with pytest.raises(InputError, match="none of class 3"):
        targeted_grid("pgd", m, x[y != 3], y[y != 3], threat, num_classes=4, steps=2)


def test_jsma_saliency_weighs_the_change_a_feature_can_still_make() -> None:
    """Features 0 and 1 have the larger derivative but sit at 0.99 (they can rise by 0.01 only);
    the pair (2, 3) flips the class. The budget (two features) allows one pair."""
    w = torch.tensor([3.0, 3.0, 1.0, 1.0])

    class Lin(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            f = x.flatten(1) @ w - 7.0
            return torch.stack([-f, f], dim=1)

    x = torch.tensor([[0.99, 0.99, 0.0, 0.0]])
    y, t = torch.tensor([0]), torch.tensor([1])
    for use_logits in (True, False):
        res = jsma(Lin(), x, y, ThreatModel("l0", UNBOUNDED), target=t, gamma=0.5,
                   use_logits=use_logits)  # fmt: skip
        assert res.success.all()
        assert torch.equal(res.x_adv, torch.tensor([[0.99, 0.99, 1.0, 1.0]]))
