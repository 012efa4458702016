"""Attacks. Importing this package registers every built-in attack in :data:`advlab.registry.ATTACKS`."""

from advlab.attacks.base import (
    AttackRun,
    AttackSpec,
    finalize,
    get_attack,
    margin,
    probe,
    register_attack,
    run_attack,
)
from advlab.attacks.bim import bim
from advlab.attacks.cw import cw_l0, cw_l2, cw_linf
from advlab.attacks.deepfool import deepfool
from advlab.attacks.gradient import fgsm, pgd
from advlab.attacks.hsj import hop_skip_jump
from advlab.attacks.jsma import jsma
from advlab.attacks.lbfgs import lbfgs
from advlab.attacks.square import square
from advlab.attacks.targets import all_other_targets, select_targets, targeted_cases, targeted_grid
from advlab.attacks.zoo import autozoom, zoo

__all__ = [
    "AttackRun",
    "AttackSpec",
    "all_other_targets",
    "autozoom",
    "bim",
    "cw_l0",
    "cw_l2",
    "cw_linf",
    "deepfool",
    "fgsm",
    "finalize",
    "get_attack",
    "hop_skip_jump",
    "jsma",
    "lbfgs",
    "margin",
    "pgd",
    "probe",
    "register_attack",
    "run_attack",
    "select_targets",
    "square",
    "targeted_cases",
    "targeted_grid",
    "zoo",
]
