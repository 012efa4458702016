"""Your own data as an ``.npz`` file.

The file holds either ``x`` and ``y`` (an evaluation set: ``train`` is None) or ``x_train``,
``y_train``, ``x_test`` and ``y_test``; optionally ``classes``, one name per class. It is read
with ``allow_pickle=False``, so it cannot run code.

* ``x``: uint8 (divided by 255) or floating point already in ``[0, 1]``; laid out as
  ``(N, H, W)`` (a channel axis is added), ``(N, H, W, C)`` with ``C`` in {1, 3} (moved to
  ``(N, C, H, W)``), ``(N, C, H, W)``, or ``(N, D)`` for tabular data (kept).
* ``y``: integers, one per input, non-negative; the class count is ``len(classes)`` when given,
  else the largest label plus one.

Write one with ``np.savez_compressed("mine.npz", x=images_uint8, y=labels)``.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from advlab.data.base import Dataset, Splits
from advlab.errors import DataError

_SPLIT_KEYS = ("x_train", "y_train", "x_test", "y_test")


def _images(path: Path, key: str, a: np.ndarray) -> Tensor:
    if a.ndim < 2 or a.ndim > 4 or a.shape[0] == 0:
        raise DataError(
            f"{path}: {key!r} has shape {a.shape}; it must be (N, H, W), (N, H, W, C), (N, C, H, W) "
            "or (N, D) with N > 0"
        )
    if a.dtype == np.uint8:
        x = torch.from_numpy(np.ascontiguousarray(a)).float().div_(255.0)
    elif np.issubdtype(a.dtype, np.floating):
        x = torch.from_numpy(np.asarray(a, dtype=np.float32).copy())
        if not bool(torch.isfinite(x).all()):
            raise DataError(
                f"{path}: {key!r} contains NaN or inf values; remove or fix those inputs"
            )
        lo, hi = float(x.min()), float(x.max())
        if lo < 0.0 or hi > 1.0:
            raise DataError(
                f"{path}: {key!r} has values in [{lo:g}, {hi:g}]; advlab expects inputs in [0, 1]. "
                "Scale them to [0, 1] (e.g. divide 0..255 pixels by 255) or store them as uint8."
            )
    else:
        raise DataError(
            f"{path}: {key!r} has dtype {a.dtype}; store inputs as uint8 (0..255) or as floats in [0, 1]"
        )
    if x.dim() == 3:
        x = x.unsqueeze(1)
    elif x.dim() == 4 and x.shape[1] not in (1, 3) and x.shape[3] in (1, 3):
        x = x.permute(0, 3, 1, 2).contiguous()
    return x


def _labels(path: Path, key: str, a: np.ndarray, n: int) -> Tensor:
    if not np.issubdtype(a.dtype, np.integer):
        raise DataError(
            f"{path}: {key!r} has dtype {a.dtype}; labels must be integers (e.g. y.astype(np.int64))"
        )
    if a.shape != (n,):
        raise DataError(
            f"{path}: {key!r} has shape {a.shape}; it must be ({n},), one label per input"
        )
    if int(a.min()) < 0:
        raise DataError(
            f"{path}: {key!r} has negative labels (min {int(a.min())}); labels must be 0, 1, 2, ..."
        )
    return torch.from_numpy(a.astype(np.int64))


def load_npz(file: str | os.PathLike[str]) -> Splits:
    """Load an ``.npz`` file of inputs and labels (format in the module docstring).

    Args:
        file: path to the ``.npz`` file.

    Returns:
        :class:`Splits` with ``train=None`` for a file with ``x, y``; ``meta`` records the file.

    Raises:
        DataError: if the file is missing, not a valid ``.npz``, lacks the keys, or holds arrays
            of the wrong dtype, shape or range.
    """
    path = Path(file).expanduser()
    if not path.is_file():
        raise DataError(
            f"{path}: no such .npz file. Check the path (it is relative to {Path.cwd()})."
        )
    try:
        npz = np.load(path, allow_pickle=False)
        if not isinstance(npz, np.lib.npyio.NpzFile):
            raise DataError(
                f"{path} holds a single array, not an .npz archive; save x and y with "
                "np.savez(path, x=x, y=y)"
            )
        with npz:
            arrays = {k: npz[k] for k in npz.files}
    except DataError:
        raise
    except ValueError as e:  # pickled or object arrays (refused), or a malformed array header
        hint = (
            "save plain numeric arrays with np.savez"
            if "pickle" in str(e)
            else "write it again with np.savez"
        )
        raise DataError(f"{path}: cannot read it ({e}); {hint}") from e
    except (OSError, zipfile.BadZipFile, EOFError, KeyError) as e:
        raise DataError(
            f"{path} is not a valid .npz file or is truncated ({e}); write it again with np.savez"
        ) from e

    keys = set(arrays)
    if set(_SPLIT_KEYS) <= keys:
        pairs = {"train": ("x_train", "y_train"), "test": ("x_test", "y_test")}
    elif {"x", "y"} <= keys:
        pairs = {"test": ("x", "y")}
    else:
        raise DataError(
            f"{path} has arrays {sorted(keys)}; it needs 'x' and 'y', or 'x_train', 'y_train', "
            "'x_test' and 'y_test'"
        )

    tensors: dict[str, tuple[Tensor, Tensor]] = {}
    for split, (kx, ky) in pairs.items():
        x = _images(path, kx, arrays[kx])
        tensors[split] = (x, _labels(path, ky, arrays[ky], len(x)))
    shapes = {tuple(x.shape[1:]) for x, _ in tensors.values()}
    if len(shapes) > 1:
        raise DataError(
            f"{path}: train and test inputs have different shapes {sorted(shapes)}; they must match"
        )

    top = max(int(y.max()) for _, y in tensors.values())
    classes: list[str] | None = None
    if "classes" in arrays:
        classes = [str(c) for c in np.asarray(arrays["classes"]).reshape(-1)]
        if top >= len(classes):
            raise DataError(
                f"{path}: label {top} has no name in 'classes' ({len(classes)} names); "
                "give one name per class or drop 'classes'"
            )
    num_classes = len(classes) if classes is not None else top + 1

    name = path.stem
    ds = {split: Dataset(name, x, y, num_classes) for split, (x, y) in tensors.items()}
    meta = {
        "source": "npz",
        "files": [str(path.resolve())],
        "description": f"user data from {path.name}",
        "classes": classes,
    }
    return Splits(train=ds.get("train"), test=ds["test"], meta=meta)
