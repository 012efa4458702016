"""Models: the zoo of literature architectures and safe save/load.

Importing this package registers every zoo model in :data:`advlab.registry.MODELS`.
"""

from advlab.models.io import load_model, resolve_factory, save_model
from advlab.models.zoo import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    Arctan,
    Normalize,
    Residual,
    arch_kwargs,
    build_model,
)

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "Arctan",
    "Normalize",
    "Residual",
    "arch_kwargs",
    "build_model",
    "load_model",
    "resolve_factory",
    "save_model",
]
