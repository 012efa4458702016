"""The measurements the reproductions share: honest robust accuracy (the per-sample worst case of
PGD with cross-entropy and with the logit margin, with restarts) and its gradient-masking
check."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from advlab.threat import ThreatModel

#: cross-entropy and margin robust accuracies further apart than this suggest gradient masking
MASKING_GAP = 0.05


@torch.no_grad()
def predict(model: nn.Module, x: Tensor, batch: int = 1000) -> Tensor:
    """``(N,)`` predicted classes, ``batch`` images at a time."""
    return torch.cat([model(x[i : i + batch]).argmax(dim=1) for i in range(0, len(x), batch)])


def robust_accuracy(
    model: nn.Module, x: Tensor, y: Tensor, threat: ThreatModel, *, steps: int, restarts: int,
    step_size: float | None = None, batch: int = 500, seed: int = 0,
) -> dict[str, Any]:  # fmt: skip
    """Accuracy under PGD with cross-entropy and with the logit margin (each with ``restarts``
    random restarts), and the per-sample worst case of both: a sample counts as robust only if
    it is classified correctly and neither attack succeeds.

    Returns:
        ``clean``, ``ce``, ``margin`` and ``worst`` accuracies, ``masking`` (the two losses
        disagree by more than :data:`MASKING_GAP`, a sign of gradient masking), the settings,
        and ``robust``: the per-sample worst-case mask as a list.
    """
    from advlab.attacks import pgd

    ok = predict(model, x) == y
    alive = {"ce": ok.clone(), "margin": ok.clone()}
    for loss in alive:
        for i in range(0, len(x), batch):
            res = pgd(model, x[i : i + batch], y[i : i + batch], threat, steps=steps,
                      restarts=restarts, step_size=step_size, loss=loss, seed=seed)  # fmt: skip
            alive[loss][i : i + batch] &= ~res.success
    worst = alive["ce"] & alive["margin"]
    ce, mg = float(alive["ce"].float().mean()), float(alive["margin"].float().mean())
    return {
        "threat": f"{threat.norm} eps={threat.eps:g}", "n": len(x), "steps": steps,
        "restarts": restarts,
        "clean": float(ok.float().mean()), "ce": ce, "margin": mg,
        "worst": float(worst.float().mean()), "masking": abs(ce - mg) > MASKING_GAP,
        "robust": worst.tolist(),
    }  # fmt: skip


def masking_note(r: dict[str, Any]) -> str:
    """A warning when PGD with cross-entropy and with the margin disagree; "" otherwise."""
    if not r.get("masking"):
        return ""
    return (f"PGD-CE {100 * r['ce']:.1f}% vs PGD-margin {100 * r['margin']:.1f}% at "
            f"{r['threat']}: the losses disagree by more than {100 * MASKING_GAP:.0f} points, a "
            "sign of gradient masking")  # fmt: skip
