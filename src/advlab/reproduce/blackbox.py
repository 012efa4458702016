"""Catalog entries for the black-box attacks and transferability: AutoZOOM against ZOO,
Papernot's substitute attack, the cross-family transferability matrix, ensemble transfer,
universal perturbations and high-confidence transfer."""

from __future__ import annotations
