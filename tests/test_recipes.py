"""Training recipes: each one hardens a model, resumes exactly, follows the mode rule, and
rejects bad options with a clear error."""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advlab.attacks import pgd
from advlab.data import load_dataset
from advlab.data.base import Dataset
from advlab.defenses import (
    Recipe,
    TrainConfig,
    TrainContext,
    build_recipe,
    msd_perturb,
    register_recipe,
    soft_labels,
    split_validation,
    train,
)
from advlab.defenses.recipes import Fast, ramped
from advlab.errors import ConfigError, UnknownNameError
from advlab.models import build_model, load_model, save_model
from advlab.registry import RECIPES
from advlab.threat import ThreatModel

EPS = 0.1
MLP_KWARGS = {"num_classes": 10, "in_shape": [1, 28, 28], "hidden": [128]}
# small budgets that each train in a few seconds on 2 CPU cores
PARAMS: dict[str, dict[str, Any]] = {
    "standard": {},
    "fgsm-augment": {"eps": EPS},
    "fgsm-regularized": {"eps": EPS},
    "pgd": {"eps": EPS, "steps": 5, "step_size": 0.04},
    "fast": {"eps": EPS, "guard_drop": 1.0},  # the guard needs validation: tested on its own
    "trades": {"eps": EPS, "steps": 5, "step_size": 0.04, "beta": 3.0},
    "msd": {
        "eps_linf": EPS,
        "eps_l2": 1.0,
        "eps_l1": 5.0,
        "steps": 5,
        "step_linf": 0.04,
        "step_l2": 0.4,
        "step_l1": 2.0,
    },
    "double-backprop": {"weight": 1.0},
    "ibp": {"eps": 0.2, "warmup": 0.0, "ramp": 0.5},
    "crown-ibp": {"eps": 0.2, "warmup": 0.0, "ramp": 0.5, "kappa_end": 0.5},
}


@functools.cache
def mnist() -> tuple[Dataset, Dataset]:
    splits = load_dataset("mnist5k")
    assert splits.train is not None
    return splits.train, splits.test


def mlp(seed: int = 0) -> nn.Sequential:
    return build_model("mlp", seed=seed, num_classes=10, in_shape=(1, 28, 28), hidden=(128,))


def cfg(recipe: str, params: dict[str, Any], **kw: Any) -> TrainConfig:
    base = {"epochs": 2, "batch_size": 64, "lr": 2e-3, "seed": 0}
    return TrainConfig(**{**base, **kw}, recipe=recipe, recipe_params=params)


def robust(model: nn.Module, n: int = 300) -> float:
    _, test = mnist()
    x, y = test.x[:n], test.y[:n]
    model.eval()
    res = pgd(model, x, y, ThreatModel("linf", EPS), steps=10, seed=1)
    return float((~res.success & (res.pred == y)).float().mean())


@functools.cache
def standard_model() -> nn.Module:
    model = mlp()
    train(model, mnist()[0], cfg("standard", {}))
    return model.eval()


def standard_robust() -> float:
    return robust(standard_model())


@pytest.fixture
def teacher(tmp_path: Path) -> str:
    model = mlp(seed=1)
    train(model, mnist()[0], cfg("standard", {"temperature": 20.0}, epochs=1))
    return str(save_model(model.eval(), tmp_path / "teacher", arch="mlp",
                          arch_kwargs=MLP_KWARGS))  # fmt: skip


@pytest.mark.parametrize("name", sorted(set(RECIPES.names()) - {"standard", "distillation"}))
def test_recipe_raises_robust_accuracy_over_standard(name: str) -> None:
    model = mlp()
    result = train(model, mnist()[0], cfg(name, PARAMS[name]))
    assert result.completed and math.isfinite(result.final["loss"])
    base, got = standard_robust(), robust(model)
    # standard training leaves ~20% at eps=0.1; each recipe measured at 0.5 to 0.6 here
    assert got >= base + 0.15, (name, base, got)


def test_every_registered_recipe_has_test_parameters_and_a_description() -> None:
    assert set(RECIPES.names()) == set(PARAMS) | {"distillation"}
    assert all(RECIPES.describe().values())


