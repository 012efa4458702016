"""What several benchmark scripts share: a frozen model and the first correctly classified
test images. Not part of the library."""

from __future__ import annotations

import os

import torch
from torch import Tensor, nn

from advlab.data.base import Dataset
from advlab.models import load_model
from advlab.reproduce.measure import predict


def load_frozen(path: str | os.PathLike[str]) -> nn.Module:
    """A saved model in eval mode with its parameters frozen (attacks need input gradients only)."""
    model, _ = load_model(path)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def first_correct(model: nn.Module, test: Dataset, n: int) -> tuple[Tensor, Tensor, Tensor]:
    """The first ``n`` test images the model classifies correctly, their labels and indices."""
    idx = torch.nonzero(predict(model, test.x) == test.y).squeeze(1)[:n]
    return test.x[idx].contiguous(), test.y[idx].contiguous(), idx
