"""The cross-technique transferability matrix (``advlab transfer-matrix``).

Models of several families are trained on the same data: a DNN (a zoo CNN, with advlab's
training loop), logistic regression, a linear SVM, a decision tree, k-nearest neighbours
(scikit-learn) and a majority-vote ensemble of those five. Adversarial examples are crafted on
each *source*:

* differentiable sources (the DNN, and the linear models through their exact torch twins
  :class:`LinearScores`): FGSM on the model itself (white-box);
* the others (tree, kNN, ensemble): Papernot et al.'s substitute attack, a substitute trained on
  the source's labels only (:func:`~advlab.transfer.train_substitute`), then FGSM on it.

Each *target* judges every source's examples through its oracle adapter
(:class:`~advlab.oracle.SklearnOracle`, :class:`~advlab.oracle.ModuleOracle`, or
:class:`~advlab.oracle.OnnxOracle` for the DNN exported to ONNX with ``onnx=True``), one query
per image (:func:`~advlab.transfer.verify_on`). Cell ``(i, j)`` is the fraction of the examples
crafted on source ``i`` that target ``j`` misclassifies (its prediction differs from the true
label), as in Papernot, McDaniel & Goodfellow 2016; the clean error of each target on
the same images is reported beside it.

Reference:
    Papernot, McDaniel & Goodfellow 2016, "Transferability in Machine Learning: from Phenomena to
    Black-Box Attacks using Adversarial Samples" (arXiv:1605.07277), the cross-technique matrix.
"""

from __future__ import annotations

import html
import json
import logging
import math
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from advlab.attacks.gradient import fgsm
from advlab.errors import ConfigError
from advlab.oracle import CallableOracle, ModuleOracle, OnnxOracle, Oracle, SklearnOracle
from advlab.threat import ThreatModel
from advlab.transfer.attack import verify_on
from advlab.transfer.substitute import train_substitute

log = logging.getLogger(__name__)

#: Model families, in the matrix's order.
FAMILIES: tuple[str, ...] = ("dnn", "lr", "svm", "tree", "knn", "ens")
#: Families whose gradients advlab computes exactly (white-box FGSM on the model itself).
DIFFERENTIABLE: frozenset[str] = frozenset({"dnn", "lr", "svm"})
NAMES = {"dnn": "DNN", "lr": "LR", "svm": "SVM", "tree": "DT", "knn": "kNN", "ens": "Ens"}

Progress = Callable[[dict[str, Any]], None]


class LinearScores(nn.Module):
    """The exact torch twin of a fitted linear scikit-learn classifier: ``x.flatten(1) @ W.T + b``.

    Its scores are the estimator's ``decision_function`` (for multinomial logistic regression,
    the logits of ``predict_proba``), so its gradients are the model's own. A binary model's
    single score ``f`` becomes the two logits ``[0, f]``.

    Args:
        estimator: a fitted linear classifier with ``coef_`` ``(C or 1, D)`` and ``intercept_``.

    Shape:
        x: ``(B, *)`` with ``D`` features per sample -> ``(B, C)`` (``C >= 2``).
    """

    weight: Tensor
    bias: Tensor

    def __init__(self, estimator: Any) -> None:
        super().__init__()
        w = np.asarray(getattr(estimator, "coef_", None), dtype=np.float32)
        b = np.asarray(getattr(estimator, "intercept_", None), dtype=np.float32).reshape(-1)
        if w.ndim != 2 or b.shape[0] != w.shape[0]:
            raise ConfigError(
                f"{type(estimator).__name__} is not a fitted linear classifier (coef_ of shape "
                "(classes, features) and intercept_)"
            )
        if w.shape[0] == 1:  # binary: scores [0, f]
            w = np.concatenate([np.zeros_like(w), w])
            b = np.concatenate([np.zeros_like(b), b])
        self.register_buffer("weight", torch.from_numpy(w))
        self.register_buffer("bias", torch.from_numpy(b))

    def forward(self, x: Tensor) -> Tensor:
        return x.flatten(1) @ self.weight.T + self.bias


