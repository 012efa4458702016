"""Defenses: training recipes and the checkpointed training loop.

Importing this package registers every built-in recipe in :data:`advlab.registry.RECIPES`.
"""

from advlab.defenses import certified as _certified  # noqa: F401  (registers ibp, crown-ibp)
from advlab.defenses.fit import train_and_save
from advlab.defenses.recipes import (
    Recipe,
    TrainContext,
    build_recipe,
    msd_perturb,
    recipe_params,
    register_recipe,
    soft_labels,
)
from advlab.defenses.train import (
    TrainConfig,
    TrainResult,
    evaluate_accuracy,
    split_validation,
    train,
)

__all__ = [
    "Recipe",
    "TrainConfig",
    "TrainContext",
    "TrainResult",
    "build_recipe",
    "evaluate_accuracy",
    "msd_perturb",
    "recipe_params",
    "register_recipe",
    "soft_labels",
    "split_validation",
    "train",
    "train_and_save",
]
