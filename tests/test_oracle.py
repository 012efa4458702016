"""The oracle: one door for every query, exact per-sample counts, budgets, access levels and
the adapters. Every registered attack is checked, so a new attack is tested for free."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor, nn

import advlab  # noqa: F401  (registers the attacks)
from advlab import ATTACKS, ThreatModel
from advlab.attacks import get_attack
from advlab.attacks.base import AttackRun, AttackSpec, run_attack
from advlab.errors import AccessError, BudgetExhausted, ConfigError, InputError, ModelOutputError
from advlab.oracle import (
    Access,
    CallableOracle,
    ModuleOracle,
    OnnxOracle,
    Oracle,
    QueryBudget,
    SklearnOracle,
    TopK,
    as_oracle,
)

from .conftest import Counting, RowwiseMLP
from .test_attack_properties import FAST, cases, threat_for


@pytest.fixture(scope="module")
def setup() -> tuple[nn.Module, Tensor, Tensor]:
    model = RowwiseMLP(3)
    g = torch.Generator().manual_seed(4)
    x = torch.rand(5, 1, 28, 28, generator=g)
    with torch.no_grad():
        y = model(x).argmax(dim=1)
    y[4] = (y[4] + 1) % 10  # one sample misclassified already
    return model, x, y


def params(name: str) -> dict[str, Any]:
    return dict(FAST.get(name, {}))


@pytest.mark.parametrize(("name", "norm"), cases())
def test_counts_are_the_oracles_own_count_row_by_row(name: str, norm: str, setup) -> None:
    """The batch's per-sample counts sum to what the oracle saw, and each row's count is what
    the same sample costs when attacked alone."""
    model, x, y = setup
    threat = threat_for(name, norm)
    oracle = Counting(model)
    res = get_attack(name)(oracle, x, y, threat, **params(name))
    assert int(res.queries.sum()) == oracle.seen == oracle.used
    assert (res.queries >= 1).all()  # at least the verification
    for i in range(x.shape[0]):
        solo = Counting(model)
        one = get_attack(name)(solo, x[i : i + 1], y[i : i + 1], threat, **params(name),
                               seed=get_rng_for_row(i))  # fmt: skip
        assert int(one.queries) == solo.seen == int(res.queries[i]), (name, i)


def get_rng_for_row(i: int) -> Any:
    from advlab.rng import SampleRNG

    return SampleRNG(0, torch.tensor([i]))  # the stream row i uses inside the batch (seed 0)


@pytest.mark.parametrize(("name", "norm"), cases())
@pytest.mark.parametrize("per_sample", [1, 3, 8])
def test_per_sample_budget_is_never_exceeded(name: str, norm: str, per_sample: int, setup) -> None:
    model, x, y = setup
    threat = threat_for(name, norm)
    oracle = Counting(model, budget=QueryBudget(per_sample=per_sample))
    res = get_attack(name)(oracle, x, y, threat, **params(name))
    assert (res.queries <= per_sample).all(), res.queries
    assert int(res.queries.sum()) == oracle.seen
    assert threat.contains(res.x_adv, x).all()  # what it returns is still a valid answer
    with torch.no_grad():
        assert torch.equal(res.pred, model(res.x_adv).argmax(dim=1))
    full = get_attack(name)(model, x, y, threat, **params(name))
    flagged = res.exhausted if res.exhausted is not None else torch.zeros_like(res.success)
    # a sample that needed more than its budget and did not succeed is flagged, with the reason
    assert not bool(((full.queries > per_sample) & ~res.success & ~flagged).any())
    assert not bool((flagged & res.success).any())  # a success is never "cut short"
    assert (res.stopped is not None) == bool(flagged.any())
    if res.stopped is not None:
        assert "query budget" in res.stopped
        recs = res.records(list(range(len(res))), y.tolist())
        assert [r.stopped is not None for r in recs] == flagged.tolist()


@pytest.mark.parametrize(("name", "norm"), cases())
def test_total_budget_is_never_exceeded(name: str, norm: str, setup) -> None:
    model, x, y = setup
    threat = threat_for(name, norm)
    total = 3 * x.shape[0] + 2
    oracle = Counting(model, budget=QueryBudget(total=total))
    res = get_attack(name)(oracle, x, y, threat, **params(name))
    assert oracle.seen <= total and oracle.used == oracle.seen == int(res.queries.sum())
    # the next call cannot even verify its batch: refused before anything is sent
    if oracle.remaining < x.shape[0]:
        with pytest.raises(BudgetExhausted, match="total budget"):
            get_attack(name)(oracle, x, y, threat, **params(name))
        assert oracle.seen <= total


def test_a_label_only_oracle_gets_through_finalize(setup) -> None:
    """An attack that needs only labels runs end to end on a label-only oracle: the door,
    the algorithm's queries, the verification, the counts."""
    model, x, y = setup

    def noise(run: AttackRun, *, tries: int = 3) -> None:
        for _t in range(tries):
            cand = run.threat.project(run.x + run.rng.normal(run.x.shape[1:]), run.x)
            fooled = run.labels(cand) != run.y
            run.best[fooled] = cand[fooled]

    spec = AttackSpec("noise", None, noise, ("linf",), Access.LABELS, False, False,  # type: ignore[arg-type]
                      {"tries": 3}, "random noise")  # fmt: skip
    labels_only = ModuleOracle(model, access="labels")
    res = run_attack(spec, labels_only, x, y, ThreatModel("linf", 0.5))
    assert (res.queries == 4).all() and labels_only.used == 4 * x.shape[0]
    with torch.no_grad():
        assert torch.equal(res.pred, model(res.x_adv).argmax(1))
    sk = CallableOracle(lambda z: model(z).argmax(1), returns="labels", num_classes=10)
    assert run_attack(spec, sk, x, y, ThreatModel("linf", 0.5)).success.any()


