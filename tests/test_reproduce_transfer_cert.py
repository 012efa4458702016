"""The transferability and certification entries of the reproduction catalog: their parameters
resolve (full and quick), bad parameters fail before any training, and the transferability
matrix runs for real in its quick mode with a tiny budget, asserting that examples transfer."""

from __future__ import annotations

from pathlib import Path

import pytest

from advlab.errors import ConfigError
from advlab.registry import REPRODUCTIONS
from advlab.reproduce import run_reproduction


def test_full_runs_keep_the_bench_budgets() -> None:
    get = REPRODUCTIONS.get
    tm = get("transfer-matrix").resolve(quick=False)
    assert (tm["n"], tm["eps"], tm["dnn_epochs"], tm["rounds"], tm["seeds"]) == (
        1000,
        0.3,
        12,
        6,
        150,
    )
    ens = get("ensemble-transfer").resolve(quick=False)
    assert ens["models"] == ["papernot", "mlp", "wong", "madry-half", "mlp300"]
    assert (ens["eps"], ens["steps"], ens["n"], ens["epochs"]) == (0.2, 100, 200, [12, 12, 4, 2, 3])
    assert (
        get("ensemble-transfer").resolve(quick=True, overrides={"held": "mlp,wong"})["held"]
        == "mlp,wong"
    )
    uap = get("universal").resolve(quick=False)
    assert (uap["eps"], uap["train"], uap["n"], uap["passes"], uap["batch"]) == (
        [0.2, 0.3],
        1000,
        1000,
        5,
        1,
    )
    assert get("universal").resolve(quick=True, overrides={"eps": "0.1,0.3"})["eps"] == [0.1, 0.3]
    cc = get("cnn-cert").resolve(quick=False)
    assert (cc["activations"], cc["epochs"], cc["n"], cc["bisection"]) == (
        ["relu", "tanh"],
        5,
        10,
        15,
    )
    ct = get("certified-training").resolve(quick=False)
    assert (ct["eps"], ct["train_eps"], ct["n"], ct["steps"], ct["restarts"]) == (
        0.1,
        0.2,
        1000,
        100,
        5,
    )


@pytest.mark.parametrize(("name", "overrides", "match"), [
    ("universal", {"epochs": [1, 1]}, "one value per model"),
    ("ensemble-transfer", {"models": ["papernot", "resnet"]}, "three or more of"),
    ("ensemble-transfer", {"models": ["mlp", "wong", "mlp300"], "epochs": [1, 1]}, "one value per model"),
])  # fmt: skip
def test_bad_parameters_fail_before_training(name: str, overrides: dict[str, object], match: str,
                                             tmp_path: Path) -> None:  # fmt: skip
    with pytest.raises(ConfigError, match=match):
        run_reproduction(name, quick=True, overrides=overrides, out=tmp_path)
    assert not list(tmp_path.glob("*.safetensors")), "nothing was trained"


def test_transfer_matrix_quick_examples_transfer_across_families(tmp_path: Path) -> None:
    res = run_reproduction("transfer-matrix", quick=True, out=tmp_path,
                           overrides={"dnn_epochs": 1, "n": 100, "seeds": 50, "rounds": 1,
                                      "sub_epochs": 3, "train_size": 1000})  # fmt: skip
    data = res.payload["data"]
    fams = data["families"]
    assert fams == ["dnn", "lr", "svm", "tree", "knn", "ens"]
    cell = {(s, t): data["matrix"][i][j] for i, s in enumerate(fams) for j, t in enumerate(fams)}
    # white-box FGSM at 0.3 breaks the DNN and the linear models far beyond their clean error
    for f in ("dnn", "lr", "svm"):
        assert cell[f, f] > data["clean_error"][f] + 0.3, (f, cell[f, f])
    # the linear twins are exact: LR's and SVM's examples fool each other
    assert cell["lr", "svm"] > 0.6 and cell["svm", "lr"] > 0.6
    fig = {f["label"]: f for f in res.payload["figures"]}
    cross = fig["mean cross-family misclassification (off-diagonal cells)"]
    assert cross["passed"] is True and cross["measured"] > 0.3
    assert res.passed is True
    assert (tmp_path / "papernot.safetensors").exists() and (tmp_path / "matrix.eval.json").exists()
    html = (tmp_path / "reproduction.html").read_text()
    assert "data:image/png;base64" in html  # the heat map
