"""advlab: attack, harden, certify and report on the adversarial robustness of classifiers."""

from advlab.errors import AdvlabError
from advlab.registry import ATTACKS, CERTIFIERS, DATASETS, MODELS, RECIPES
from advlab.results import AttackResult, concat, worst_case
from advlab.threat import ThreatModel

__version__ = "0.1.0"


def _load_builtins() -> None:
    # Importing the component packages registers their built-in entries.
    import advlab.attacks  # noqa: F401

    for mod in ("advlab.data", "advlab.models", "advlab.defenses", "advlab.certify"):
        __import__(mod)


_load_builtins()

__all__ = [
    "ATTACKS",
    "CERTIFIERS",
    "DATASETS",
    "MODELS",
    "RECIPES",
    "AdvlabError",
    "AttackResult",
    "ThreatModel",
    "__version__",
    "concat",
    "worst_case",
]