@dataclass(frozen=True)
class MatrixConfig:
    """What ``advlab transfer-matrix`` runs.

    Attributes:
        families: the model families, a subset of :data:`FAMILIES` (``ens`` votes over the
            others that are present).
        data, data_dir: the dataset (``mnist5k``, ``mnist``, ``digits``, an ``.npz``).
        n: test images the adversarial examples are crafted from (the first ``n``).
        eps: FGSM's L-inf radius (0.3: Papernot et al. 2016).
        train_size: training images used (the first ones; ``None``: all).
        dnn_arch: zoo architecture of the DNN (``papernot-mnist``; ``mlp`` for small inputs).
        dnn_epochs: its training epochs.
        dnn_path: a saved model to use as the DNN instead of training one.
        knn_k: neighbours of the kNN classifier.
        seeds: seed images of each substitute (taken from the test set after the first ``n``).
        rounds: substitute augmentation rounds.
        sub_epochs: substitute training epochs per round.
        onnx: send the DNN target's queries through ONNX Runtime (export inside the run).
        seed: seeds training and the substitutes.
        device: where torch models run (``cpu`` or ``cuda``).
    """

    families: tuple[str, ...] = FAMILIES
    data: str = "mnist5k"
    data_dir: str | None = None
    n: int = 200
    eps: float = 0.3
    train_size: int | None = None
    dnn_arch: str = "papernot-mnist"
    dnn_epochs: int = 3
    dnn_path: str | None = None
    knn_k: int = 5
    seeds: int = 150
    rounds: int = 6
    sub_epochs: int = 10
    onnx: bool = False
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        fams = tuple(self.families)
        bad = [f for f in fams if f not in FAMILIES]
        if bad or not fams or len(set(fams)) != len(fams):
            raise ConfigError(
                f"families must be distinct names among {', '.join(FAMILIES)}, got {list(fams)}"
            )
        object.__setattr__(self, "families", tuple(f for f in FAMILIES if f in fams))
        for k in ("n", "dnn_epochs", "knn_k", "seeds", "sub_epochs"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"{k} must be an integer >= 1, got {v!r}")
        if isinstance(self.rounds, bool) or not isinstance(self.rounds, int) or self.rounds < 0:
            raise ConfigError(f"rounds must be an integer >= 0, got {self.rounds!r}")
        if self.train_size is not None and self.train_size < 1:
            raise ConfigError(f"train_size must be >= 1 or None (all), got {self.train_size!r}")
        if not (isinstance(self.eps, int | float) and math.isfinite(self.eps) and self.eps >= 0):
            raise ConfigError(f"eps must be a finite number >= 0, got {self.eps!r}")


@dataclass(frozen=True)
class MatrixResult:
    """The matrix and everything needed to read it.

    Attributes:
        families: row and column order.
        matrix: ``matrix[i][j]``: fraction of source ``i``'s examples that target ``j``
            misclassifies.
        clean_error: each target's error on the clean images.
        accuracy: each model's accuracy on the whole test split.
        method: how each source's examples were crafted (``fgsm`` or ``substitute+fgsm``).
        substitutes: per non-differentiable source: oracle ``queries``, final ``agreement``
            with the source on the evaluation images, and the per-round ``history``.
        n, eps, data: what was measured.
        seconds: wall time per stage.
        config: the resolved configuration.
        files: what was written (``json``, ``png``, ``html``).
    """

    families: tuple[str, ...]
    matrix: list[list[float]]
    clean_error: dict[str, float]
    accuracy: dict[str, float]
    method: dict[str, str]
    substitutes: dict[str, dict[str, Any]]
    n: int
    eps: float
    data: str
    seconds: dict[str, float]
    config: dict[str, Any]
    files: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Member:
    """One trained model: its label function, white-box module (if any) and target oracle."""

    def __init__(self, family: str, predict: Callable[[Tensor], Tensor],
                 module: nn.Module | None, oracle: Callable[[], Oracle]) -> None:  # fmt: skip
        self.family = family
        self.predict = predict  # (B, *) -> (B,) labels, outside any query count
        self.module = module
        self.oracle = oracle  # a fresh target oracle


