"""The report's figures, drawn with matplotlib's Agg canvas (no pyplot) and returned as PNG data
URIs. Accuracies are in percent everywhere, as in the tables.

Each function takes plain data (an :class:`~advlab.evaluate.Evaluation`, or lists and
matrices), so a section decides *whether* to draw and these only decide *how*.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from advlab.evaluate.aggregate import Evaluation
from advlab.evaluate.certification import SampleBounds
from advlab.evaluate.plan import WORST_CASE
from advlab.report.fmt import attack_label, figure, png_data_uri
from advlab.results import SampleRecord

#: Colour of certified quantities in the plots (outside the attacks' C0, C1, ... cycle).
CERTIFIED_COLOR = "#008080"
#: Colour of the worst-case envelope.
WORST_COLOR = "#222222"
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
_DASHES: tuple[Any, ...] = ("-", (0, (6, 3)), (0, (2, 2)), "-.", (0, (8, 2, 2, 2)))
_FONT: dict[Any, Any] = {"font.size": 11, "axes.labelsize": 11, "legend.fontsize": 10}


def _style() -> Any:
    import matplotlib

    return matplotlib.rc_context(_FONT)


def robustness_plot(ev: Evaluation, norm: str | None = None) -> str:
    """Robust accuracy (%) against eps in one norm: one thin line with markers per attack, the
    worst case as a thick translucent band drawn underneath (so it hides no attack's line), the
    certified accuracy where computed, and clean accuracy as a dotted line."""
    norm = norm or ev.norm
    with _style():
        fig = figure(7.2, 4.0)
        ax = fig.add_subplot()
        worst = ev.curve(WORST_CASE, norm)
        if worst:
            eps = [r.eps for r in worst]
            ax.fill_between(eps, [100 * r.ci_low for r in worst], [100 * r.ci_high for r in worst],
                            color=WORST_COLOR, alpha=0.08, linewidth=0)  # fmt: skip
            ax.plot(eps, [100 * r.robust_accuracy for r in worst], color=WORST_COLOR, alpha=0.25,
                    linewidth=9, solid_capstyle="round", zorder=1,
                    label="worst case (per sample)")  # fmt: skip
        for i, a in enumerate(ev.attacks):
            curve = ev.curve(a.name, norm)
            if not curve:
                continue
            # Attacks often tie: later ones get smaller markers and dashed lines, drawn on top,
            # so a tied line shows as alternating colours and concentric markers.
            ax.plot([r.eps for r in curve], [100 * r.robust_accuracy for r in curve],
                    color=f"C{i}", marker=_MARKERS[i % len(_MARKERS)],
                    markersize=max(10 - 2.5 * i, 4), linewidth=1.8,
                    linestyle=_DASHES[i % len(_DASHES)], zorder=3 + i,
                    label=attack_label(a.name, a.params))  # fmt: skip
        cert = [c for c in ev.certified if c.norm == norm]
        if cert:
            ax.plot([c.eps for c in cert], [100 * c.certified_accuracy for c in cert],
                    marker="s", markersize=5, color=CERTIFIED_COLOR, linestyle="-.",
                    linewidth=1.8, zorder=2, label=f"certified ({cert[0].method})")  # fmt: skip
        ax.axhline(100 * ev.clean_accuracy, color="grey", linestyle=":", linewidth=1.2,
                   label="clean")  # fmt: skip
        ax.set_xlabel(f"eps ({norm})")
        ax.set_ylabel("robust accuracy (%)")
        ax.set_ylim(0.0, 102.0)
        ax.grid(True, alpha=0.3)
        ax.legend(loc="best", frameon=False)
        return png_data_uri(fig)


def norms_plot(per_attack: Mapping[str, Sequence[float]], n_correct: int, norm: str,
               grid: Sequence[float]) -> str:  # fmt: skip
    """Histogram and cumulative distribution of minimal perturbation norms.

    Args:
        per_attack: for each minimal attack, the norms of the perturbations that flipped a
            correctly classified sample.
        n_correct: correctly classified samples (the CDF's denominator: samples an attack never
            flipped keep it below 100%).
        norm: the norm's name, for the axes.
        grid: the eps grid, marked on the CDF.
    """
    from matplotlib.ticker import MaxNLocator

    with _style():
        fig = figure(9.6, 3.6)
        hist, cdf = fig.subplots(1, 2)
        top = max((max(v) for v in per_attack.values() if v), default=1.0) or 1.0
        bins = [top * i / 30 for i in range(31)]
        for i, (name, values) in enumerate(per_attack.items()):
            if not values:
                continue
            hist.hist(list(values), bins=bins, histtype="step", linewidth=1.6, color=f"C{i}",
                      label=name)  # fmt: skip
            v = sorted(values)
            k = max(n_correct, 1)
            cdf.step([0.0, *v], [100 * j / k for j in range(len(v) + 1)], where="post",
                     color=f"C{i}", linewidth=1.6, label=name)  # fmt: skip
        for e in grid:
            if 0 < e <= top:
                cdf.axvline(e, color="grey", alpha=0.35, linewidth=0.8)
        hist.set_xlabel(f"perturbation norm ({norm})")
        hist.set_ylabel("samples")
        hist.yaxis.set_major_locator(MaxNLocator(integer=True))
        hist.legend(frameon=False)
        cdf.set_xlabel(f"r ({norm})")
        cdf.set_ylabel("flipped within r (% of correct)")
        cdf.set_ylim(0, 102)
        for ax in (hist, cdf):
            ax.grid(True, alpha=0.3)
        return png_data_uri(fig)


def per_class_plot(classes: Sequence[str], columns: Sequence[str],
                   acc: Sequence[Sequence[float]], counts: Sequence[int]) -> str:  # fmt: skip
    """A heat map of accuracy (%) per class (rows) and column (clean, then each eps).

    Args:
        classes: row labels.
        columns: column labels.
        acc: ``(len(classes), len(columns))`` accuracies in ``[0, 1]`` (NaN for no samples).
        counts: samples per class.
    """
    import numpy as np

    a = np.array(acc, dtype=np.float64) * 100
    with _style():
        fig = figure(1.0 + 0.85 * len(columns), 0.9 + 0.34 * len(classes))
        ax = fig.add_subplot()
        im = ax.imshow(np.ma.masked_invalid(a), cmap="RdYlGn", vmin=0, vmax=100, aspect="auto")
        for i in range(a.shape[0]):
            for j in range(a.shape[1]):
                v = a[i, j]
                if math.isfinite(v):
                    ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=10,
                            color="black" if 25 < v < 85 else "white")  # fmt: skip
        ax.set_xticks(range(len(columns)), list(columns))
        ax.set_yticks(range(len(classes)),
                      [f"{c} (n={k})" for c, k in zip(classes, counts, strict=True)])  # fmt: skip
        ax.set_xlabel("eps")
        ax.tick_params(length=0)
        fig.colorbar(im, ax=ax, label="accuracy (%)", shrink=0.8)
        return png_data_uri(fig)


def queries_plot(curves: Mapping[str, Mapping[float, Sequence[int]]], n_correct: int,
                 price: float | None = None) -> str:  # fmt: skip
    """Success rate (%) against the query budget, one panel per attack and one line per eps.

    Args:
        curves: per attack, per eps, the queries each flipped sample took.
        n_correct: correctly classified samples (the success rate's denominator).
        price: cost of one query in dollars, to add a dollar axis on top.
    """
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    k = max(n_correct, 1)
    with _style():
        fig = figure(min(4.2 * len(curves), 12.6) + 0.4, 3.6)
        axes = fig.subplots(1, len(curves), squeeze=False)[0]
        for ax, (name, by_eps) in zip(axes, curves.items(), strict=True):
            from matplotlib import colormaps

            cmap = colormaps["viridis"]
            for j, (eps, queries) in enumerate(sorted(by_eps.items())):
                q = sorted(queries)
                c = cmap(j / max(len(by_eps) - 1, 1) * 0.9)
                ax.step([max(q[0], 1) if q else 1, *q], [0.0, *(100 * (i + 1) / k
                        for i in range(len(q)))], where="post", color=c,
                        label=f"eps {eps:g}")  # fmt: skip
            seen = [q for qs in by_eps.values() for q in qs]
            if seen and max(seen) > 50 * max(min(seen), 1):  # a wide range: log scale
                ax.set_xscale("log")
                ax.xaxis.set_major_formatter(ScalarFormatter())
                ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_title(name)
            ax.set_xlabel("queries per sample")
            ax.set_ylabel("success rate (% of correct)")
            ax.set_ylim(0, 102)
            ax.grid(True, alpha=0.3, which="both")
            ax.legend(frameon=False, fontsize=9)
            if price:
                top = ax.secondary_xaxis("top", functions=(lambda x: x * price,
                                                           lambda d: d / price))  # fmt: skip
                top.set_xlabel("dollars per sample")
        return png_data_uri(fig)


def transfer_plot(matrix: Sequence[Sequence[float]], sources: Sequence[str],
                  targets: Sequence[str], metric: str) -> str:  # fmt: skip
    """A heat map of a transfer matrix (rows: source models, columns: target models), values in
    ``[0, 1]`` shown in percent."""
    import numpy as np

    a = np.array(matrix, dtype=np.float64) * 100
    with _style():
        fig = figure(1.8 + 0.95 * len(targets), 1.0 + 0.5 * len(sources))
        ax = fig.add_subplot()
        im = ax.imshow(np.ma.masked_invalid(a), cmap="magma_r", vmin=0, vmax=100, aspect="auto")
        for i in range(a.shape[0]):
            for j in range(a.shape[1]):
                if math.isfinite(a[i, j]):
                    ax.text(j, i, f"{a[i, j]:.0f}", ha="center", va="center", fontsize=10,
                            color="white" if a[i, j] > 55 else "black")  # fmt: skip
        ax.set_xticks(range(len(targets)), list(targets), rotation=30, ha="right")
        ax.set_yticks(range(len(sources)), list(sources))
        ax.set_xlabel("target model (attacked with the source's examples)")
        ax.set_ylabel("source model")
        fig.colorbar(im, ax=ax, label=f"{metric} (%)", shrink=0.8)
        return png_data_uri(fig)


def training_plot(rows: Sequence[Mapping[str, Any]]) -> str:
    """Accuracy (%) per training epoch: training, validation clean and under PGD, evaluation."""
    epochs = [r["epoch"] for r in rows]
    with _style():
        fig = figure(6.8, 3.4)
        ax = fig.add_subplot()
        series = [("train_accuracy", "training (recipe inputs)", "-"),
                  ("val_accuracy", "validation, clean", "-"),
                  ("val_robust_accuracy", "validation, PGD", "--"),
                  ("eval_accuracy", "evaluation data", ":")]  # fmt: skip
        for key, label, style in series:
            pts = [(e, 100 * r[key]) for e, r in zip(epochs, rows, strict=True)
                   if isinstance(r.get(key), int | float)]  # fmt: skip
            if pts:
                ax.plot(*zip(*pts, strict=True), style, marker="o", markersize=4, label=label)
        ax.set_xlabel("epoch")
        ax.set_ylabel("accuracy (%)")
        ax.set_ylim(0, 101)
        ax.grid(True, alpha=0.3)
        ax.legend(loc="lower right", frameon=False)
        return png_data_uri(fig)


def bounds_plot(bounds: Sequence[SampleBounds], norm: str, method: str) -> str:
    """Per-sample certified radius and smallest adversarial example (sorted), and the two
    distributions (% of correctly classified samples)."""
    ok = [b for b in bounds if b.correct]
    order = sorted(ok, key=lambda b: (b.attack_norm is None, b.attack_norm or 0.0, b.certified))
    with _style():
        fig = figure(9.6, 3.8)
        left, right = fig.subplots(1, 2)
        xs = range(len(order))
        upper = [
            (i, b.attack_norm) for i, b in zip(xs, order, strict=True) if b.attack_norm is not None
        ]
        left.vlines([i for i, _ in upper], [order[i].certified for i, _ in upper],
                    [u for _, u in upper], color="grey", alpha=0.35, linewidth=0.8)  # fmt: skip
        left.scatter(list(xs), [b.certified for b in order], s=9, color=CERTIFIED_COLOR,
                     label=f"certified ({method}): lower bound")  # fmt: skip
        if upper:
            left.scatter(*zip(*upper, strict=True), s=9, color="C3", label="attack: upper bound")
        left.set_xlabel("correctly classified samples, by upper bound")
        left.set_ylabel(f"radius ({norm})")
        left.grid(True, alpha=0.3)
        left.legend(loc="upper left", frameon=False)
        k = max(len(ok), 1)
        for values, color, label in (
            (sorted(b.certified for b in ok), CERTIFIED_COLOR, "certified radius"),
            (sorted(b.attack_norm for b in ok if b.attack_norm is not None), "C3",
             "smallest adversarial example"),
        ):  # fmt: skip
            if values:
                right.step([0.0, *values], [100 * j / k for j in range(len(values) + 1)],
                           where="post", color=color, label=label)  # fmt: skip
        right.set_xlabel(f"r ({norm})")
        right.set_ylabel("% of correct samples <= r")
        right.set_ylim(0.0, 102.0)
        right.grid(True, alpha=0.3)
        right.legend(loc="lower right", frameon=False)
        return png_data_uri(fig)


def flipped_norms(records: Sequence[SampleRecord]) -> list[float]:
    """Norms of the perturbations that flipped a correctly classified sample."""
    return [r.norm for r in records if r.clean_pred == r.label and r.success]
