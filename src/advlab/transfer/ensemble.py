"""Ensembles of white-box source models, for transfer attacks.

An adversarial example that fools several models at once is more likely to fool one more: Liu et
al. (2017) showed that *targeted* examples, which almost never transfer from a single model,
transfer from an ensemble. :class:`Ensemble` fuses its members into one classifier that returns
logits, so that every advlab attack (PGD, C&W, ...) optimizes against all members at once.

Fusion modes:

* ``"probabilities"``: ``log(sum_i w_i softmax(z_i(x)))``, Liu et al.'s objective: the
  cross-entropy of these logits toward a target ``t`` is ``-log(sum_i w_i p_i(t | x))``,
  their ensemble objective without the distance term.
* ``"logits"``: ``sum_i w_i z_i(x)``, the logit fusion Dong et al. (2018) found transfers best.

Reference:
    Liu, Chen, Liu & Song 2017, "Delving into Transferable Adversarial Examples and Black-box
    Attacks" (ICLR), ensemble-based approaches.
    Dong et al. 2018, "Boosting Adversarial Attacks with Momentum" (CVPR), attacking an ensemble.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from advlab.errors import ConfigError

MODES = ("probabilities", "logits")


class Ensemble(nn.Module):
    """A weighted ensemble of classifiers that returns fused logits.

    Args:
        models: the members, each returning ``(B, C)`` logits for the same classes. They are
            used as they are (their train/eval mode is never changed).
        weights: one positive weight per member, normalized to sum to one; default uniform.
        mode: ``"probabilities"`` (Liu et al. 2017) or ``"logits"`` (see the module docstring).

    Shape:
        x: ``(B, *)`` -> ``(B, C)``.

    Example:
        >>> source = Ensemble([mlp, cnn, wong, madry]).eval()
        >>> res = transfer_attack(source, ModuleOracle(held_out), x, y, threat, attack="pgd",
        ...                       target=t)
    """

    weights: Tensor

    def __init__(
        self,
        models: Sequence[nn.Module],
        weights: Sequence[float] | None = None,
        mode: str = "probabilities",
    ) -> None:
        super().__init__()
        members = list(models)
        if not members or not all(isinstance(m, nn.Module) for m in members):
            raise ConfigError("Ensemble needs a non-empty list of torch nn.Module classifiers")
        if mode not in MODES:
            raise ConfigError(f"unknown ensemble mode {mode!r}; use one of {', '.join(MODES)}")
        w = [1.0] * len(members) if weights is None else [float(v) for v in weights]
        if len(w) != len(members):
            raise ConfigError(f"Ensemble got {len(w)} weights for {len(members)} models; give one per model")  # fmt: skip
        if not all(math.isfinite(v) and v > 0 for v in w):
            raise ConfigError(f"ensemble weights must be finite and > 0, got {w}")
        self.members = nn.ModuleList(members)
        self.mode = mode
        total = sum(w)
        self.register_buffer("weights", torch.tensor([v / total for v in w]))

    def forward(self, x: Tensor) -> Tensor:
        outs = [m(x) for m in self.members]
        if len({tuple(o.shape) for o in outs}) != 1:
            raise ConfigError(
                "the ensemble's members return scores of different shapes "
                f"{sorted({tuple(o.shape) for o in outs})}; they must share their classes"
            )
        z = torch.stack(outs)  # (M, B, C)
        w = self.weights.to(device=z.device, dtype=z.dtype).view(-1, 1, 1)
        if self.mode == "logits":
            return (w * z).sum(dim=0)
        # log sum_i w_i softmax(z_i), computed stably in the log domain
        return torch.logsumexp(torch.log_softmax(z, dim=2) + w.log(), dim=0)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, weights={[round(float(v), 4) for v in self.weights]}"
