"""Square attack and HopSkipJump: exact query accounting, labels-only access, known answers on
linear models, batch independence, and scikit-learn and ONNX targets."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from advlab import ThreatModel
from advlab.attacks import hop_skip_jump, square
from advlab.attacks.square import p_schedule
from advlab.errors import AccessError, ConfigError
from advlab.oracle import CallableOracle, ModuleOracle, OnnxOracle, QueryBudget, SklearnOracle
from advlab.rng import SampleRNG

from .conftest import Counting, LinearBinary, RowwiseMLP, linear_margin_batch


@pytest.fixture(scope="module")
def digits() -> tuple[Tensor, Tensor, nn.Module]:
    """scikit-learn's 8x8 digits in [0, 1] and a linear softmax model trained on them."""
    from sklearn.datasets import load_digits

    xd, yd = load_digits(return_X_y=True)
    x = torch.tensor(xd / 16, dtype=torch.float32).view(-1, 1, 8, 8)
    y = torch.tensor(yd)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(150):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return x, y, model.eval()


def correct(model: nn.Module, x: Tensor, y: Tensor, n: int) -> tuple[Tensor, Tensor]:
    with torch.no_grad():
        ok = model(x).argmax(1) == y
    return x[ok][:n], y[ok][:n]


# -- Square ---------------------------------------------------------------------------------------


def test_p_schedule_halves_at_the_papers_iterations() -> None:
    assert p_schedule(0.8, 0, 10000) == 0.8
    assert p_schedule(0.8, 10, 10000) == 0.8  # halved *after* iteration 10
    assert p_schedule(0.8, 11, 10000) == 0.4
    assert p_schedule(0.8, 51, 10000) == 0.2
    assert p_schedule(0.8, 9999, 10000) == 0.8 / 2**9
    assert p_schedule(0.8, 2, 1000) == 0.4  # rescaled: iteration 2 of 1,000 is 20 of 10,000


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_square_counts_exactly_and_stops_at_success(norm: str, digits) -> None:
    x, y, model = digits
    x, y = correct(model, x, y, 24)
    eps = {"linf": 0.3, "l2": 2.0}[norm]
    oracle = Counting(model)
    res = square(oracle, x, y, ThreatModel(norm, eps), n_queries=300)
    assert int(res.queries.sum()) == oracle.seen == oracle.used
    assert (res.queries <= 300).all()
    found = res.extras["queries_to_success"]
    assert res.success.float().mean() >= 0.75
    # a successful sample stops querying: its count is its search up to success + verification
    assert torch.equal(res.queries[res.success].double(), found[res.success] + 1)
    assert torch.isnan(found[~res.success]).all()
    assert (res.queries[~res.success] == 300).all()  # the failures used the whole budget
    assert ThreatModel(norm, eps).contains(res.x_adv, x).all()


def test_square_only_keeps_candidates_that_lower_the_loss(digits) -> None:
    """Random search accepts a candidate only if it lowers the margin loss: where the attack
    fails, the answer's margin is below the start's (the same seed draws the same start)."""
    from advlab.attacks.base import margin

    x, y, model = digits
    x, y = correct(model, x, y, 40)
    tm = ThreatModel("linf", 0.05)
    start = square(model, x, y, tm, n_queries=2)
    res = square(model, x, y, tm, n_queries=200)
    with torch.no_grad():
        m0, m1 = margin(model(start.x_adv), y), margin(model(res.x_adv), y)
    fail = ~res.success
    assert fail.sum() >= 5
    assert (m1[fail] >= m0[fail] - 1e-6).all()  # the margin max_j z_j - z_y never drops
    assert (m1[fail] > m0[fail] + 1e-4).float().mean() >= 0.8  # and mostly rises


def test_square_per_sample_budget_is_never_exceeded(digits) -> None:
    x, y, model = digits
    x, y = correct(model, x, y, 12)
    oracle = Counting(model, budget=QueryBudget(per_sample=7))
    res = square(oracle, x, y, ThreatModel("linf", 0.1), n_queries=1000)
    assert (res.queries <= 7).all() and int(res.queries.sum()) == oracle.seen
    assert res.exhausted is not None and bool(res.exhausted.any())
    assert not bool((res.exhausted & res.success).any())


