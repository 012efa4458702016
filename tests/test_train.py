"""The training loop: learning, seeding, checkpoints and exact resume."""

from __future__ import annotations

import functools
import itertools
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from advlab.data.base import Dataset
from advlab.defenses import TrainConfig, build_recipe, evaluate_accuracy, train
from advlab.errors import CheckpointError, ConfigError, DataError, UnknownNameError
from advlab.models import Normalize, build_model


def make_data(n: int = 200, seed: int = 0, name: str = "toy") -> Dataset:
    """A linearly separable two-class problem on 1x8x8 inputs, with a margin."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(64, generator=torch.Generator().manual_seed(123))
    x = torch.rand(4 * n, 1, 8, 8, generator=g)
    score = (x.flatten(1) - 0.5) @ w
    keep = score.abs() > 0.5
    x, score = x[keep][:n], score[keep][:n]
    return Dataset(name, x, (score > 0).long(), 2)


def make_mlp(seed: int = 0) -> nn.Sequential:
    return build_model(
        "mlp", num_classes=2, in_shape=(1, 8, 8), hidden=(16,), mean=[0.5], std=[0.3], seed=seed
    )


def make_dropout_net(seed: int = 0) -> nn.Sequential:
    """A model whose training draws from the global RNG (dropout), to test RNG checkpointing."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Sequential(
            Normalize([0.5], [0.25]), nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Dropout(0.3),
            nn.Linear(16, 2),
        )  # fmt: skip


@functools.cache
def reference_run() -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    """Weights and history of an uninterrupted run of CFG on the dropout net (computed once)."""
    model = make_dropout_net()
    result = train(model, make_data(), CFG)
    return model.state_dict(), result.history


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# 200 samples in batches of 32: 7 steps per epoch, the last one of 8 samples
CFG = TrainConfig(
    epochs=3, batch_size=32, lr=0.05, optimizer="sgd", momentum=0.9, scheduler="step",
    milestones=(2,), weight_decay=1e-4, seed=7,
)  # fmt: skip


def test_learns_a_separable_problem() -> None:
    data, test = make_data(), make_data(seed=1, name="toy-test")
    model = make_mlp()
    cfg = TrainConfig(epochs=10, batch_size=32, lr=1e-2, optimizer="adam", seed=0)
    result = train(model, data, cfg, eval_data=test)
    assert result.completed and result.global_step == 10 * 7
    assert [r["epoch"] for r in result.history] == list(range(1, 11))
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    assert result.final["train_accuracy"] >= 0.95
    assert result.final["eval_accuracy"] >= 0.8  # chance is about 0.5
    model.eval()
    assert evaluate_accuracy(model, test) == result.final["eval_accuracy"]


def test_same_seed_same_weights_and_global_rng_untouched() -> None:
    data = make_data()
    before = torch.get_rng_state()
    a, b, c = make_dropout_net(), make_dropout_net(), make_dropout_net()
    train(a, data, CFG)
    assert torch.equal(torch.get_rng_state(), before)
    torch.manual_seed(999)  # the caller's global RNG state must not matter
    b.load_state_dict(reference_run()[0])  # another run of the same config, same seed
    train(c, data, TrainConfig(**{**CFG.to_dict(), "seed": 8}))
    assert same_weights(a, b)
    assert not same_weights(a, c)


@pytest.mark.parametrize("stop", [3, 7, 10, 20])  # mid-epoch, epoch end, mid-epoch 2, epoch 3
def test_interrupted_and_resumed_run_is_bit_identical(stop: int, tmp_path: Path) -> None:
    data = make_data()
    reference = make_dropout_net()
    reference.load_state_dict(reference_run()[0])
    ref_history = reference_run()[1]

    ckpt = tmp_path / "run.ckpt"
    first = make_dropout_net()
    part = train(first, data, CFG, checkpoint_path=ckpt, stop_after_steps=stop)
    assert not part.completed and part.global_step == stop and ckpt.exists()
    assert not same_weights(first, reference)

    resumed = make_dropout_net(seed=123)  # different init: everything must come from the file
    torch.manual_seed(5)
    rest = train(resumed, data, CFG, checkpoint_path=ckpt)
    assert rest.completed and rest.global_step == 21
    assert rest.resumed_from == divmod(stop, 7)
    assert same_weights(resumed, reference)
    for got, want in zip(rest.history, ref_history, strict=True):
        for key in ("epoch", "loss", "train_accuracy", "lr"):
            assert got[key] == want[key], key


