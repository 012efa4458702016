"""Training recipes: the per-batch loss that the training loop minimizes.

A recipe is registered in :data:`advlab.registry.RECIPES` under a name, as a *factory*: called
with the recipe's parameters (keyword-only, with defaults) it returns the per-batch loss::

    loss_fn(model, x, y, *, generator) -> loss            # a scalar tensor
    loss_fn(model, x, y, *, generator) -> (loss, logits)  # also reports train accuracy

``x`` is a batch of inputs in ``[0, 1]`` on the training device, ``y`` its labels, and
``generator`` a :class:`torch.Generator` on that device for any randomness the recipe needs
(random starts of an attack, noise), so that a seeded run is reproducible and a resumed run
continues the same random stream. The model is in training mode when ``loss_fn`` is called; a
recipe that attacks the model may switch it to eval mode for the attack but must switch it back.
``logits``, when returned, are the model's outputs on the inputs it trained on (clean or
adversarial); the loop uses them for the epoch's training accuracy.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advlab.errors import ConfigError
from advlab.registry import RECIPES

LossOutput = Tensor | tuple[Tensor, Tensor]
LossFn = Callable[..., LossOutput]
RecipeFactory = Callable[..., LossFn]


def register_recipe(name: str, *, description: str) -> Callable[[RecipeFactory], RecipeFactory]:
    """Register a recipe factory under ``name`` with a one-line ``description``."""
    return RECIPES.register(name, description=description)


def recipe_params(name: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Check ``params`` against recipe ``name``'s signature and return them with defaults filled.

    Raises:
        UnknownNameError: an unregistered recipe.
        ConfigError: unknown parameter names.
    """
    factory: RecipeFactory = RECIPES.get(name)
    given = dict(params or {})
    sig = inspect.signature(factory).parameters
    unknown = sorted(set(given) - set(sig))
    if unknown:
        accepted = ", ".join(sig) or "no parameters"
        raise ConfigError(
            f"recipe {name!r} has no parameter(s) {', '.join(unknown)}; it accepts {accepted}"
        )
    full = {k: p.default for k, p in sig.items() if p.default is not inspect.Parameter.empty}
    full.update(given)
    return full


def build_recipe(name: str, params: Mapping[str, Any] | None = None) -> LossFn:
    """The per-batch loss of recipe ``name`` with ``params`` (validated by the factory)."""
    recipe_params(name, params)
    factory: RecipeFactory = RECIPES.get(name)
    return factory(**dict(params or {}))


@register_recipe("standard", description="Cross-entropy on clean data (no adversarial training).")
def standard(*, label_smoothing: float = 0.0) -> LossFn:
    """Standard training: mean cross-entropy of the model's logits on the clean batch.

    Args:
        label_smoothing: in ``[0, 1)``; mixes the one-hot target with the uniform distribution
            (Szegedy et al. 2016). 0 is plain cross-entropy.
    """
    if isinstance(label_smoothing, bool) or not isinstance(label_smoothing, int | float):
        raise ConfigError(f"label_smoothing must be a number in [0, 1), got {label_smoothing!r}")
    if not 0.0 <= label_smoothing < 1.0:  # also rejects NaN
        raise ConfigError(f"label_smoothing must be in [0, 1), got {label_smoothing!r}")
    smoothing = float(label_smoothing)

    def loss_fn(
        model: nn.Module, x: Tensor, y: Tensor, *, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        logits = model(x)
        return F.cross_entropy(logits, y, label_smoothing=smoothing), logits

    return loss_fn