def test_square_linf_starts_from_vertical_stripes() -> None:
    model = RowwiseMLP(1)
    x = torch.full((4, 1, 28, 28), 0.5)
    y = model(x).argmax(1)
    res = square(model, x, y, ThreatModel("linf", 0.1), n_queries=2)  # the start, verified
    d = res.x_adv - x
    assert torch.allclose(d.abs(), torch.full_like(d, 0.1), atol=1e-6)
    assert torch.equal(d, d[:, :, :1, :].expand_as(d))  # one sign per column
    assert (d > 0).any() and (d < 0).any()


def test_square_l2_start_and_candidates_have_norm_eps() -> None:
    model = RowwiseMLP(1)
    x = torch.full((3, 1, 28, 28), 0.5)
    y = model(x).argmax(1)
    tm = ThreatModel("l2", 1.5)
    for q in (2, 30):  # the start alone; after random-search steps
        res = square(model, x, y, tm, n_queries=q)
        torch.testing.assert_close(res.norms, torch.full((3,), 1.5), atol=1e-4, rtol=0)


def test_square_is_batch_independent_and_seeded() -> None:
    model = RowwiseMLP(2)
    g = torch.Generator().manual_seed(3)
    x = torch.rand(5, 1, 28, 28, generator=g)
    y = model(x).argmax(1)
    tm = ThreatModel("linf", 0.05)
    full = square(model, x, y, tm, n_queries=60, seed=4)
    again = square(model, x, y, tm, n_queries=60, seed=4)
    assert torch.equal(full.x_adv, again.x_adv)
    for i in (0, 3):
        rng = SampleRNG(4, torch.tensor([i]))
        one = square(model, x[i : i + 1], y[i : i + 1], tm, n_queries=60, seed=rng)
        assert torch.equal(one.x_adv[0], full.x_adv[i]) and int(one.queries) == full.queries[i]


def test_square_targeted_reaches_the_target(digits) -> None:
    x, y, model = digits
    x, y = correct(model, x, y, 10)
    t = (y + 1) % 10
    res = square(model, x, y, ThreatModel("linf", 0.4), target=t, n_queries=500)
    assert res.success.float().mean() >= 0.6
    assert torch.equal(res.pred[res.success], t[res.success])


def test_square_needs_scores_and_a_finite_eps(digits) -> None:
    x, y, model = digits
    with pytest.raises(AccessError, match="needs scores"):
        square(ModuleOracle(model, access="labels"), x[:2], y[:2], ThreatModel("linf", 0.1))
    with pytest.raises(ConfigError, match="finite eps"):
        square(model, x[:2], y[:2], ThreatModel("linf", math.inf))
    with pytest.raises(ConfigError, match="p_init"):
        square(model, x[:2], y[:2], ThreatModel("linf", 0.1), p_init=1.5)


# -- HopSkipJump ----------------------------------------------------------------------------------


def test_hsj_reaches_the_analytic_minimal_l2_on_a_linear_model(linear_binary: LinearBinary) -> None:
    x, y, f = linear_margin_batch(linear_binary, n=8)
    w = linear_binary.w.detach()
    oracle = ModuleOracle(linear_binary, access="labels")
    res = hop_skip_jump(oracle, x, y, ThreatModel("l2", math.inf), max_queries=3000, overshoot=0.0)
    assert res.success.all()
    exact = f / w.norm()
    ratio = res.norms / exact
    assert (ratio >= 1 - 1e-4).all() and (ratio <= 1.1).all(), ratio
    # the answer is the binary search's end: on the true hyperplane, on the adversarial side,
    # within the bracket theta = d^(-3/2) of the blend toward a point a few times as far
    with torch.no_grad():
        fa = res.x_adv.flatten(1) @ w + linear_binary.b
    assert ((fa > 0).long() != y).all()
    assert (fa.abs() / w.norm() <= 3 * 64**-1.5 * exact).all(), fa.abs() / w.norm()