def _fresh(cls: Callable[..., Oracle], *args: Any, **kw: Any) -> Callable[[], Oracle]:
    """A factory of new oracles (each with its own query count)."""
    return lambda: cls(*args, **kw)


def _fixed(oracle: Oracle) -> Callable[[], Oracle]:
    return lambda: oracle


def _sk_predict(est: Any) -> Callable[[Tensor], Tensor]:
    def predict(x: Tensor) -> Tensor:
        flat = x.detach().reshape(x.shape[0], -1).cpu().numpy()
        return torch.as_tensor(np.asarray(est.predict(flat)), dtype=torch.long, device=x.device)

    return predict


def _torch_predict(model: nn.Module, batch: int = 1000) -> Callable[[Tensor], Tensor]:
    @torch.no_grad()
    def predict(x: Tensor) -> Tensor:
        return torch.cat([model(x[i : i + batch]).argmax(1) for i in range(0, len(x), batch)])

    return predict


def _vote(members: list[_Member], num_classes: int) -> Callable[[Tensor], Tensor]:
    """Majority vote; ties go to the class of the earliest member (the DNN first)."""

    def predict(x: Tensor) -> Tensor:
        votes = torch.zeros(x.shape[0], num_classes, dtype=torch.float64, device=x.device)
        for rank, m in enumerate(members):
            lab = m.predict(x)
            votes.scatter_add_(1, lab[:, None], torch.full((x.shape[0], 1), 1.0 + 1e-3 * (len(members) - rank), dtype=torch.float64, device=x.device))  # fmt: skip
        return votes.argmax(dim=1)

    return predict


def _onnx_oracle(model: nn.Module, shape: tuple[int, ...], folder: Path) -> OnnxOracle:
    path = folder / "dnn.onnx"
    cpu = model.to("cpu") if next(model.parameters()).device.type != "cpu" else model
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(cpu, (torch.zeros(2, *shape),), str(path), input_names=["x"],
                          output_names=["logits"], dynamic_axes={"x": {0: "b"}, "logits": {0: "b"}},
                          dynamo=False)  # fmt: skip
    return OnnxOracle(path, access="labels")


def _train_members(cfg: MatrixConfig, train_x: Tensor, train_y: Tensor, c: int,
                   tmp: Path, emit: Progress) -> tuple[dict[str, _Member], dict[str, float]]:  # fmt: skip
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.svm import LinearSVC
    from sklearn.tree import DecisionTreeClassifier

    from advlab.data.base import Dataset
    from advlab.defenses.train import TrainConfig, train
    from advlab.models import load_model
    from advlab.models.zoo import build_model

    dev = torch.device(cfg.device)
    flat = train_x.reshape(train_x.shape[0], -1).numpy()
    labels = train_y.numpy()
    members: dict[str, _Member] = {}
    seconds: dict[str, float] = {}
    shape = tuple(train_x.shape[1:])
    for fam in cfg.families:
        if fam == "ens":
            continue
        tick = time.perf_counter()
        if fam == "dnn":
            if cfg.dnn_path:
                model, _ = load_model(cfg.dnn_path)
            else:
                model = build_model(cfg.dnn_arch, seed=cfg.seed, num_classes=c, in_shape=shape)
                model.to(dev)
                train(model, Dataset("transfer-matrix", train_x.to(dev), train_y.to(dev), c),
                      TrainConfig(epochs=cfg.dnn_epochs, seed=cfg.seed))  # fmt: skip
            model = model.to(dev).eval()
            for p in model.parameters():
                p.requires_grad_(False)
            if cfg.onnx:
                onnx_target = _onnx_oracle(model, shape, tmp)
                model.to(dev)
                oracle = _fixed(onnx_target)
            else:
                oracle = _fresh(ModuleOracle, model, access="labels")
            members[fam] = _Member(fam, _torch_predict(model), model, oracle)
        else:
            est: Any
            if fam == "lr":
                est = LogisticRegression(max_iter=200)
            elif fam == "svm":
                est = LinearSVC(C=0.05, dual=False, max_iter=2000)
            elif fam == "tree":
                est = DecisionTreeClassifier(random_state=cfg.seed)
            else:
                est = KNeighborsClassifier(n_neighbors=cfg.knn_k)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # lbfgs / liblinear convergence notes
                est.fit(flat, labels)
            module = LinearScores(est).to(dev).eval() if fam in DIFFERENTIABLE else None
            oracle = _fresh(SklearnOracle, est, access="labels")
            members[fam] = _Member(fam, _sk_predict(est), module, oracle)
        seconds[f"train_{fam}"] = time.perf_counter() - tick
        emit({"event": "model", "stage": "train", "message": f"trained {NAMES[fam]} "
              f"({seconds[f'train_{fam}']:.1f} s)"})  # fmt: skip
    if "ens" in cfg.families:
        votes = [members[f] for f in FAMILIES if f in members]
        if not votes:
            raise ConfigError("the ensemble needs at least one other family in --families")
        predict = _vote(votes, c)
        oracle = _fresh(CallableOracle, predict, returns="labels", num_classes=c)
        members["ens"] = _Member("ens", predict, None, oracle)
    return members, seconds


