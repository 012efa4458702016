"""Train a zoo model on a named dataset and save it: the one path the CLI's ``advlab train`` and
the audit's default model both take, so the two build the same model from the same defaults."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from advlab.data import load_dataset
from advlab.defenses.recipes import recipe_params
from advlab.defenses.train import TrainConfig, evaluate_accuracy, train
from advlab.errors import InputError
from advlab.models import build_model, load_model, save_model


def train_and_save(
    arch: str,
    data: str,
    cfg: TrainConfig,
    dest: str | Path,
    *,
    data_dir: str | None = None,
    resume: bool = True,
    progress: Callable[[dict[str, Any]], None] | None = None,
    arch_kwargs: dict[str, Any] | None = None,
    device: str | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Train zoo architecture ``arch`` on the train split of ``data`` and save it to ``dest``.

    The model is built with ``cfg.seed`` (and ``arch_kwargs``, e.g. ``{"width": 0.5}``), trained
    with checkpoints beside ``dest`` (``<stem>.ckpt``, removed once the weights are saved; a
    killed run resumes from it), put in eval mode, measured on the test split and saved with its
    metadata: the architecture, the dataset, the test accuracy, the seed, the full training
    configuration (``recipe``: :meth:`TrainConfig.to_dict`, with the recipe's parameters
    resolved) and the per-epoch history (``extra["training"]``: the training curves a report
    plots).

    Returns:
        The trained model (eval mode) and its saved metadata.

    Raises:
        InputError: the dataset has no training split.
    """
    splits = load_dataset(data, data_dir=data_dir)
    if splits.train is None or len(splits.train) == 0:
        raise InputError(
            f"dataset {data!r} has no training split to train {arch!r} on; pass a trained model "
            "with --model PATH or use a dataset with a train split"
        )
    c, h, w = splits.train.input_shape
    kwargs = {**(arch_kwargs or {}), "num_classes": splits.train.num_classes, "in_shape": [c, h, w]}
    model = build_model(arch, seed=cfg.seed, **{**kwargs, "in_shape": (c, h, w)})
    dev = torch.device(device) if device else torch.device("cpu")
    model.to(dev)
    dest = Path(dest)
    ckpt = dest.with_suffix(".ckpt")
    result = train(
        model, splits.train, cfg, checkpoint_path=ckpt, resume=resume, progress=progress,
        device=dev,
    )  # fmt: skip
    model.eval()
    acc = evaluate_accuracy(model, splits.test, device=dev)
    model.cpu()
    recipe = {**cfg.to_dict(), "recipe_params": recipe_params(cfg.recipe, cfg.recipe_params)}
    training = {"history": result.history, "stopped": result.stopped,
                "seconds": sum(r["seconds"] for r in result.history)}  # fmt: skip
    path = save_model(
        model, dest, arch=arch, arch_kwargs=kwargs, dataset=data, clean_accuracy=acc,
        recipe=recipe, seed=cfg.seed, extra={"training": training},
    )  # fmt: skip
    ckpt.unlink(missing_ok=True)
    _, meta = load_model(path)
    return model, meta