def test_distillation_soft_labels_and_deployment(teacher: str, tmp_path: Path) -> None:
    t_model, _ = load_model(teacher)
    x = mnist()[0].x[:32]
    for t in (1.0, 5.0, 50.0):
        p = soft_labels(t_model, x, t)
        assert torch.allclose(p.sum(dim=1), torch.ones(32), atol=1e-5)
        assert torch.allclose(p, F.softmax(t_model(x) / t, dim=1))
    entropy = [float(-(p * p.clamp_min(1e-30).log()).sum(1).mean())
               for p in (soft_labels(t_model, x, t) for t in (1.0, 5.0, 50.0))]  # fmt: skip
    assert entropy[0] < entropy[1] < entropy[2]  # a higher T gives softer labels

    student = mlp(seed=2)
    result = train(student, mnist()[0],
                   cfg("distillation", {"teacher": teacher, "temperature": 20.0}, epochs=1))  # fmt: skip
    assert result.completed
    path = save_model(student.eval(), tmp_path / "student", arch="mlp", arch_kwargs=MLP_KWARGS)
    loaded, _ = load_model(path)
    # deployed at T = 1: the saved network returns the raw logits (no temperature layer), which
    # a student trained at T = 20 makes large, so its softmax saturates
    assert torch.equal(loaded(x), student(x))
    with torch.no_grad():
        assert float(student(x).abs().amax()) > float(t_model(x).abs().amax()) / 20


@pytest.mark.parametrize("name", ["pgd", "fast", "distillation", "msd"])
def test_resume_after_a_kill_mid_epoch_gives_the_same_weights(
    name: str, teacher: str, tmp_path: Path
) -> None:
    params = {"teacher": teacher, "temperature": 20.0} if name == "distillation" else PARAMS[name]
    data = Dataset("small", mnist()[0].x[:400], mnist()[0].y[:400], 10)
    c = cfg(name, params, epochs=3, batch_size=50, val_size=100, val_steps=3, scheduler="cyclic")
    reference = mlp()
    ref = train(reference, data, c)
    # 6 steps per epoch: stop mid-epoch 1, then at the end of epoch 2 (after its validation)
    ckpt = tmp_path / "run.ckpt"
    for stop in (4, 8):
        part = train(mlp(), data, c, checkpoint_path=ckpt, stop_after_steps=stop)
        assert not part.completed
    resumed = mlp(seed=5)
    rest = train(resumed, data, c, checkpoint_path=ckpt)
    assert rest.completed and rest.resumed_from == (2, 0)
    sa, sb = reference.state_dict(), resumed.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    for got, want in zip(rest.history, ref.history, strict=True):
        for key in ("loss", "train_accuracy", "val_accuracy", "val_robust_accuracy", "lr"):
            assert got[key] == want[key], key
    if name == "fast":
        state = torch.load(ckpt, weights_only=True)["recipe"]["state"]
        assert state["best_epoch"] >= 1 and state["best_weights"] is not None


def test_distillation_refuses_a_changed_teacher_on_resume(teacher: str, tmp_path: Path) -> None:
    data = Dataset("small", mnist()[0].x[:200], mnist()[0].y[:200], 10)
    c = cfg("distillation", {"teacher": teacher, "temperature": 20.0})
    train(mlp(), data, c, checkpoint_path=tmp_path / "s.ckpt", stop_after_steps=2)
    save_model(mlp(seed=7), teacher, arch="mlp",
               arch_kwargs=MLP_KWARGS)  # fmt: skip
    with pytest.raises(ConfigError, match="changed since"):
        train(mlp(), data, c, checkpoint_path=tmp_path / "s.ckpt")