@pytest.mark.parametrize(("name", "norm"), cases())
def test_an_attack_runs_on_an_oracle_that_reveals_only_what_it_declares(
    name: str, norm: str, setup
) -> None:
    """An attack that declares it needs labels (or scores) never asks for more: run it on an
    oracle that reveals exactly that and refuses anything above (AccessError) at query time."""
    model, x, y = setup
    spec = get_attack(name)
    oracle = Counting(model, access=str(spec.needs))
    res = spec(oracle, x, y, threat_for(name, norm), **params(name))
    assert int(res.queries.sum()) == oracle.seen
    with torch.no_grad():
        assert torch.equal(res.pred, model(res.x_adv).argmax(1))


@pytest.mark.parametrize("name", ATTACKS.names())
@pytest.mark.parametrize("access", ["labels", "topk", "scores"])
def test_asking_for_more_than_the_oracle_reveals_raises(name: str, access: str, setup) -> None:
    model, x, y = setup
    spec = get_attack(name)
    if Access.parse(access) >= spec.needs:
        pytest.skip("the oracle reveals enough")
    oracle = ModuleOracle(model, access=access)
    with pytest.raises(AccessError, match=f"needs {spec.needs}.*reveals only {access}"):
        spec(oracle, x, y, threat_for(name, spec.norms[0]), **params(name))
    assert oracle.used == 0  # refused at the door


