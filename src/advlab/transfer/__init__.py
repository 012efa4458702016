"""Transfer attacks: substitutes, ensembles, universal perturbations, the transferability matrix.

* :func:`train_substitute`: Papernot et al.'s practical black-box attack, a substitute trained
  on an oracle's labels with Jacobian-based dataset augmentation;
* :func:`transfer_attack` / :func:`verify_on`: craft on a white-box source, judge on a target
  through its oracle, with one query per sample;
* :class:`Ensemble`: several white-box sources as one model (Liu et al. 2017);
* :func:`universal_perturbation` / :func:`fooling_rate`: one perturbation for many inputs
  (Moosavi-Dezfooli et al. 2017);
* :func:`run_transfer_matrix`: the cross-family matrix of ``advlab transfer-matrix``
  (Papernot, McDaniel & Goodfellow 2016).
"""

from advlab.transfer.attack import transfer_attack, verify_on
from advlab.transfer.ensemble import Ensemble
from advlab.transfer.matrix import (
    FAMILIES,
    LinearScores,
    MatrixConfig,
    MatrixResult,
    run_transfer_matrix,
)
from advlab.transfer.substitute import (
    Substitute,
    jacobian_augmentation,
    step_size,
    train_substitute,
)
from advlab.transfer.universal import (
    UniversalResult,
    fooling_rate,
    project_ball,
    universal_perturbation,
)

__all__ = [
    "FAMILIES",
    "Ensemble",
    "LinearScores",
    "MatrixConfig",
    "MatrixResult",
    "Substitute",
    "UniversalResult",
    "fooling_rate",
    "jacobian_augmentation",
    "project_ball",
    "run_transfer_matrix",
    "step_size",
    "train_substitute",
    "transfer_attack",
    "universal_perturbation",
    "verify_on",
]