def test_resume_after_exception_in_progress_callback(tmp_path: Path) -> None:
    data = make_data()
    reference = make_dropout_net()
    reference.load_state_dict(reference_run()[0])

    cfg = TrainConfig(**{**CFG.to_dict(), "checkpoint_every": 4})
    events: list[dict[str, Any]] = []

    def crash(event: dict[str, Any]) -> None:
        events.append(event)
        if event["event"] == "step" and event["global_step"] == 14:
            raise KeyboardInterrupt

    model = make_dropout_net()
    model.eval()
    with pytest.raises(KeyboardInterrupt):
        train(model, data, cfg, checkpoint_path=tmp_path / "c.ckpt", progress=crash)
    assert not model.training  # restored even on an exception
    assert [e["epoch"] for e in events if e["event"] == "epoch"] == [1]
    assert {"epoch", "step", "steps_per_epoch", "global_step", "loss", "done", "total"} <= set(
        events[0]
    )
    epoch_event = next(e for e in events if e["event"] == "epoch")
    assert epoch_event["message"].startswith("epoch 1/3, loss ")

    resumed = make_dropout_net(seed=1)
    # checkpoint_every may change on resume: it does not change the result
    result = train(resumed, data, CFG, checkpoint_path=tmp_path / "c.ckpt")
    # the last checkpoint is from step 12 (every 4 steps): step 14's progress event comes
    # before the end-of-epoch checkpoint, so that one was never written
    assert result.resumed_from == (1, 5)
    assert same_weights(resumed, reference)


def test_resuming_a_finished_run_trains_nothing(tmp_path: Path) -> None:
    data = make_data()
    model = make_mlp()
    first = train(model, data, CFG, checkpoint_path=tmp_path / "c.ckpt")
    again = make_mlp(seed=3)
    steps: list[dict[str, Any]] = []
    second = train(again, data, CFG, checkpoint_path=tmp_path / "c.ckpt", progress=steps.append)
    assert steps == [] and second.history == first.history and second.completed
    assert same_weights(again, model)


def test_checkpoint_is_one_weights_only_unit(tmp_path: Path) -> None:
    data = make_data()
    train(make_mlp(), data, CFG, checkpoint_path=tmp_path / "c.ckpt", stop_after_steps=3)
    ckpt = torch.load(tmp_path / "c.ckpt", weights_only=True)
    assert {"model", "optimizer", "scheduler", "position", "rng", "config", "recipe"} <= set(ckpt)
    assert ckpt["position"]["epoch"] == 0 and ckpt["position"]["step"] == 3
    assert ckpt["config"] == CFG.to_dict()
    assert ckpt["recipe"] == {
        "name": "standard",
        "params": {"label_smoothing": 0.0, "temperature": 1.0},
        "state": {},
    }
    assert {"shuffle_epoch_start", "recipe", "torch"} <= set(ckpt["rng"])
    assert not [p.name for p in tmp_path.iterdir() if p.name != "c.ckpt"]  # no temp files left


def test_config_mismatch_refuses_to_resume(tmp_path: Path) -> None:
    data = make_data()
    train(make_mlp(), data, CFG, checkpoint_path=tmp_path / "c.ckpt", stop_after_steps=3)
    other = TrainConfig(**{**CFG.to_dict(), "lr": 0.01})
    with pytest.raises(ConfigError, match=r"lr: checkpoint 0\.05 vs now 0\.01"):
        train(make_mlp(), data, other, checkpoint_path=tmp_path / "c.ckpt")
    with pytest.raises(ConfigError, match="different training data"):
        train(make_mlp(), make_data(seed=5), CFG, checkpoint_path=tmp_path / "c.ckpt")
    # resume=False starts over (and overwrites the checkpoint)
    result = train(make_mlp(), data, other, checkpoint_path=tmp_path / "c.ckpt", resume=False)
    assert result.resumed_from is None and result.completed


def test_checkpoint_of_another_architecture_is_refused(tmp_path: Path) -> None:
    data = make_data()
    train(make_mlp(), data, CFG, checkpoint_path=tmp_path / "c.ckpt", stop_after_steps=3)
    with pytest.raises(CheckpointError, match="does not fit"):
        train(make_dropout_net(), data, CFG, checkpoint_path=tmp_path / "c.ckpt")


@pytest.mark.parametrize("content", [b"", b"not a checkpoint", "truncate"])
def test_corrupt_checkpoint_is_reported(content: bytes | str, tmp_path: Path) -> None:
    data = make_data()
    path = tmp_path / "c.ckpt"
    train(make_mlp(), data, CFG, checkpoint_path=path, stop_after_steps=3)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2] if content == "truncate" else content)  # type: ignore[arg-type]
    with pytest.raises(CheckpointError, match="resume=False"):
        train(make_mlp(), data, CFG, checkpoint_path=path)