def test_hsj_boundary_point_after_the_first_binary_search(linear_binary: LinearBinary) -> None:
    """With no iterations, the answer is the start's binary search toward x: a point on the
    true decision boundary (within the paper's threshold theta = d^(-3/2) of the blend)."""
    x, y, f = linear_margin_batch(linear_binary, n=6)
    w, b = linear_binary.w.detach(), linear_binary.b.detach()
    res = hop_skip_jump(
        linear_binary, x, y, ThreatModel("l2", math.inf), num_iterations=1, max_queries=40,
        overshoot=0.0,
    )  # fmt: skip
    assert res.success.all()
    with torch.no_grad():
        fa = res.x_adv.flatten(1) @ w + b
    # start x' has |f(x')| <= ||w||_1 + |b|; the bracket is theta = 64^-1.5 of the blend
    bound = (w.abs().sum() + b.abs() + f) * 64**-1.5
    assert ((fa > 0).long() != y).all() and (fa.abs() <= bound).all(), (fa, bound)


def test_hsj_multiclass_linear_model_l2_and_linf() -> None:
    g = torch.Generator().manual_seed(5)
    lin = nn.Sequential(nn.Flatten(), nn.Linear(64, 4)).eval()
    with torch.no_grad():
        lin[1].weight.copy_(torch.randn(4, 64, generator=g))
        lin[1].bias.zero_()
    x = (0.5 + 0.01 * torch.randn(6, 1, 8, 8, generator=g)).clamp(0, 1)
    with torch.no_grad():
        z = lin(x)
    y = z.argmax(1)
    wm = lin[1].weight.detach()
    others = [[j for j in range(4) if j != int(c)] for c in y]
    for norm, dual in (("l2", 2.0), ("linf", 1.0)):
        exact = torch.stack([
            min((z[i, y[i]] - z[i, j]) / (wm[y[i]] - wm[j]).norm(p=dual) for j in others[i])
            for i in range(len(y))
        ])  # fmt: skip
        res = hop_skip_jump(
            ModuleOracle(lin, access="labels"), x, y, ThreatModel(norm, math.inf),
            max_queries=4000,
        )  # fmt: skip
        assert res.success.all()
        ratio = res.norms / exact
        assert (ratio >= 1 - 1e-4).all(), (norm, ratio)  # never below the exact minimum
        if norm == "l2":
            assert (ratio <= 1.1).all(), ratio
        else:  # the sign steps converge more slowly, and a walk may settle on another class's
            # face of the boundary (a local minimum): the median is close, none is far off
            assert ratio.median() <= 1.15 and (ratio <= 2.5).all(), ratio


def test_hsj_never_reads_scores_label_only_oracles_work(digits) -> None:
    x, y, model = digits
    x, y = correct(model, x, y, 6)
    labels_only = ModuleOracle(model, access="labels")
    with pytest.raises(AccessError, match="needs scores"):
        labels_only.scores(x[:1])
    used = labels_only.used
    res = hop_skip_jump(labels_only, x, y, ThreatModel("l2", math.inf), max_queries=500)
    assert res.success.all() and labels_only.used - used == int(res.queries.sum())
    fn = CallableOracle(lambda z: model(z).argmax(1), returns="labels", num_classes=10)
    res2 = hop_skip_jump(fn, x, y, ThreatModel("linf", math.inf), max_queries=500)
    assert res2.success.all() and fn.used == int(res2.queries.sum())


def test_hsj_counts_exactly_and_respects_budgets(digits) -> None:
    x, y, model = digits
    x, y = correct(model, x, y, 8)
    oracle = Counting(model, access="labels")
    res = hop_skip_jump(oracle, x, y, ThreatModel("l2", math.inf), max_queries=700)
    assert int(res.queries.sum()) == oracle.seen == oracle.used
    assert (res.queries <= 700).all() and (res.queries >= 600).all()  # the budget is used
    found = res.extras["queries_to_success"]
    assert (found[res.success] >= 1).all() and (found[res.success] < res.queries[res.success]).all()
    capped = Counting(model, access="labels", budget=QueryBudget(per_sample=90))
    res = hop_skip_jump(capped, x, y, ThreatModel("l2", math.inf), max_queries=700)
    assert (res.queries <= 90).all() and int(res.queries.sum()) == capped.seen


