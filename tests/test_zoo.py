"""ZOO and AutoZOOM: the estimators against known gradients, exact query counts, success on
torch, scikit-learn and ONNX models, and the AutoZOOM codec."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from advlab import ThreatModel
from advlab.attacks import autozoom, select_targets, zoo
from advlab.attacks.zoo import (
    coordinate_estimate,
    coordinate_probes,
    log_prob_loss,
    random_estimate,
    random_probes,
    unit_directions,
)
from advlab.errors import CheckpointError, ConfigError
from advlab.oracle import ModuleOracle, OnnxOracle, QueryBudget, SklearnOracle
from advlab.rng import SampleRNG

from .conftest import Counting, make_cnn

L2 = ThreatModel("l2", math.inf)


class Linear(nn.Module):
    """logits = W x + b on flattened inputs."""

    def __init__(self, d: int, k: int = 10, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = nn.Parameter(torch.randn(k, d, generator=g, dtype=torch.float64) / d**0.5)
        self.b = nn.Parameter(torch.randn(k, generator=g, dtype=torch.float64))

    def forward(self, x: Tensor) -> Tensor:
        return x.flatten(1) @ self.w.T + self.b


def _loss_and_grad(model: Linear, v: Tensor, y: Tensor, c: float) -> tuple[Tensor, Tensor]:
    """The objective ||v - x0||^2 + c f(v) (x0 = 0.5) and its exact gradient by autograd."""
    v = v.detach().clone().requires_grad_(True)
    # confidence 5 is above the noise floor, so f = max(5 - margin, 0) exactly
    loss = (v - 0.5).pow(2).sum(1) + c * log_prob_loss(model(v), y, None, 5.0)
    (g,) = torch.autograd.grad(loss.sum(), v)
    return loss.detach(), g


def test_zoo_coordinate_estimate_matches_the_gradient_of_a_linear_model() -> None:
    d = 50
    model = Linear(d)
    g0 = torch.Generator().manual_seed(1)
    v = torch.rand(4, d, generator=g0, dtype=torch.float64)
    y = model(v).argmax(1)  # f > 0: the margin term is active
    _, exact = _loss_and_grad(model, v, y, c=3.0)
    coords = torch.stack([torch.randperm(d, generator=g0)[:16] for _ in range(4)])
    probes = coordinate_probes(v, coords, 1e-4)
    assert probes.shape == (4, 33, d)
    assert torch.equal(probes[:, 0], v)
    flat = probes.reshape(-1, d)
    f = log_prob_loss(model(flat), y.repeat_interleave(33), None, 5.0)
    losses = (flat - 0.5).pow(2).sum(1) + 3.0 * f
    est = coordinate_estimate(losses.view(4, 33).detach(), 1e-4)
    assert torch.allclose(est, exact.gather(1, coords), atol=1e-6, rtol=1e-5)


def test_autozoom_random_estimate_is_aligned_with_the_gradient() -> None:
    d = 64
    model = Linear(d, seed=2)
    v = torch.rand(3, d, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    y = model(v).argmax(1)
    _, exact = _loss_and_grad(model, v, y, c=2.0)
    rng = SampleRNG(0, 3)
    q, beta = 2000, 1.0 / d
    u = unit_directions(rng, torch.arange(3), q, d, v)
    assert torch.allclose(u.norm(dim=2), torch.ones(3, q, dtype=torch.float64))
    probes = random_probes(v, u, beta).reshape(-1, d)
    f = log_prob_loss(model(probes), y.repeat_interleave(q + 1), None, 5.0)
    losses = (probes - 0.5).pow(2).sum(1) + 2.0 * f
    est = random_estimate(losses.view(3, q + 1).detach(), u, beta)
    cos = torch.nn.functional.cosine_similarity(est, exact, dim=1)
    assert (cos > 0.7).all(), cos  # E[d u u^T] = I: averaging many directions recovers it
    ratio = est.norm(dim=1) / exact.norm(dim=1)
    assert ((ratio > 0.7) & (ratio < 1.5)).all(), ratio  # unbiased: the right scale too
    one = random_estimate(losses.view(3, q + 1)[:, :2].detach(), u[:, :1], beta)
    cos1 = torch.nn.functional.cosine_similarity(one, exact, dim=1)
    assert (cos1.abs() < 0.9).all()  # a single direction is a noisy estimate
    # with count=1, only the first direction is used
    masked = random_estimate(
        losses.view(3, q + 1).detach(), u, beta, torch.ones(3, dtype=torch.long)
    )
    assert torch.allclose(masked, one)


@pytest.fixture(scope="module")
def setup() -> tuple[nn.Module, Tensor, Tensor]:
    model = make_cnn(seed=4)
    g = torch.Generator().manual_seed(7)
    x = torch.rand(4, 1, 28, 28, generator=g)
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


ATTACKS = {
    "zoo": (zoo, {"steps": 30, "binary_search_steps": 2, "coordinates": 64, "lr": 0.1}),
    "autozoom": (autozoom, {"steps": 150, "switch_every": 50, "lr": 0.1}),
}


@pytest.mark.parametrize("name", ATTACKS)
def test_untargeted_success_and_exact_counts(name: str, setup) -> None:
    model, x, y = setup
    fn, kw = ATTACKS[name]
    oracle = Counting(model, access="scores")
    res = fn(oracle, x, y, L2, **kw)
    assert res.success.all()
    assert int(res.queries.sum()) == oracle.seen == oracle.used
    qts = res.extras["queries_to_success"]
    assert not torch.isnan(qts).any()
    assert ((qts >= 1) & (qts < res.queries)).all()  # the first success came before the end
    with torch.no_grad():
        assert (model(res.x_adv).argmax(1) != y).all()


@pytest.mark.parametrize("name", ATTACKS)
def test_targeted_success(name: str, setup) -> None:
    model, x, y = setup
    fn, kw = ATTACKS[name]
    t = select_targets(model, x, y, "random", seed=1)
    res = fn(model, x, y, L2, target=t, **{**kw, "steps": 3 * kw["steps"]})
    assert res.success.float().mean() >= 0.75
    with torch.no_grad():
        pred = model(res.x_adv).argmax(1)
    assert torch.equal(res.success, pred == t)


@pytest.mark.parametrize("name", ATTACKS)
@pytest.mark.parametrize("per_sample", [2, 300, 700])
def test_per_sample_budget_is_never_exceeded(name: str, per_sample: int, setup) -> None:
    model, x, y = setup
    fn, kw = ATTACKS[name]
    oracle = Counting(model, access="scores", budget=QueryBudget(per_sample=per_sample))
    res = fn(oracle, x, y, L2, **kw)
    assert (res.queries <= per_sample).all(), res.queries
    assert int(res.queries.sum()) == oracle.seen
    qts = res.extras["queries_to_success"]
    assert torch.equal(~torch.isnan(qts) & res.success, res.success)  # a success is recorded


def test_budget_stopped_run_keeps_its_best(setup) -> None:
    """A sample cut short after its first success returns that success."""
    model, x, y = setup
    full = autozoom(model, x, y, L2, steps=150, switch_every=50, lr=0.1)
    cap = int(full.extras["queries_to_success"].max()) + 2
    cut = autozoom(Counting(model, access="scores", budget=QueryBudget(per_sample=cap)), x, y, L2, steps=150,
                   switch_every=50, lr=0.1)  # fmt: skip
    assert cut.success.all()
    assert torch.equal(cut.extras["queries_to_success"], full.extras["queries_to_success"])


def test_same_seed_same_output_and_batch_independent(setup) -> None:
    model, x, y = setup
    kw = ATTACKS["autozoom"][1]
    a = autozoom(model, x, y, L2, seed=5, **kw)
    b = autozoom(model, x, y, L2, seed=5, **kw)
    assert torch.equal(a.x_adv, b.x_adv)
    c = autozoom(model, x, y, L2, seed=6, **kw)
    assert not torch.equal(a.x_adv, c.x_adv)


def test_finite_eps_is_respected(setup) -> None:
    model, x, y = setup
    tm = ThreatModel("l2", 0.5)
    for fn, kw in ATTACKS.values():
        res = fn(model, x, y, tm, **kw)
        assert (res.norms <= 0.5 + 1e-5).all()


def test_zoo_hierarchy_and_importance_run(setup) -> None:
    model, x, y = setup
    res = zoo(model, x, y, L2, steps=40, binary_search_steps=1, coordinates=64, lr=0.1,
              space_sizes=[7, 28], grow_at=[20], importance=True, importance_every=10,
              regions=4, abort_early=False)  # fmt: skip
    assert res.success.any()
    assert res.params["space_sizes"] == [7, 28]


def test_autozoom_without_reduction_on_flat_inputs() -> None:
    model = Linear(30)
    x = torch.rand(3, 30, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = model(x).argmax(1)
    res = autozoom(ModuleOracle(model, access="scores"), x, y, L2, reduction="none", steps=300,
                   lr=0.05)  # fmt: skip
    assert res.success.all()


def test_sklearn_oracle_is_attacked() -> None:
    pytest.importorskip("sklearn")
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression

    d = load_digits()
    xs = torch.tensor(d.data / 16.0, dtype=torch.float32)
    ys = torch.tensor(d.target, dtype=torch.long)
    clf = LogisticRegression(max_iter=300).fit(xs[:1500].numpy(), ys[:1500].numpy())
    x, y = xs[1500:1506].view(-1, 1, 8, 8), ys[1500:1506]
    oracle = SklearnOracle(clf)
    keep = oracle.labels(x) == y
    x, y = x[keep], y[keep]
    oracle = SklearnOracle(clf)
    res = zoo(oracle, x, y, L2, steps=60, binary_search_steps=1, coordinates=64, lr=0.05)
    assert res.success.all()
    assert int(res.queries.sum()) == oracle.used
    res = autozoom(SklearnOracle(clf), x, y, L2, reduced_size=4, steps=300, lr=0.05)
    assert res.success.all()


def test_onnx_oracle_is_attacked(tmp_path: Path, setup) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    model, x, y = setup
    path = tmp_path / "cnn.onnx"
    torch.onnx.export(model, (x[:1],), str(path), input_names=["x"], output_names=["logits"],
                      dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False)  # fmt: skip
    oracle = OnnxOracle(path)
    kw = ATTACKS["autozoom"][1]
    res = autozoom(oracle, x, y, L2, **kw)
    assert res.success.all()
    assert int(res.queries.sum()) == oracle.used
    with torch.no_grad():
        assert (model(res.x_adv).argmax(1) != y).all()


@pytest.mark.parametrize(
    ("fn", "kw", "match"),
    [
        (zoo, {"coordinates": 0}, "coordinates"),
        (zoo, {"h": -1.0}, "h must"),
        (zoo, {"space_sizes": [28, 14], "grow_at": [5]}, "space_sizes"),
        (zoo, {"space_sizes": [14, 28]}, "grow_at"),
        (zoo, {"space_sizes": [14, 56], "grow_at": [5]}, "exceed"),
        (zoo, {"lr": float("nan")}, "lr"),
        (autozoom, {"reduction": "pca"}, "reduction"),
        (autozoom, {"reduction": "ae"}, "codec"),
        (autozoom, {"codec": "/nonexistent/ae.safetensors"}, "does not exist"),
        (autozoom, {"reduction": "bilinear", "codec": "x"}, "only with"),
        (autozoom, {"q": 0}, "q must"),
        (autozoom, {"beta": 0.0}, "beta"),
        (autozoom, {"reduced_size": 40}, "exceeds"),
    ],
)
def test_bad_parameters_are_config_errors(fn, kw: dict, match: str, setup) -> None:
    model, x, y = setup
    with pytest.raises(ConfigError, match=match):
        fn(model, x, y, L2, steps=2, **kw)


# --------------------------------------------------------------------------------------------
# the codec


def test_codec_trains_round_trips_and_drives_autozoom(tmp_path: Path, setup) -> None:
    from advlab.models import load_model
    from advlab.models.codec import codec_factory, load_codec, save_codec, train_codec

    model, x, y = setup
    g = torch.Generator().manual_seed(0)
    small = torch.rand(256, 1, 7, 7, generator=g)  # smooth images: compressible to 14x14
    imgs = torch.nn.functional.interpolate(small, size=(28, 28), mode="bilinear")
    kw = {"epochs": 4, "hidden": 8, "seed": 0, "lr": 3e-3, "batch_size": 32}
    ae, mse = train_codec(imgs, **kw)
    _, mse_same = train_codec(imgs, **kw)
    assert mse == mse_same  # seeded
    with torch.no_grad():
        base = (imgs - imgs.mean(0)).pow(2).mean()
        assert mse < float(base)  # better than predicting the mean image
        assert ae.encode(imgs[:2]).shape == (2, *ae.latent_shape) == (2, 1, 14, 14)
    path = save_codec(ae, tmp_path / "ae", dataset="test", loss=mse, seed=0)
    back = load_codec(path)
    with torch.no_grad():
        assert torch.equal(back(imgs[:4]), ae(imgs[:4]))
    via, meta = load_model(path, factory=codec_factory((1, 28, 28), 1, 1, 8))
    assert meta["extra"]["codec"]["hidden"] == 8 and isinstance(via, type(ae))
    res = autozoom(model, x, y, L2, codec=str(path), steps=150, switch_every=50, lr=0.1)
    assert res.params["reduction"] == "ae"
    assert res.success.any()
    with pytest.raises(ConfigError, match="shape"):
        autozoom(model, x[:, :, :14, :14], y, L2, codec=str(path), steps=2)


def test_codec_errors(tmp_path: Path) -> None:
    from advlab.models import build_model, save_model
    from advlab.models.codec import ConvAutoencoder, load_codec, train_codec

    with pytest.raises(CheckpointError, match="does not exist"):
        load_codec(tmp_path / "missing.safetensors")
    save_model(build_model("mlp"), tmp_path / "m", arch="mlp")
    with pytest.raises(CheckpointError, match="not an advlab codec"):
        load_codec(tmp_path / "m.safetensors")
    with pytest.raises(ConfigError, match="halved"):
        ConvAutoencoder((1, 28, 28), downsample=3)
    with pytest.raises(ConfigError, match="epochs"):
        train_codec(torch.rand(4, 1, 8, 8), epochs=0)


def test_train_codec_cli(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from advlab.cli.main import cli
    from advlab.models.codec import load_codec

    out = tmp_path / "ae.safetensors"
    runner = CliRunner()
    res = runner.invoke(cli, ["train-codec", "--data", "digits", "--out", str(out), "--epochs",
                              "1", "--hidden", "4", "--n", "200"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "epoch 1/1" in res.output and "saved" in res.output
    codec = load_codec(out)
    assert codec.in_shape == (1, 8, 8) and codec.latent_shape == (1, 4, 4)
    bad = runner.invoke(cli, ["train-codec", "--data", str(tmp_path / "none.npz"), "--out",
                              str(tmp_path / "b.safetensors")])  # fmt: skip
    assert bad.exit_code == 2 and "error:" in bad.output and "Traceback" not in bad.output
    bad = runner.invoke(cli, ["train-codec", "--data", "digits", "--out", str(tmp_path)])
    assert bad.exit_code == 2 and "folder" in bad.output
    bad = runner.invoke(cli, ["train-codec", "--data", "digits", "--downsample", "4",
                              "--out", str(tmp_path / "c.safetensors")])  # fmt: skip
    assert bad.exit_code == 2 and "halved" in bad.output
