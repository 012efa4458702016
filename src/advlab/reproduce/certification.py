"""Catalog entries for certification: CNN-Cert's certified lower bounds beside the attack's
upper bound, and certified (IBP) training."""

from __future__ import annotations
