"""Transfer attacks: the substitute attack, transfer verification, ensembles, universal
perturbations and the transferability matrix (advlab.transfer)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from advlab.attacks import fgsm
from advlab.cli.main import cli
from advlab.data import load_dataset
from advlab.errors import AccessError, ConfigError
from advlab.oracle import CallableOracle, ModuleOracle, OnnxOracle, QueryBudget, SklearnOracle
from advlab.threat import ThreatModel
from advlab.transfer import (
    Ensemble,
    LinearScores,
    MatrixConfig,
    fooling_rate,
    jacobian_augmentation,
    step_size,
    train_substitute,
    transfer_attack,
    universal_perturbation,
    verify_on,
)
from tests.conftest import LinearBinary


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    s = load_dataset("digits")
    assert s.train is not None
    return s.train.x, s.train.y, s.test.x, s.test.y


@pytest.fixture(scope="module")
def digits_lr(digits):  # type: ignore[no-untyped-def]
    from sklearn.linear_model import LogisticRegression

    xtr, ytr, _, _ = digits
    return LogisticRegression(max_iter=300).fit(xtr.flatten(1).numpy(), ytr.numpy())


def _linear(seed: int, d: int = 64, c: int = 10) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    m = nn.Sequential(nn.Flatten(), nn.Linear(d, c))
    with torch.no_grad():
        m[1].weight.copy_(torch.randn(c, d, generator=g))
        m[1].bias.copy_(torch.randn(c, generator=g))
    return m.eval()


# --------------------------------------------------------------------------------------------
# substitute training


def test_substitute_reads_only_labels_and_counts_queries_exactly() -> None:
    target = _linear(0)
    oracle = ModuleOracle(target, access="labels")  # scores or gradients would raise
    seeds = torch.rand(20, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    sub = train_substitute(oracle, seeds, arch={"name": "mlp", "hidden": (16,)}, rounds=3,
                           lam=0.1, tau=2, epochs=2, seed=0)  # fmt: skip
    assert oracle.used == sub.queries == 20 * 2**3
    assert [r["size"] for r in sub.history] == [20, 40, 80, 160]
    assert [r["queries"] for r in sub.history] == [20, 40, 80, 160]
    assert [r["lam"] for r in sub.history] == [0.1, 0.1, -0.1, None]
    assert sub.x.shape == (160, 1, 8, 8) and sub.labels.shape == (160,)
    assert torch.equal(sub.x[:20], seeds)
    # the labels are the oracle's, on every point of the final set
    assert torch.equal(sub.labels, target(sub.x).argmax(1))
    assert bool((sub.x >= 0).all()) and bool((sub.x <= 1).all())


def test_substitute_works_with_a_label_only_callable_and_learns_a_linear_oracle() -> None:
    target = _linear(2)
    calls = []

    def labels(x: torch.Tensor) -> torch.Tensor:
        calls.append(len(x))
        return target(x).argmax(1)

    oracle = CallableOracle(labels, returns="labels", num_classes=10)
    g = torch.Generator().manual_seed(3)
    seeds, held = torch.rand(50, 1, 8, 8, generator=g), torch.rand(500, 1, 8, 8, generator=g)
    sub = train_substitute(oracle, seeds, arch={"name": "mlp", "hidden": (64,)}, rounds=4,
                           epochs=10, holdout=(held, target(held).argmax(1)), seed=0)  # fmt: skip
    assert sum(calls) == oracle.used == 50 * 2**4
    agree = [r["agreement"] for r in sub.history]
    assert agree[-1] > agree[0] and agree[-1] > 0.5  # augmentation helps, far above chance


def test_substitute_stops_at_the_total_budget() -> None:
    oracle = ModuleOracle(_linear(0), access="labels", budget=QueryBudget(total=100))
    seeds = torch.rand(20, 1, 8, 8)
    sub = train_substitute(oracle, seeds, arch={"name": "mlp", "hidden": (8,)}, rounds=3,
                           epochs=1)  # fmt: skip
    assert oracle.used == sub.queries == 80  # 20 + 20 + 40; the next 80 do not fit
    assert sub.stopped is not None and "budget" in sub.stopped
    assert len(sub.history) == 3


def test_step_size_flips_every_tau_rounds() -> None:
    assert [step_size(0.1, r, 3) for r in range(7)] == [0.1, 0.1, 0.1, -0.1, -0.1, -0.1, 0.1]
    assert step_size(0.1, 5, None) == 0.1


def test_jacobian_augmentation_on_a_linear_model_follows_the_weight_sign(
    linear_binary: LinearBinary,
) -> None:
    # p_1 = sigmoid(w.x + b): d p_1 / dx = p1 (1 - p1) w, d p_0 / dx = -p0 p1 w
    x = 0.3 + 0.4 * torch.rand(6, 1, 8, 8)
    sign = linear_binary.w.detach().sign().view(1, 1, 8, 8)
    one, zero = torch.ones(6, dtype=torch.long), torch.zeros(6, dtype=torch.long)
    out1 = jacobian_augmentation(linear_binary, x, one, 0.1)
    out0 = jacobian_augmentation(linear_binary, x, zero, 0.1)
    assert torch.allclose(out1, (x + 0.1 * sign).clamp(0, 1))
    assert torch.allclose(out0, (x - 0.1 * sign).clamp(0, 1))
    assert torch.allclose(jacobian_augmentation(linear_binary, x, one, -0.1), out0)


def test_substitute_rejects_bad_arguments() -> None:
    oracle = ModuleOracle(_linear(0), access="labels")
    x = torch.rand(4, 1, 8, 8)
    with pytest.raises(ConfigError, match="lam"):
        train_substitute(oracle, x, lam=0.0)
    with pytest.raises(ConfigError, match="tau"):
        train_substitute(oracle, x, tau=0)
    with pytest.raises(Exception, match="box"):
        train_substitute(oracle, x + 2.0)
    label_only = CallableOracle(lambda v: torch.zeros(len(v), dtype=torch.long), returns="labels")
    with pytest.raises(ConfigError, match="num_classes"):
        train_substitute(label_only, x)


# --------------------------------------------------------------------------------------------
# transfer verification


def test_transfer_attack_is_judged_by_the_target_with_one_query_per_sample(
    digits, digits_lr
) -> None:  # type: ignore[no-untyped-def]
    _, _, x, y = digits
    x, y = x[:60], y[:60]
    source = LinearScores(digits_lr).eval()
    tree_data = digits[0].flatten(1).numpy(), digits[1].numpy()
    from sklearn.tree import DecisionTreeClassifier

    tree = DecisionTreeClassifier(random_state=0).fit(*tree_data)
    oracle = SklearnOracle(tree, access="labels")
    threat = ThreatModel("linf", 0.3)
    res = transfer_attack(source, oracle, x, y, threat, attack="fgsm")
    assert oracle.used == 60 and torch.equal(res.queries, torch.ones(60, dtype=torch.long))
    assert bool(threat.contains(res.x_adv, x).all())
    fresh = torch.as_tensor(tree.predict(res.x_adv.flatten(1).numpy()))
    assert torch.equal(res.pred, fresh) and torch.equal(res.success, fresh != y)
    assert res.success_rate > 0.5  # LR examples transfer to a tree at eps 0.3
    white = fgsm(source, x, y, threat)
    assert torch.equal(res.x_adv, white.x_adv)
    assert torch.equal(res.extras["source_success"], white.success)
    assert res.attack == "transfer:fgsm" and res.params["attack"] == "fgsm"


def test_targeted_transfer_and_projection(digits, digits_lr) -> None:  # type: ignore[no-untyped-def]
    _, _, x, y = digits
    x, y = x[:30], y[:30]
    source = LinearScores(digits_lr).eval()
    t = (y + 1) % 10
    target = SklearnOracle(digits_lr)  # the same model: white-box == transfer
    threat = ThreatModel("l2", 2.0)
    res = transfer_attack(source, target, x, y, threat, attack="pgd", target=t,
                          params={"steps": 20})  # fmt: skip
    assert bool(threat.contains(res.x_adv, x).all())
    assert torch.equal(res.success, res.pred == t)
    assert res.success_rate > 0.5
    # a candidate outside the ball is projected before the target sees it
    far = (x + 0.5).clamp(0, 1)
    v = verify_on(target, x, far, y, ThreatModel("linf", 0.1))
    assert float((v.x_adv - x).abs().max()) <= 0.1 + 1e-6


def test_onnx_target_is_attacked_through_its_oracle(tmp_path: Path, digits, digits_lr) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("onnxruntime")
    import warnings

    _, _, x, y = digits
    x, y = x[:50], y[:50]
    model = LinearScores(digits_lr).eval()
    path = tmp_path / "lr.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x[:2],), str(path), input_names=["x"], output_names=["z"],
                          dynamic_axes={"x": {0: "b"}, "z": {0: "b"}}, dynamo=False)  # fmt: skip
    oracle = OnnxOracle(path, access="labels")
    res = transfer_attack(model, oracle, x, y, ThreatModel("linf", 0.3))
    assert oracle.used == 50
    assert res.success_rate >= 0.9
    assert torch.equal(res.pred, model(res.x_adv).argmax(1))


# --------------------------------------------------------------------------------------------
# linear twins and ensembles


def test_linear_scores_match_scikit_learn(digits, digits_lr) -> None:  # type: ignore[no-untyped-def]
    from sklearn.svm import LinearSVC

    _, _, x, _ = digits
    flat = x.flatten(1).numpy()
    z = LinearScores(digits_lr)(x).detach().numpy()
    np.testing.assert_allclose(z, digits_lr.decision_function(flat), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(
        torch.softmax(torch.from_numpy(z), 1).numpy(), digits_lr.predict_proba(flat), atol=1e-5
    )
    xtr, ytr = digits[0].flatten(1).numpy(), digits[1].numpy()
    binary = LinearSVC(dual=False).fit(xtr, (ytr == 3).astype(int))
    zb = LinearScores(binary)(x).detach()
    assert zb.shape == (len(x), 2)
    assert np.array_equal(zb.argmax(1).numpy(), binary.predict(flat))


def test_ensemble_logit_and_probability_fusion_known_answer() -> None:
    a, b = _linear(0), _linear(1)
    x = torch.rand(5, 1, 8, 8)
    ens = Ensemble([a, b], weights=[3, 1], mode="logits")
    wa, wb = a[1].weight, b[1].weight
    fused = nn.Linear(64, 10)
    with torch.no_grad():
        fused.weight.copy_(0.75 * wa + 0.25 * wb)
        fused.bias.copy_(0.75 * a[1].bias + 0.25 * b[1].bias)
    assert torch.allclose(ens(x), fused(x.flatten(1)), atol=1e-5)
    prob = Ensemble([a, b], weights=[3, 1])
    want = torch.log(0.75 * torch.softmax(a(x), 1) + 0.25 * torch.softmax(b(x), 1))
    assert torch.allclose(prob(x), want, atol=1e-5)
    assert torch.allclose(Ensemble([a])(x), torch.log_softmax(a(x), 1), atol=1e-6)
    with pytest.raises(ConfigError, match="weights"):
        Ensemble([a, b], weights=[1])
    with pytest.raises(ConfigError, match="mode"):
        Ensemble([a], mode="votes")
    with pytest.raises(ConfigError, match="> 0"):
        Ensemble([a, b], weights=[1, 0])


def test_ensemble_attack_fools_every_member_more_often_than_one_member() -> None:
    members = [_linear(s) for s in range(3)]
    x = torch.rand(40, 1, 8, 8, generator=torch.Generator().manual_seed(5))
    y = members[0](x).argmax(1)
    threat = ThreatModel("linf", 0.05)
    ens = Ensemble(members, mode="logits").eval()
    both = transfer_attack(ens, members[1], x, y, threat, attack="pgd", params={"steps": 20})
    single = transfer_attack(members[0], members[1], x, y, threat, attack="pgd",
                             params={"steps": 20})  # fmt: skip
    assert both.success_rate >= single.success_rate


# --------------------------------------------------------------------------------------------
# universal perturbations


@pytest.mark.parametrize("norm,eps", [("linf", 0.05), ("l2", 0.5)])
def test_universal_perturbation_lies_in_the_ball_and_its_rate_is_recomputed(
    norm: str, eps: float
) -> None:
    model = _linear(4)
    x = 0.3 + 0.4 * torch.rand(30, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    threat = ThreatModel(norm, eps)
    uap = universal_perturbation(model, x, threat, max_passes=3, target_rate=1.0)
    assert uap.delta.shape == (1, 1, 8, 8)
    assert float(threat.norms(uap.delta)[0]) <= eps * (1 + 1e-5)
    clean = model(x).argmax(1)
    recount = float((model((x + uap.delta).clamp(0, 1)).argmax(1) != clean).float().mean())
    assert uap.fooling_rate == pytest.approx(recount)
    assert fooling_rate(model, x, uap.delta) == pytest.approx(recount)
    assert len(uap.history) <= 3 and uap.history[-1]["fooling_rate"] == uap.fooling_rate
    assert torch.equal(uap.apply(x), (x + uap.delta).clamp(0, 1))


def test_universal_perturbation_on_a_linear_binary_model_reaches_the_closed_form(
    linear_binary: LinearBinary,
) -> None:
    # every point on the class-0 side; the best L-inf perturbation is eps * sign(w), which fools
    # exactly the points with f(x) + eps * ||w||_1 > 0, and no perturbation fools more.
    g = torch.Generator().manual_seed(7)
    w, b = linear_binary.w.detach(), float(linear_binary.b.detach())
    x = 0.5 + 0.05 * torch.randn(60, 64, generator=g)
    f = x @ w + b
    want = -(0.05 + 2.0 * torch.rand(60, generator=g))  # margins in [-2.05, -0.05]
    x = (x + ((want - f) / (w @ w))[:, None] * w).view(60, 1, 8, 8)
    eps = 0.02
    best = float(((want + eps * w.abs().sum()) > 0).float().mean())
    assert 0.2 < best < 1.0
    uap = universal_perturbation(linear_binary, x, ThreatModel("linf", eps), max_passes=10,
                                 target_rate=1.0)  # fmt: skip
    assert uap.fooling_rate <= best + 1e-9
    assert uap.fooling_rate >= best - 0.05


def test_universal_perturbation_needs_gradients() -> None:
    oracle = ModuleOracle(_linear(0), access="labels")
    with pytest.raises(AccessError):
        universal_perturbation(oracle, torch.rand(4, 1, 8, 8), ThreatModel("linf", 0.1))
    with pytest.raises(ConfigError, match="finite eps"):
        universal_perturbation(_linear(0), torch.rand(4, 1, 8, 8), ThreatModel("linf", math.inf))


# --------------------------------------------------------------------------------------------
# the transferability matrix


def test_transfer_matrix_cli_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "tm"
    args = ["transfer-matrix", "--data", "digits", "--dnn-arch", "mlp", "--quick", "-n", "80",
            "--onnx", "--out", str(out)]  # fmt: skip
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    data = json.loads((out / "transfer-matrix.json").read_text())
    fams = data["families"]
    assert fams == ["dnn", "lr", "svm", "tree", "knn", "ens"]
    m = np.asarray(data["matrix"])
    assert m.shape == (6, 6) and bool(((m >= 0) & (m <= 1)).all())
    assert data["method"] == {"dnn": "fgsm", "lr": "fgsm", "svm": "fgsm",
                              "tree": "substitute+fgsm", "knn": "substitute+fgsm",
                              "ens": "substitute+fgsm"}  # fmt: skip
    for f in ("tree", "knn", "ens"):
        assert data["substitutes"][f]["queries"] == 150 * 2**3  # --quick: 3 rounds
    diff = [fams.index(f) for f in ("dnn", "lr", "svm")]
    diag = np.mean([m[i, i] for i in diff])
    off = np.mean([m[i, j] for i in diff for j in range(6) if j != i])
    assert diag >= off
    assert (out / "transfer-matrix.png").stat().st_size > 1000
    assert "<table>" in (out / "transfer-matrix.html").read_text()
    assert "DNN" in res.output and "clean error" in res.output


def test_transfer_matrix_rejects_unknown_families(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="families"):
        MatrixConfig(families=("dnn", "rf"))
    res = CliRunner().invoke(cli, ["transfer-matrix", "--families", "dnn,forest", "--out",
                                   str(tmp_path)])  # fmt: skip
    assert res.exit_code == 2 and "families" in res.output