def run_transfer_matrix(
    cfg: MatrixConfig, *, out_dir: str | Path | None = None, progress: Progress | None = None
) -> MatrixResult:
    """Train the families, craft on each source, judge on each target (module docstring).

    Args:
        cfg: the configuration.
        out_dir: where to write ``transfer-matrix.json``, ``.png`` (heat map) and ``.html``;
            ``None``: nothing is written.
        progress: called with ``{"event", "stage", "message", ...}`` events.

    Returns:
        A :class:`MatrixResult`.
    """
    from advlab.data import load_dataset

    emit = progress or (lambda e: None)
    started = time.perf_counter()
    splits = load_dataset(cfg.data, data_dir=cfg.data_dir)
    if splits.train is None:
        raise ConfigError(f"dataset {cfg.data!r} has no training split; pick one that has")
    train_x, train_y = splits.train.x, splits.train.y
    if cfg.train_size is not None:
        train_x, train_y = train_x[: cfg.train_size], train_y[: cfg.train_size]
    test = splits.test
    c = splits.test.num_classes
    if len(test) < cfg.n + cfg.seeds:
        raise ConfigError(
            f"the test split has {len(test)} images, fewer than n + seeds = {cfg.n + cfg.seeds}; "
            "lower --n or the substitute seeds"
        )
    dev = torch.device(cfg.device)
    x, y = test.x[: cfg.n].to(dev), test.y[: cfg.n].to(dev)
    seed_x = test.x[len(test) - cfg.seeds :].to(dev)  # the attacker's seeds, kept out of x
    threat = ThreatModel("linf", cfg.eps)
    with tempfile.TemporaryDirectory() as tmp_dir:
        members, seconds = _train_members(cfg, train_x, train_y, c, Path(tmp_dir), emit)
        accuracy = {f: float((m.predict(test.x.to(dev)) == test.y.to(dev)).float().mean())
                    for f, m in members.items()}  # fmt: skip
        fams = cfg.families
        adv: dict[str, Tensor] = {}
        method: dict[str, str] = {}
        subs: dict[str, dict[str, Any]] = {}
        for i, fam in enumerate(fams):
            tick = time.perf_counter()
            m = members[fam]
            if m.module is not None:
                source: nn.Module = m.module
                method[fam] = "fgsm"
            else:
                sub = train_substitute(
                    m.oracle(), seed_x, rounds=cfg.rounds, epochs=cfg.sub_epochs, seed=cfg.seed,
                    holdout=(x, m.predict(x)), lower=threat.lower, upper=threat.upper,
                )  # fmt: skip
                source = sub.model
                for p in source.parameters():
                    p.requires_grad_(False)
                method[fam] = "substitute+fgsm"
                subs[fam] = {"queries": sub.queries, "agreement": sub.agreement,
                             "history": sub.history}  # fmt: skip
            adv[fam] = fgsm(source, x, y, threat).x_adv
            seconds[f"craft_{fam}"] = time.perf_counter() - tick
            emit({"event": "source", "stage": "craft", "done": i + 1, "total": len(fams),
                  "message": f"crafted on {NAMES[fam]} ({method[fam]}, "
                  f"{seconds[f'craft_{fam}']:.1f} s)"})  # fmt: skip
        matrix: list[list[float]] = []
        clean_error: dict[str, float] = {}
        tick = time.perf_counter()
        for fam in fams:
            clean_error[fam] = verify_on(members[fam].oracle(), x, x, y, threat).success_rate
        for src in fams:
            matrix.append([verify_on(members[t].oracle(), x, adv[src], y, threat).success_rate
                           for t in fams])  # fmt: skip
        seconds["evaluate"] = time.perf_counter() - tick
    seconds["total"] = time.perf_counter() - started
    result = MatrixResult(
        families=fams, matrix=matrix, clean_error=clean_error, accuracy=accuracy, method=method,
        substitutes=subs, n=cfg.n, eps=cfg.eps, data=cfg.data, seconds=seconds,
        config=asdict(cfg),
    )  # fmt: skip
    if out_dir is not None:
        result = write_outputs(result, Path(out_dir))
    return result