def test_levels_reduce_and_refuse() -> None:
    model = RowwiseMLP(1)
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        logits = model(x)
    o = ModuleOracle(model)
    assert torch.equal(o.labels(x), logits.argmax(1))
    top = o.topk(x, 3)
    assert torch.equal(top.indices, logits.topk(3).indices) and top.values is not None
    assert o.scores(x, grad=True).requires_grad and not o.scores(x).requires_grad
    assert o.used == 16 and o.num_classes == 10
    topk_only = CallableOracle(lambda z: model(z).topk(2, dim=1).indices, returns="topk")
    assert torch.equal(topk_only.labels(x), logits.argmax(1))
    assert topk_only.topk(x, 2).values is None
    with pytest.raises(AccessError, match="top 3"):
        topk_only.topk(x, 3)
    with pytest.raises(AccessError, match="needs scores"):
        topk_only.scores(x)
    with pytest.raises(AccessError, match="no gradients"):
        CallableOracle(lambda z: z, returns="gradients")
    with pytest.raises(AccessError, match="at most scores"):
        Oracle(access="gradients")


def test_callable_scores_and_numpy() -> None:
    w = torch.randn(784, 10, generator=torch.Generator().manual_seed(0))
    o = CallableOracle(lambda a: a.reshape(len(a), -1) @ w.numpy(), numpy=True)
    x = torch.rand(3, 1, 28, 28)
    assert torch.allclose(o.scores(x), x.flatten(1) @ w, atol=1e-4)
    assert o.output == "logits" and o.access == Access.SCORES


def test_sklearn_adapter_on_digits() -> None:
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    from sklearn.tree import DecisionTreeClassifier

    xd, yd = load_digits(return_X_y=True)
    x = torch.tensor(xd[:200] / 16, dtype=torch.float32).view(-1, 1, 8, 8)
    lr = LogisticRegression(max_iter=300).fit(xd[:200] / 16, yd[:200])
    o = SklearnOracle(lr)
    assert o.access == Access.SCORES and o.output == "probabilities" and o.num_classes == 10
    p = o.scores(x[:5])
    assert torch.allclose(p.sum(1), torch.ones(5), atol=1e-5)
    assert o.labels(x[:5]).tolist() == lr.predict(xd[:5] / 16).tolist()
    tree = SklearnOracle(
        DecisionTreeClassifier(random_state=0).fit(xd[:200], yd[:200]), scores=False
    )
    assert tree.access == Access.LABELS
    with pytest.raises(AccessError):
        tree.scores(x[:2])
    with pytest.raises(ConfigError, match=r"0 \.\. C-1"):
        SklearnOracle(LogisticRegression().fit(xd[:50], yd[:50] + 1))


def test_onnx_adapter_matches_the_torch_model(tmp_path) -> None:
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper

    g = torch.Generator().manual_seed(0)
    w, b = torch.randn(64, 10, generator=g), torch.randn(10, generator=g)
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["x"], ["f"]), helper.make_node("Gemm", ["f", "w", "b"], ["y"])],
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 10])],
        [numpy_helper.from_array(w.numpy(), "w"), numpy_helper.from_array(b.numpy(), "b")],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path = tmp_path / "linear.onnx"
    onnx.save(model, path)
    o = OnnxOracle(path)
    x = torch.rand(5, 1, 8, 8)
    assert torch.allclose(o.scores(x), x.flatten(1) @ w + b, atol=1e-5)
    assert o.used == 5
    with pytest.raises(ConfigError, match="no ONNX model"):
        OnnxOracle(tmp_path / "missing.onnx")


def test_malformed_answers_are_clear_errors() -> None:
    x = torch.rand(4, 3)
    with pytest.raises(ModelOutputError, match=r"\(batch, classes\)"):
        CallableOracle(lambda z: z.sum(1)).scores(x)
    with pytest.raises(ModelOutputError, match="NaN"):
        CallableOracle(lambda z: z * math.nan).scores(x)
    with pytest.raises(ModelOutputError, match=">= 2 classes"):
        CallableOracle(lambda z: z[:, :1]).scores(x)
    with pytest.raises(ModelOutputError, match="one integer label"):
        CallableOracle(lambda z: z, returns="labels").labels(x)
    flip = iter([3, 4])
    changing = CallableOracle(lambda z: torch.zeros(len(z), next(flip)))
    changing.scores(x)
    with pytest.raises(ModelOutputError, match="must not change"):
        changing.scores(x)


