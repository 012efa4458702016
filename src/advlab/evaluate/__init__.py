"""Evaluation: robust accuracy under several attacks over a grid of radii, with confidence intervals."""

from advlab.evaluate.engine import (
    CLEAN,
    WORST_CASE,
    AttackConfig,
    Evaluation,
    Examples,
    attack_parameters,
    batch_seed,
    evaluate,
    summary,
)
from advlab.evaluate.stats import wilson_interval

__all__ = [
    "CLEAN",
    "WORST_CASE",
    "AttackConfig",
    "Evaluation",
    "Examples",
    "attack_parameters",
    "batch_seed",
    "evaluate",
    "summary",
    "wilson_interval",
]
