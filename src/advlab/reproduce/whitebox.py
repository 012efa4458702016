"""Catalog entries for the white-box attacks and distillation: Carlini & Wagner 2017 Tables IV
and VI, and Papernot et al. 2016's defensive distillation over temperatures."""

from __future__ import annotations
