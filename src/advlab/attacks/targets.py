"""Choosing target classes for targeted attacks."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from advlab.errors import ConfigError

TARGET_MODES = ("random", "least-likely")


def select_targets(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    mode: str = "random",
    *,
    num_classes: int | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Pick one target class per sample, never the true label.

    Args:
        mode: ``"random"`` (uniform over the other classes) or ``"least-likely"`` (the class the
            model finds least likely on the clean input; Kurakin et al. 2017).
        num_classes: number of classes; read from the model's output when omitted.

    Returns:
        ``(B,)`` int64 targets on ``y``'s device.
    """
    if mode not in TARGET_MODES:
        raise ConfigError(f"unknown target mode {mode!r}; use one of {', '.join(TARGET_MODES)}")
    if mode == "least-likely" or num_classes is None:
        with torch.no_grad():
            logits = model(x)
        num_classes = logits.shape[1]
        if mode == "least-likely":
            return logits.scatter(1, y[:, None], float("inf")).argmin(dim=1)
    if num_classes < 2:
        raise ConfigError("targeted attacks need at least 2 classes")
    off = torch.randint(1, num_classes, y.shape, generator=generator, device="cpu").to(y.device)
    return (y + off) % num_classes
