"""Defenses: training recipes and the checkpointed training loop.

Importing this package registers every built-in recipe in :data:`advlab.registry.RECIPES`.
"""

from advlab.defenses.fit import train_and_save
from advlab.defenses.recipes import (
    LossFn,
    build_recipe,
    recipe_params,
    register_recipe,
    standard,
)
from advlab.defenses.train import TrainConfig, TrainResult, evaluate_accuracy, train

__all__ = [
    "LossFn",
    "TrainConfig",
    "TrainResult",
    "build_recipe",
    "evaluate_accuracy",
    "recipe_params",
    "register_recipe",
    "standard",
    "train",
    "train_and_save",
]
