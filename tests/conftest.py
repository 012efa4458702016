"""Shared fixtures: small deterministic models and batches."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from advlab.models import build_model, save_model
from advlab.oracle import ModuleOracle

# Tiny models run fastest on one thread; tests that train real models raise it locally.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _isolated_home(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Keep every test's store and cache out of the user's home."""
    root = tmp_path_factory.mktemp("advlab-home")
    monkeypatch.setenv("ADVLAB_HOME", str(root / "home"))
    monkeypatch.setenv("ADVLAB_CACHE", str(root / "cache"))


def make_cnn(seed: int = 0, classes: int = 10) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    m = nn.Sequential(
        nn.Conv2d(1, 4, 3, stride=2), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 13 * 13, 32),
        nn.ReLU(), nn.Linear(32, classes),
    )  # fmt: skip
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (1.0 / max(1, p.shape[-1]) ** 0.5))
    return m.eval()


class RowwiseMLP(nn.Module):
    """An MLP 784-32-10 whose arithmetic is the same for a sample in any batch: no batched
    matrix products, whose last bits can change with the batch size. For exact batch-size,
    per-row query-count and golden-tensor tests."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w1 = nn.Parameter(torch.randn(32, 784, generator=g) / 28)
        self.w2 = nn.Parameter(torch.randn(10, 32, generator=g) / 32**0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = (x.flatten(1)[:, None, :] * self.w1[None]).sum(-1).relu()
        return (h[:, None, :] * self.w2[None]).sum(-1)


@pytest.fixture
def cnn() -> nn.Module:
    return make_cnn()


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(16, 1, 28, 28, generator=g)
    y = torch.randint(0, 10, (16,), generator=g)
    return x, y


class LinearBinary(nn.Module):
    """Logits ``[0, w.x + b]``: class 1 iff ``w.x + b > 0``. Minimal perturbations are closed-form:
    L2: ``|f| / ||w||_2``, Linf: ``|f| / ||w||_1`` (while the box does not bind)."""

    def __init__(self, w: torch.Tensor, b: float) -> None:
        super().__init__()
        self.w = nn.Parameter(w.flatten().clone())
        self.b = nn.Parameter(torch.tensor(float(b)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = x.flatten(1) @ self.w + self.b
        return torch.stack([torch.zeros_like(f), f], dim=1)


@pytest.fixture
def linear_binary() -> LinearBinary:
    g = torch.Generator().manual_seed(3)
    return LinearBinary(torch.randn(1 * 8 * 8, generator=g), 0.1).eval()


def linear_margin_batch(
    model: LinearBinary, n: int = 12
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inputs near 0.5 with margins ``|f|`` in [0.2, 1], so that the box never binds.

    Returns ``x (n, 1, 8, 8)``, labels and ``|f|``.
    """
    g = torch.Generator().manual_seed(0)
    w = model.w.detach()
    x = 0.5 + 0.02 * torch.randn(n, 64, generator=g)
    f = x @ w + model.b.detach()
    want = torch.sign(f) * (0.2 + 0.8 * torch.rand(n, generator=g))
    x = x + ((want - f) / (w @ w))[:, None] * w  # shift along w to the wanted margin
    return x.view(n, 1, 8, 8), (want > 0).long(), want.abs()


@dataclass(frozen=True)
class Toy:
    """Duck-typed dataset (name, x, y, num_classes), as evaluation and training accept."""

    name: str
    x: torch.Tensor
    y: torch.Tensor
    num_classes: int


class Counting(ModuleOracle):
    """A module oracle that keeps its own tally of the images it answered, to hold the oracle's
    and the attacks' counts to."""

    def __init__(self, model: nn.Module, **kw: Any) -> None:
        super().__init__(model, **kw)
        self.seen = 0

    def _call(self, x: Tensor, grad: bool) -> Tensor:
        self.seen += x.shape[0]
        return super()._call(x, grad)


def one_line_error(result: Any, *fragments: str) -> None:
    """A CLI result is a one-line user error (exit code 2, no traceback) naming ``fragments``."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    text = " ".join(result.output.split())
    assert text.startswith("error:"), text
    for f in fragments:
        assert f in text, (f, text)


@pytest.fixture
def digits_model(tmp_path: Path) -> Path:
    """An untrained 8x8-digits MLP saved as advlab saves models."""
    torch.manual_seed(0)
    model = build_model("mlp", num_classes=10, in_shape=(1, 8, 8))
    return save_model(model, tmp_path / "mlp-digits", arch="mlp",
                      arch_kwargs={"num_classes": 10, "in_shape": [1, 8, 8]}, dataset="digits")  # fmt: skip


@pytest.fixture
def fake_reproduction(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A catalog entry registered for one test: its figure comes from its parameters, it
    counts its cached stages (``REPRODUCTIONS.get("fake").run.calls``) and draws one plot."""
    from advlab.registry import REPRODUCTIONS
    from advlab.report.fmt import figure, png_data_uri
    from advlab.reproduce import Context, Figure, Outcome, Table, at_least, reproduction

    calls: list[str] = []

    def plot() -> str:
        fig = figure(3, 2)
        fig.add_subplot().plot([0, 1], [0, 1])
        return png_data_uri(fig)

    def run(ctx: Context) -> Outcome:
        stage = ctx.cached("stage", lambda: calls.append("stage") or {"v": ctx.p["value"]},
                           {"value": ctx.p["value"]})  # fmt: skip
        return Outcome(
            [Figure("measured <b>value</b>", stage["v"], 0.5, at_least(ctx.p["target"])),
             Figure("queries", 1234.0, "~1,000", unit="queries")],
            [Table("detail", ["k", "v"], [["row", "cell-<i>"]])],
            notes=["a note"], data={"calls": len(calls)}, plots=[("a plot", plot())],
        )  # fmt: skip

    monkeypatch.setattr(REPRODUCTIONS, "_entries", dict(REPRODUCTIONS._entries))
    reproduction("fake", title="A fake entry for the tests", paper="Nobody 2026, Nothing",
                 claim="The value is at least the target, says the paper.",
                 params={"data": "mnist", "value": 0.7, "target": 0.6, "seed": 0},
                 quick={"data": "mnist5k"}, budget="No budget at all, it is a test.",
                 minutes=0.1)(run)  # fmt: skip
    run.calls = calls  # type: ignore[attr-defined]
    yield "fake"