def test_model_errors_at_the_door_name_the_shape_and_dtype() -> None:
    model = RowwiseMLP(0)
    with pytest.raises(InputError, match=r"shape \(1, 8, 8\)"):
        ModuleOracle(model).labels(torch.rand(2, 1, 8, 8))
    with pytest.raises(InputError, match=r"float64 but the model computes in torch\.float32"):
        get_attack("pgd")(model, torch.rand(2, 1, 28, 28, dtype=torch.float64), torch.tensor([0, 1]),
                          ThreatModel("linf", 0.1))  # fmt: skip
    with pytest.raises(InputError, match=r"takes inputs of shape \(1, 28, 28\)"):
        ModuleOracle(model, input_shape=(1, 28, 28)).labels(torch.rand(2, 3, 4))
    nn_lin = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    with pytest.raises(InputError, match="cannot process inputs of shape"):
        get_attack("fgsm")(
            nn_lin, torch.rand(2, 1, 8, 8), torch.tensor([0, 1]), ThreatModel("linf", 0.1)
        )


def test_budget_and_oracle_arguments_are_validated() -> None:
    with pytest.raises(ConfigError, match="per_sample"):
        QueryBudget(per_sample=0)
    with pytest.raises(ConfigError, match="total"):
        QueryBudget(total=1.5)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="output"):
        ModuleOracle(RowwiseMLP(), output="log-odds")
    with pytest.raises(ConfigError, match=r"nn\.Module or an advlab Oracle"):
        as_oracle(lambda z: z)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="access level"):
        Access.parse("everything")
    o = ModuleOracle(RowwiseMLP(), budget=QueryBudget(total=10))
    o.reserve(8)
    assert o.remaining == 2
    with pytest.raises(BudgetExhausted, match="next batch of 3 was not sent"):
        o.labels(torch.rand(3, 1, 28, 28))
    assert o.used == 0
    o.release(8)
    o.labels(torch.rand(3, 1, 28, 28))
    assert o.used == 3 and o.remaining == 7


def test_oracle_is_an_abstract_door() -> None:
    class Half(Oracle):
        pass

    with pytest.raises(NotImplementedError):
        Half().scores(torch.rand(2, 3))
    assert isinstance(as_oracle(RowwiseMLP()), ModuleOracle)
    t = TopK(torch.tensor([[1, 0]]))
    assert t.values is None
    assert np.array_equal(t.indices.numpy(), [[1, 0]])


def test_a_probability_oracle_is_attacked_through_log_probabilities(setup) -> None:
    model, x, y = setup
    probs = nn.Sequential(model, nn.Softmax(dim=1))
    threat = ThreatModel("linf", 0.1)
    a = get_attack("pgd")(ModuleOracle(probs, output="probabilities"), x, y, threat, steps=5)
    b = get_attack("pgd")(model, x, y, threat, steps=5)
    assert torch.equal(a.success, b.success)
    torch.testing.assert_close(a.x_adv, b.x_adv, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ATTACKS.names())
def test_channels_last_inputs(name: str) -> None:
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 10)
    ).eval()
    x = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        y = model(x).argmax(1)
    spec = get_attack(name)
    res = spec(model, x, y, threat_for(name, spec.norms[0]), **params(name))
    assert (
        res.x_adv.shape == x.shape and threat_for(name, spec.norms[0]).contains(res.x_adv, x).all()
    )


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_half_precision_random_starts_are_finite(norm: str) -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10)).to(torch.bfloat16)
    x = torch.rand(16, 1, 28, 28).to(torch.bfloat16)
    with torch.no_grad():
        y = model(x).argmax(1)
    eps = {"linf": 0.1, "l2": 1.0, "l1": 5.0}[norm]
    res = get_attack("pgd")(model, x, y, ThreatModel(norm, eps), steps=2)
    assert torch.isfinite(res.x_adv).all()