@pytest.mark.parametrize(
    ("name", "params", "match"),
    [
        ("distillation", {"teacher": "t.safetensors", "temperature": 0}, "temperature"),
        ("distillation", {"teacher": "t.safetensors", "temperature": -1.0}, "temperature"),
        ("distillation", {}, "teacher"),
        ("standard", {"temperature": 0.0}, "temperature"),
        ("fgsm-regularized", {"alpha": 1.5}, "alpha"),
        ("fgsm-regularized", {"alpha": -0.1}, "alpha"),
        ("pgd", {"steps": 0}, "steps"),
        ("trades", {"steps": 0}, "steps"),
        ("msd", {"steps": 0}, "steps"),
        ("pgd", {"eps": -0.1}, "eps"),
        ("fast", {"eps": -1}, "eps"),
        ("fgsm-augment", {"eps": float("nan")}, "eps"),
        ("msd", {"eps_l2": -1.0}, "eps"),
        ("pgd", {"norm": "l3"}, "norm"),
        ("pgd", {"ramp": 2.0}, "ramp"),
        ("fgsm-augment", {"ratio": 1.5}, "ratio"),
        ("double-backprop", {"weight": -1.0}, "weight"),
        ("pgd", {"stepz": 3}, "stepz"),
    ],
)  # fmt: skip
def test_bad_recipe_options_are_named(name: str, params: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        build_recipe(name, params)


def test_unknown_recipe_suggests_the_near_name() -> None:
    with pytest.raises(UnknownNameError, match="'trades'"):
        TrainConfig(recipe="trade")


@pytest.fixture
def probe_recipe() -> Iterator[dict[str, list[bool]]]:
    seen: dict[str, list[bool]] = {"perturb": [], "loss": []}

    class Probe(Recipe):
        def __init__(self, *, flip: bool = False) -> None:
            self.flip = flip

        def perturb(self, model: nn.Module, x: Tensor, y: Tensor, ctx: TrainContext) -> Tensor:
            seen["perturb"] += [m.training for m in model.modules()]
            if self.flip:
                model.train()
            return x

        def loss(self, model: nn.Module, x: Tensor, y: Tensor, x_adv: Tensor | None,
                 ctx: TrainContext) -> Tensor:  # fmt: skip
            seen["loss"] += [m.training for m in model.modules()]
            return F.cross_entropy(model(x), y)

    register_recipe("test-probe", description="test only")(Probe)
    try:
        yield seen
    finally:
        del RECIPES._entries["test-probe"]


def test_mode_rule_eval_for_the_attack_train_for_the_loss(
    probe_recipe: dict[str, list[bool]],
) -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 16), nn.BatchNorm1d(16), nn.ReLU(),
                          nn.Dropout(0.2), nn.Linear(16, 10))  # fmt: skip
    model.eval()
    data = Dataset("small", mnist()[0].x[:128], mnist()[0].y[:128], 10)
    train(model, data, cfg("test-probe", {}, epochs=1))
    assert probe_recipe["perturb"] and not any(probe_recipe["perturb"])
    assert probe_recipe["loss"] and all(probe_recipe["loss"])
    assert not model.training  # restored
    with pytest.raises(ConfigError, match="changed the model's train/eval mode"):
        train(model, data, cfg("test-probe", {"flip": True}, epochs=1))


def test_attacks_inside_training_leave_batchnorm_statistics_alone() -> None:
    """The eval-mode rule: PGD's forward passes must not move the running statistics; only the
    training forward (one per step) does."""
    torch.manual_seed(0)
    bn = nn.BatchNorm1d(16, momentum=None)  # cumulative average: counts batches exactly
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 16), bn, nn.ReLU(), nn.Linear(16, 10))
    data = Dataset("small", mnist()[0].x[:128], mnist()[0].y[:128], 10)
    train(model, data, cfg("pgd", {"eps": EPS, "steps": 3}, epochs=1, batch_size=32))
    assert int(bn.num_batches_tracked) == 4  # 4 training steps, no attack forwards


def test_fast_guard_rolls_back_on_a_collapse() -> None:
    model = mlp()
    recipe = Fast(eps=0.3, guard_drop=0.2)
    good = {k: v.clone() for k, v in model.state_dict().items()}
    assert recipe.after_epoch(model, {"epoch": 1, "val_robust_accuracy": 0.40}) is None
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    assert recipe.after_epoch(model, {"epoch": 2, "val_robust_accuracy": 0.35}) is None
    row = {"epoch": 3, "val_robust_accuracy": 0.05}
    reason = recipe.after_epoch(model, row)
    assert reason and "rolled back to epoch 1" in reason and row["note"] == reason  # the best
    assert all(torch.allclose(model.state_dict()[k], good[k]) for k in good)
    assert recipe.after_epoch(mlp(), {"epoch": 1}) is None  # nothing measured: no action


class Collapse(Fast):
    """The fast recipe with validation numbers scripted per epoch: 0.9, 0.85, then a collapse."""

    def after_epoch(self, model: nn.Module, row: dict[str, Any]) -> str | None:
        row["val_robust_accuracy"] = {1: 0.9, 2: 0.85}.get(row["epoch"], 0.0)
        return super().after_epoch(model, row)


def test_guard_state_survives_a_resume(tmp_path: Path) -> None:
    """Killed after epoch 1 and resumed, the guard still rolls back to epoch 1's weights at the
    collapse in epoch 3: the best epoch and its weights come from the checkpoint."""
    register_recipe("test-collapse", description="test only")(Collapse)
    try:
        data = Dataset("small", mnist()[0].x[:256], mnist()[0].y[:256], 10)
        c = cfg("test-collapse", {"eps": EPS}, epochs=4, val_size=64, val_steps=2)
        reference = mlp()
        ref = train(reference, data, c)
        assert "rolled back to epoch 1" in str(ref.stopped) and len(ref.history) == 3
        train(mlp(), data, c, checkpoint_path=tmp_path / "c.ckpt", stop_after_steps=3)
        resumed = mlp(seed=4)
        res = train(resumed, data, c, checkpoint_path=tmp_path / "c.ckpt")
        assert res.stopped == ref.stopped
        sa, sb = reference.state_dict(), resumed.state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    finally:
        del RECIPES._entries["test-collapse"]