def test_foreign_torch_file_is_not_a_checkpoint(tmp_path: Path) -> None:
    torch.save({"hello": torch.zeros(2)}, tmp_path / "c.ckpt")
    with pytest.raises(CheckpointError, match="not an advlab training checkpoint"):
        train(make_mlp(), make_data(), CFG, checkpoint_path=tmp_path / "c.ckpt")


@pytest.mark.parametrize("mode", ["train", "eval", "mixed"])
def test_model_mode_is_restored(mode: str) -> None:
    model = make_dropout_net()
    model.train(mode == "train")
    if mode == "mixed":
        model[4].train()  # only the dropout layer in training mode
    before = [m.training for m in model.modules()]
    seen: list[bool] = []
    train(model, make_data(), CFG, progress=lambda e: seen.append(model.training))
    assert [m.training for m in model.modules()] == before
    assert all(seen)  # trained in training mode


def test_evaluate_accuracy_known_answer_and_mode_unchanged() -> None:
    data = make_data()
    model = make_mlp().train()
    with torch.no_grad():  # a model that always predicts class 1
        for p in model.parameters():
            p.zero_()
        model[-1].bias.copy_(torch.tensor([0.0, 1.0]))
    expected = float((data.y == 1).float().mean())
    assert evaluate_accuracy(model, data, batch_size=7) == pytest.approx(expected)
    assert model.training


@pytest.mark.parametrize(
    "kw",
    [
        {"epochs": 0}, {"batch_size": 0}, {"batch_size": 2.5}, {"lr": 0.0}, {"lr": float("nan")},
        {"momentum": 1.0}, {"weight_decay": -1.0}, {"optimizer": "rmsprop"},
        {"scheduler": "linear"}, {"scheduler": "step", "milestones": (3, 2)},
        {"scheduler": "step", "milestones": (20,)}, {"milestones": (1,)}, {"gamma": 0.0},
        {"seed": -1}, {"checkpoint_every": 0}, {"recipe_params": {"label_smoothing": 1.5}},
        {"recipe_params": {"unknown_param": 1}}, {"recipe_params": {"x": object()}},
    ],
)  # fmt: skip
def test_config_validation(kw: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        cfg = TrainConfig(**kw)
        build_recipe(cfg.recipe, cfg.recipe_params)  # values are checked by the recipe itself


def test_config_unknown_names() -> None:
    with pytest.raises(UnknownNameError, match="standard"):
        TrainConfig(recipe="standrd")
    with pytest.raises(ConfigError, match="epoch"):
        TrainConfig.from_dict({"epoch": 3})
    cfg = TrainConfig.from_dict({"epochs": 3, "scheduler": "step", "milestones": [1, 2]})
    assert cfg.milestones == (1, 2) and TrainConfig.from_dict(cfg.to_dict()) == cfg


def test_step_and_cosine_schedules() -> None:
    data = make_data()
    step = train(
        make_mlp(), data, TrainConfig(**{**CFG.to_dict(), "epochs": 4, "milestones": (1, 3)})
    )
    assert [r["lr"] for r in step.history] == pytest.approx([0.05, 0.005, 0.005, 0.0005])
    cos = train(make_mlp(), data, TrainConfig(epochs=4, lr=0.1, scheduler="cosine", batch_size=64))
    lrs = [r["lr"] for r in cos.history]
    assert lrs[0] == pytest.approx(0.1) and all(a > b for a, b in itertools.pairwise(lrs))


def test_bad_data_is_rejected() -> None:
    good = make_data()
    bad_labels = Dataset("bad", good.x, torch.full_like(good.y, 1), 2)
    with pytest.raises(DataError, match="labels"):
        train(make_mlp(), type("D", (), {"x": good.x, "y": good.y, "num_classes": 1})(), CFG)
    with pytest.raises(DataError, match="Dataset"):
        train(make_mlp(), (good.x, good.y), CFG)  # type: ignore[arg-type]
    train(make_mlp(), bad_labels, TrainConfig(epochs=1))  # one class present is fine


def test_divergence_is_reported() -> None:
    data = make_data()
    cfg = TrainConfig(epochs=2, lr=1e30, optimizer="sgd", momentum=0.0, batch_size=16)
    with pytest.raises(ConfigError, match="lower the learning rate"):
        train(make_mlp(), data, cfg)