def write_outputs(result: MatrixResult, folder: Path, stem: str = "transfer-matrix") -> MatrixResult:  # fmt: skip
    """Write the JSON, the heat map (PNG) and an HTML table; returns the result with ``files``."""
    from advlab.fileio import atomic_write_text

    folder.mkdir(parents=True, exist_ok=True)
    files = {"json": str(folder / f"{stem}.json"), "png": str(folder / f"{stem}.png"),
             "html": str(folder / f"{stem}.html")}  # fmt: skip
    plot_matrix(result, Path(files["png"]))
    atomic_write_text(Path(files["html"]), matrix_html(result))
    out = MatrixResult(**{**asdict(result), "files": files})
    atomic_write_text(Path(files["json"]), json.dumps(out.to_dict(), indent=1, default=str))
    return out


def plot_matrix(result: MatrixResult, path: Path) -> None:
    """The report's transfer heat map (:func:`advlab.report.plots.transfer_plot`), as a PNG
    file written atomically."""
    import base64

    from advlab.fileio import atomic_write_bytes
    from advlab.report.plots import transfer_plot

    names = [NAMES[f] for f in result.families]
    uri = transfer_plot(result.matrix, names, names, f"misclassified at eps {result.eps:g}")
    atomic_write_bytes(path, base64.b64decode(uri.split(",", 1)[1]))


def matrix_html(result: MatrixResult) -> str:
    """A standalone HTML table of the matrix, cells shaded by their value."""
    names = [NAMES[f] for f in result.families]
    head = "".join(f"<th>{html.escape(n)}</th>" for n in names)
    rows = []
    for i, f in enumerate(result.families):
        cells = "".join(
            f'<td style="background:rgba(0,0,0,{v * 0.8:.2f});color:{"#fff" if v > 0.5 else "#000"}">'
            f"{100 * v:.0f}%</td>" for v in result.matrix[i]
        )  # fmt: skip
        rows.append(f"<tr><th>{html.escape(NAMES[f])} ({result.method[f]})</th>{cells}</tr>")
    clean = "".join(f"<td>{100 * result.clean_error[f]:.0f}%</td>" for f in result.families)
    return (
        "<!doctype html><meta charset=utf-8><title>advlab transferability matrix</title>"
        "<style>td,th{padding:4px 8px;text-align:right;font-family:sans-serif}</style>"
        f"<p>Cell (source, target): % of FGSM eps={result.eps:g} examples crafted on the source "
        f"that the target misclassifies; {result.data}, n={result.n}.</p>"
        f"<table><tr><th>source \\ target</th>{head}</tr>{''.join(rows)}"
        f"<tr><th>clean error</th>{clean}</tr></table>\n"
    )