def test_hsj_keeps_inside_a_finite_ball(digits) -> None:
    x, y, model = digits
    x, y = correct(model, x, y, 8)
    free = hop_skip_jump(model, x, y, ThreatModel("l2", math.inf), max_queries=800)
    eps = float(free.norms.median())
    tm = ThreatModel("l2", eps)
    res = hop_skip_jump(model, x, y, tm, max_queries=800)
    assert tm.contains(res.x_adv, x).all()
    assert res.success.any() and (res.norms[res.success] <= eps * (1 + 1e-5)).all()
    found = res.extras["queries_to_success"]
    assert torch.equal(torch.isnan(found), ~res.success)


def test_hsj_is_batch_independent_and_seeded() -> None:
    model = RowwiseMLP(2)
    g = torch.Generator().manual_seed(3)
    x = torch.rand(4, 1, 28, 28, generator=g)
    y = model(x).argmax(1)
    tm = ThreatModel("l2", math.inf)
    kw = {"max_queries": 300, "init_num_evals": 20}
    full = hop_skip_jump(model, x, y, tm, seed=2, **kw)
    assert torch.equal(full.x_adv, hop_skip_jump(model, x, y, tm, seed=2, **kw).x_adv)
    for i in (1, 2):
        one = hop_skip_jump(model, x[i : i + 1], y[i : i + 1], tm, seed=SampleRNG(2, torch.tensor([i])), **kw)  # fmt: skip
        assert torch.equal(one.x_adv[0], full.x_adv[i]) and int(one.queries) == full.queries[i]


def test_hsj_bad_parameters(digits) -> None:
    x, y, model = digits
    with pytest.raises(ConfigError, match="init_num_evals"):
        hop_skip_jump(model, x[:2], y[:2], ThreatModel("l2", math.inf), init_num_evals=50,
                      max_num_evals=10)  # fmt: skip
    with pytest.raises(ConfigError, match="overshoot"):
        hop_skip_jump(model, x[:2], y[:2], ThreatModel("l2", math.inf), overshoot=-0.1)


# -- other model families -------------------------------------------------------------------------


def test_a_scikit_learn_model_is_attacked() -> None:
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression

    xd, yd = load_digits(return_X_y=True)
    lr = LogisticRegression(max_iter=500).fit(xd / 16, yd)
    x = torch.tensor(xd[:40] / 16, dtype=torch.float32).view(-1, 1, 8, 8)
    y = torch.tensor(lr.predict(xd[:40] / 16))
    res = square(SklearnOracle(lr), x[:20], y[:20], ThreatModel("linf", 0.3), n_queries=500)
    assert res.success.float().mean() >= 0.9
    labels = SklearnOracle(lr, scores=False)
    hs = hop_skip_jump(labels, x[:10], y[:10], ThreatModel("l2", math.inf), max_queries=600)
    assert hs.success.all() and labels.used == int(hs.queries.sum())


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_an_onnx_model_is_attacked(tmp_path, digits) -> None:
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    x, y, model = digits
    x, y = correct(model, x, y, 12)
    path = tmp_path / "digits.onnx"
    torch.onnx.export(
        model, (x[:1],), str(path), input_names=["x"], output_names=["logits"],
        dynamic_axes={"x": {0: "n"}, "logits": {0: "n"}}, dynamo=False,  # no onnxscript needed
    )  # fmt: skip
    oracle = OnnxOracle(path)
    res = square(oracle, x, y, ThreatModel("linf", 0.3), n_queries=500)
    assert res.success.float().mean() >= 0.9 and oracle.used == int(res.queries.sum())
    labels = OnnxOracle(path, access="labels")
    hs = hop_skip_jump(labels, x[:6], y[:6], ThreatModel("l2", math.inf), max_queries=500)
    assert hs.success.all()
    with torch.no_grad():
        assert torch.equal(hs.pred, model(hs.x_adv).argmax(1))