def test_guard_stops_training_and_the_stop_survives_a_resume(tmp_path: Path) -> None:

    register_recipe("test-collapse", description="test only")(Collapse)
    try:
        data = Dataset("small", mnist()[0].x[:256], mnist()[0].y[:256], 10)
        c = cfg("test-collapse", {"eps": EPS}, epochs=4, val_size=64, val_steps=2)
        model = mlp()
        res = train(model, data, c, checkpoint_path=tmp_path / "c.ckpt")
        assert res.completed and len(res.history) == 3 and "rolled back to epoch 1" in res.stopped
        again = train(mlp(seed=3), data, c, checkpoint_path=tmp_path / "c.ckpt")
        assert len(again.history) == 3 and again.stopped == res.stopped
    finally:
        del RECIPES._entries["test-collapse"]


def test_fast_guard_without_validation_is_refused() -> None:
    data = Dataset("small", mnist()[0].x[:128], mnist()[0].y[:128], 10)
    with pytest.raises(ConfigError, match="val_size > 0"):
        train(mlp(), data, cfg("fast", {"eps": EPS}))
    with pytest.raises(ConfigError, match="val_eps"):
        train(mlp(), data, cfg("pgd", PARAMS["pgd"], val_size=32, val_norm="l2"))


def test_validation_split_is_seeded_and_disjoint() -> None:
    c = TrainConfig(val_size=100, seed=3)
    tr, va = split_validation(1000, c)
    assert len(tr) == 900 and len(va) == 100 and not set(tr.tolist()) & set(va.tolist())
    assert torch.equal(va, split_validation(1000, c)[1])
    assert not torch.equal(va, split_validation(1000, TrainConfig(val_size=100, seed=4))[1])
    with pytest.raises(ConfigError, match="val_size"):
        split_validation(100, c)


def test_robust_validation_is_logged_per_epoch() -> None:
    data = Dataset("small", mnist()[0].x[:600], mnist()[0].y[:600], 10)
    res = train(mlp(), data, cfg("pgd", PARAMS["pgd"], val_size=200, val_steps=5))
    for row in res.history:
        assert 0 <= row["val_robust_accuracy"] <= row["val_accuracy"] <= 1
        assert row["val_threat"] == "linf 0.1"
    # standard training has no threat model: clean validation only, unless val_eps is given
    res = train(mlp(), data, cfg("standard", {}, val_size=200))
    assert res.final["val_robust_accuracy"] is None and res.final["val_accuracy"] > 0.5
    res = train(mlp(), data, cfg("standard", {}, val_size=200, val_eps=0.05, val_steps=3))
    assert res.final["val_threat"] == "linf 0.05"


def test_cyclic_schedule_peaks_at_two_fifths() -> None:
    data = Dataset("small", mnist()[0].x[:320], mnist()[0].y[:320], 10)
    res = train(mlp(), data, cfg("standard", {}, epochs=5, batch_size=32, scheduler="cyclic",
                                 lr=0.01))  # fmt: skip
    lrs = [r["lr"] for r in res.history]  # the rate at each epoch's start: 0, 10, 20, 30, 40 steps
    # the rate of step i is the schedule at (i + 1) / total: up over 20 steps, down over 30
    assert lrs == pytest.approx([0.01 / 20, 0.01 * 11 / 20, 0.01 * 29 / 30, 0.01 * 19 / 30,
                                 0.01 * 9 / 30])  # fmt: skip


def test_eps_ramp() -> None:
    threat = ThreatModel("linf", 0.3)
    ctx = TrainContext(epoch=0, epochs=10, step=0, steps_per_epoch=10, global_step=25,
                       total_steps=100, device=torch.device("cpu"),
                       generator=torch.Generator())  # fmt: skip
    assert ramped(threat, 0.5, ctx).eps == pytest.approx(0.15)
    assert ramped(threat, 0.2, ctx) is threat and ramped(threat, 0.0, ctx) is threat


def test_msd_stays_in_the_union_of_balls_and_raises_the_loss() -> None:
    model = standard_model()
    x, y = mnist()[1].x[:64], mnist()[1].y[:64]
    threats = [ThreatModel("linf", 0.1), ThreatModel("l2", 1.0), ThreatModel("l1", 5.0)]
    xa = msd_perturb(model, x, y, threats, [0.02, 0.2, 1.0], steps=10)
    inside = torch.stack([t.contains(xa, x) for t in threats])
    assert bool(inside.any(dim=0).all()) and bool(((xa >= 0) & (xa <= 1)).all())
    with torch.no_grad():
        loss = F.cross_entropy(model(xa), y, reduction="none")
        clean = F.cross_entropy(model(x), y, reduction="none")
    assert float(loss.mean()) > float(clean.mean()) + 0.5
