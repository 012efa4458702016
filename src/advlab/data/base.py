"""The dataset value types and the one entry point, :func:`load_dataset`.

A :class:`Dataset` is a frozen pair of tensors ``x`` (inputs in ``[0, 1]``) and ``y`` (integer
labels) with a name and a class count. A :class:`Splits` groups the train and test sets that one
source provides, with metadata (source, files, split seed) that goes into reports.

Loaders are registered in :data:`advlab.registry.DATASETS` as functions
``loader(data_dir: Path) -> Splits``; :func:`load_dataset` resolves the data folder and calls
the loader. A name ending in ``.npz`` is read as a path to an ``.npz`` file instead.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor

from advlab import paths
from advlab.errors import ConfigError, DataError, InputError
from advlab.registry import DATASETS

log = logging.getLogger(__name__)

Loader = Callable[[Path], "Splits"]
"""A registered dataset loader: ``loader(data_dir) -> Splits``."""


class DatasetLike(Protocol):
    """What training and evaluation need of a dataset; :class:`Dataset` has it."""

    @property
    def name(self) -> str: ...

    @property
    def x(self) -> Tensor: ...

    @property
    def y(self) -> Tensor: ...

    @property
    def num_classes(self) -> int: ...


@dataclass(frozen=True, eq=False)
class Dataset:
    """A labelled set of inputs, held as two tensors.

    Attributes:
        name: where it came from (``"mnist"``, ``"mnist5k"``, the stem of an ``.npz`` file, ...).
        x: the inputs, float32 in ``[0, 1]``.
        y: the labels, int64 in ``[0, num_classes)``.
        num_classes: the number of classes of the task (not just those present in ``y``).

    Shape:
        x: ``(N, C, H, W)`` for images, ``(N, D)`` for tabular data from an ``.npz`` file.
        y: ``(N,)``.

    Raises:
        DataError: if the tensors do not have these dtypes and shapes, or a label is out of range.
    """

    name: str
    x: Tensor
    y: Tensor
    num_classes: int

    def __post_init__(self) -> None:
        if not isinstance(self.x, Tensor) or not isinstance(self.y, Tensor):
            raise DataError(f"dataset {self.name!r}: x and y must be torch tensors")
        if self.x.dtype != torch.float32 or self.x.dim() < 2:
            raise DataError(
                f"dataset {self.name!r}: x must be float32 of shape (N, ...), got "
                f"{self.x.dtype} {tuple(self.x.shape)}; convert it with x.float()"
            )
        if self.y.dtype != torch.int64 or self.y.dim() != 1 or len(self.y) != len(self.x):
            raise DataError(
                f"dataset {self.name!r}: y must be int64 of shape ({len(self.x)},), got "
                f"{self.y.dtype} {tuple(self.y.shape)}; pass one integer label per input"
            )
        if (
            isinstance(self.num_classes, bool)
            or not isinstance(self.num_classes, int)
            or self.num_classes < 1
        ):
            raise DataError(
                f"dataset {self.name!r}: num_classes must be a positive int, got {self.num_classes!r}"
            )
        if len(self.y) and (int(self.y.min()) < 0 or int(self.y.max()) >= self.num_classes):
            raise DataError(
                f"dataset {self.name!r}: labels must lie in [0, {self.num_classes}), got "
                f"[{int(self.y.min())}, {int(self.y.max())}]"
            )

    def __len__(self) -> int:
        return len(self.y)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The shape of one input, ``x.shape[1:]``."""
        return tuple(self.x.shape[1:])

    def subset(self, indices: Tensor | Sequence[int]) -> Dataset:
        """The samples at ``indices``, in that order.

        Args:
            indices: integer indices in ``[0, len(self))`` (repeats allowed), or a boolean mask
                of length ``len(self)``.

        Returns:
            A new :class:`Dataset` with the same name and class count.

        Raises:
            InputError: if an index is out of range or the mask has the wrong length.
        """
        idx = torch.as_tensor(indices)
        if idx.numel() == 0:
            idx = idx.reshape(0).long()
        if idx.dtype == torch.bool:
            if idx.shape != (len(self),):
                raise InputError(
                    f"a boolean mask for dataset {self.name!r} must have shape ({len(self)},), "
                    f"got {tuple(idx.shape)}"
                )
            idx = idx.nonzero().flatten()
        if idx.dtype.is_floating_point or idx.dtype.is_complex or idx.dim() != 1:
            raise InputError(
                f"subset indices must be a 1-D sequence of ints or a boolean mask, got "
                f"{idx.dtype} of shape {tuple(idx.shape)}"
            )
        idx = idx.long().to(self.y.device)
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= len(self)):
            raise InputError(
                f"subset indices must lie in [0, {len(self)}) for dataset {self.name!r}, got "
                f"[{int(idx.min())}, {int(idx.max())}]"
            )
        return Dataset(self.name, self.x[idx], self.y[idx], self.num_classes)

    def take(self, n: int | None) -> Dataset:
        """The first ``n`` samples (all of them when ``n`` is None or at least ``len(self)``).

        Raises:
            ConfigError: if ``n`` is negative or not an int.
        """
        if n is None:
            return self
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ConfigError(f"the number of samples must be an int >= 0 or None, got {n!r}")
        if n >= len(self):
            if n > len(self):
                log.info(
                    "dataset %s has %d samples; using all of them (asked for %d)",
                    self.name,
                    len(self),
                    n,
                )
            return self
        return Dataset(self.name, self.x[:n], self.y[:n], self.num_classes)


@dataclass(frozen=True, eq=False)
class Splits:
    """The sets one source provides.

    Attributes:
        train: the training set, or None when the source holds only evaluation data.
        test: the test set (what attacks and evaluations run on).
        meta: provenance for reports: ``source``, ``files``, ``description``, and for sources
            split by advlab ``split_seed`` and ``split``.
    """

    train: Dataset | None
    test: Dataset
    meta: dict[str, Any] = field(default_factory=dict)


def load_dataset(name: str, *, data_dir: str | os.PathLike[str] | None = None) -> Splits:
    """Load a registered dataset by name, or an ``.npz`` file by path.

    Args:
        name: a name in :data:`advlab.registry.DATASETS` (see :func:`dataset_names`), or a path
            ending in ``.npz`` (see :func:`advlab.data.npz.load_npz`).
        data_dir: the folder holding standard datasets; None uses ``$ADVLAB_DATA``, else
            ``~/.cache/advlab/data`` (see :func:`advlab.paths.data_dir`).

    Returns:
        The dataset's :class:`Splits`.

    Raises:
        UnknownNameError: if ``name`` is neither registered nor an ``.npz`` path.
        DataError: if the files are missing, malformed or corrupt (the message says what to fix).
    """
    if str(name).lower().endswith(".npz"):
        from advlab.data.npz import load_npz

        return load_npz(name)
    loader: Loader = DATASETS.get(name)
    folder = paths.data_dir(data_dir)
    splits = loader(folder)
    log.info(
        "loaded dataset %s: %s train, %d test, input shape %s",
        name,
        len(splits.train) if splits.train is not None else "no",
        len(splits.test),
        splits.test.input_shape,
    )
    return splits


def dataset_names() -> list[str]:
    """The registered dataset names, sorted (``.npz`` paths are accepted besides these)."""
    return DATASETS.names()
