"""Certification: sound lower bounds on robustness (IBP and CROWN linear bounds).

:func:`margin_bounds` bounds the margins ``z_y - z_j`` of a plain stack of supported layers over
a threat set; :func:`certified_radius` searches the largest radius at which every margin is
provably positive. Certification gives the lower bound on a sample's robust radius; an attack's
smallest adversarial example gives the upper bound.
"""

from advlab.certify.bounds import certified_radius, chain, ibp, margin_bounds, margin_spec

__all__ = ["certified_radius", "chain", "ibp", "margin_bounds", "margin_spec"]
