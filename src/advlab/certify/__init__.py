"""Certification: sound lower bounds on robustness (IBP and CROWN linear bounds).

:func:`margin_bounds` bounds the margins ``z_y - z_j`` of a plain stack of supported layers over
a threat set; :func:`certified_radius` searches the largest radius at which every margin is
provably positive. Certification gives the lower bound on a sample's robust radius; an attack's
smallest adversarial example gives the upper bound.
"""

from advlab.certify.bounds import (
    METHODS,
    Bounder,
    certified,
    certified_radius,
    graph,
    ibp,
    margin_bounds,
    margin_spec,
)

__all__ = [
    "METHODS",
    "Bounder",
    "certified",
    "certified_radius",
    "graph",
    "ibp",
    "margin_bounds",
    "margin_spec",
]


def _register() -> None:
    """One certifier per method: ``certifier(model, x, y, threat, *, eps=None, **options)``
    returns the ``(B, C)`` margin lower bounds of :func:`margin_bounds`."""
    from functools import partial

    from advlab.registry import CERTIFIERS

    descriptions = {
        "ibp": "Interval bound propagation (Gowal et al. 2018): fastest, loosest.",
        "crown-ibp": "CROWN's last pass over IBP intermediate bounds (Zhang et al. 2020).",
        "crown": "CROWN / CNN-Cert linear bounds, intermediate bounds by CROWN too.",
        "alpha-crown": "CROWN with optimized ReLU lower slopes (alpha-CROWN): tightest, slowest.",
    }
    for method in METHODS:
        CERTIFIERS.add(method, partial(margin_bounds, method=method),
                       description=descriptions[method])  # fmt: skip


_register()
