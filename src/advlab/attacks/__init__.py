"""Attacks. Importing this package registers every built-in attack in :data:`advlab.registry.ATTACKS`."""

from advlab.attacks.base import AttackSpec, finalize, get_attack, margin, register_attack
from advlab.attacks.gradient import fgsm, pgd
from advlab.attacks.targets import select_targets

__all__ = [
    "AttackSpec",
    "fgsm",
    "finalize",
    "get_attack",
    "margin",
    "pgd",
    "register_attack",
    "select_targets",
]
