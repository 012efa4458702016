"""The HTML report: one self-contained file with the numbers, a plot and example images.

The page is a list of *sections*. A section is a function ``section(evaluation, extra) -> str``
returning an HTML fragment (``""`` to leave itself out); :data:`SECTIONS` holds the default ones
(header, summary table, robust accuracy against eps, certified against attack radius where the
evaluation was certified, training curves, example images). Later capabilities add
their own by passing ``sections=[*SECTIONS, my_section]`` to :func:`write_html_report`, reading
what they need from ``extra``. A section builds its fragment with :func:`fragment`, which renders
a Jinja2 template with autoescaping, so values are always escaped; plots go in as PNG data URIs
made by :func:`png_data_uri`. Nothing in the page refers to the network.
"""

from __future__ import annotations

import base64
import functools
import io
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import jinja2
import torch
from markupsafe import Markup

from advlab.evaluate.aggregate import Evaluation
from advlab.evaluate.certification import SampleBounds, bounds_summary
from advlab.evaluate.plan import WORST_CASE
from advlab.fileio import atomic_write_text
from advlab.serialize import plain

Section = Callable[[Evaluation, Mapping[str, Any]], str]
"""``section(evaluation, extra) -> html``: one part of the report (``""`` to skip)."""


# -- formatting ----------------------------------------------------------------------------------


def fmt_pct(x: float | None, digits: int = 1) -> str:
    """``0.4567 -> "45.7%"``; ``None``/NaN -> ``"–"``."""
    if x is None or not math.isfinite(x):
        return "–"
    return f"{100 * x:.{digits}f}%"


def fmt_num(x: float | int | None, digits: int = 4) -> str:
    """A number in ``digits`` significant digits (integers as they are); ``None``/NaN -> ``"–"``."""
    if x is None:
        return "–"
    if isinstance(x, int):
        return f"{x:,}"
    if not math.isfinite(x):
        return "–" if math.isnan(x) else ("inf" if x > 0 else "-inf")
    return f"{x:.{digits}g}"


def fmt_seconds(x: float | None) -> str:
    """Seconds as ``"0.42 s"``, ``"3.1 min"`` or ``"1.2 h"``."""
    if x is None or not math.isfinite(x):
        return "–"
    if x < 60:
        return f"{x:.2f} s"
    if x < 3600:
        return f"{x / 60:.1f} min"
    return f"{x / 3600:.1f} h"


@functools.lru_cache(maxsize=1)
def _env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("advlab.report", "templates"),
        autoescape=jinja2.select_autoescape(["html"], default_for_string=True),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(pct=fmt_pct, num=fmt_num, seconds=fmt_seconds)
    return env


@functools.lru_cache(maxsize=64)
def _compiled(source: str) -> jinja2.Template:
    return _env().from_string(source)


def fragment(source: str, **context: Any) -> Markup:
    """Render a Jinja2 template string with autoescaping (filters ``pct``, ``num``, ``seconds``).

    Example:
        >>> fragment("<p>{{ name }}: {{ acc | pct }}</p>", name="<pgd>", acc=0.5)
        Markup('<p>&lt;pgd&gt;: 50.0%</p>')
    """
    return Markup(_compiled(source).render(**context))


def png_data_uri(fig: Any, *, dpi: int = 110) -> str:
    """A matplotlib figure as a ``data:image/png;base64,...`` URI (rendered with Agg)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)  # Agg directly: no pyplot, no global backend switch
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


#: Colour of certified quantities in the plots (outside the attacks' C0, C1, ... cycle).
CERTIFIED_COLOR = "#008080"


# -- default sections -----------------------------------------------------------------------------

_HEADER = """
<header>
<h1>{{ title }}</h1>
<p class="lead">{{ model }} on {{ dataset }} ({{ n | num }} samples, {{ classes }} classes) under
{{ grid }}.</p>
<dl class="meta">
  <dt>model</dt><dd><code>{{ model }}</code>{% if model_info %}<br><span class="note">{% for k, v in model_info.items() %}{{ k }}: {{ v }}{% if not loop.last %} · {% endif %}{% endfor %}</span>{% endif %}</dd>
  <dt>dataset</dt><dd><code>{{ dataset }}</code>{% if data_info %}<br><span class="note">{% for k, v in data_info.items() %}{{ k }}: {{ v }}{% if not loop.last %} · {% endif %}{% endfor %}</span>{% endif %}</dd>
  <dt>run</dt><dd>{% if run_id %}<code>{{ run_id }}</code>{% else %}not stored{% endif %}</dd>
  <dt>date</dt><dd>{{ date }}</dd>
  <dt>threat model</dt><dd>{{ norms }} ball of radius eps, inputs in [{{ lower }}, {{ upper }}]</dd>
  <dt>attacks</dt><dd>{% for a in attacks %}<code>{{ a.name }}</code>{% if a.params %}
      ({% for k, v in a.params.items() %}{{ k }}={{ v }}{% if not loop.last %}, {% endif %}{% endfor %}){% endif %}{% if not loop.last %}; {% endif %}{% endfor %}</dd>
  <dt>seed</dt><dd>{{ seed }}</dd>
  <dt>clean accuracy</dt><dd>{{ clean | pct }} <span class="ci">[{{ clean_lo | pct }}, {{ clean_hi | pct }}]</span></dd>
  <dt>versions</dt><dd>{% for k, v in versions.items() %}{{ k }} {{ v }}{% if not loop.last %} · {% endif %}{% endfor %}</dd>
</dl>
<h3>Configuration</h3>
<pre><code>{{ config }}</code></pre>
</header>
"""


def _named(value: Any, default: str) -> tuple[str, dict[str, str]]:
    """A display name and details from ``extra["model"]``-like values (a name or a dict)."""
    if isinstance(value, Mapping):
        details = {
            str(k): v if isinstance(v, str) else json.dumps(plain(v), sort_keys=True)
            for k, v in value.items()
            if k not in ("name", "extra") and v is not None
        }
        return str(value.get("name") or default), details
    return (str(value) if value else default), {}


def header_section(ev: Evaluation, extra: Mapping[str, Any]) -> str:
    """Title, model, dataset, run id, date, versions, seed and the full configuration.

    Versions, revision and date come from the evaluation's provenance, captured when the work
    ran (not from the machine that renders the page).
    """
    env = ev.provenance
    versions = {
        k: env[k]
        for k in ("advlab", "torch", "python", "numpy", "cuda", "git_revision", "platform")
        if env.get(k) is not None
    }
    config = dict(ev.config)
    if isinstance(extra.get("config"), Mapping):
        config = {"evaluation": config, "run": extra["config"]}
    model, model_info = _named(extra.get("model"), str(ev.config.get("model_class", "model")))
    dataset, data_info = _named(extra.get("dataset"), ev.dataset)
    return fragment(
        _HEADER,
        title=str(extra.get("title") or "Adversarial robustness report"),
        model=model,
        model_info=model_info,
        dataset=dataset,
        data_info=data_info,
        n=ev.n,
        classes=ev.num_classes,
        grid="; ".join(
            f"{n} perturbations, eps in [{', '.join(fmt_num(e) for e in ev.eps_grid(n))}]"
            for n in ev.norms
        ),
        norms=" or ".join(ev.norms),
        run_id=ev.run_id or extra.get("run_id"),
        date=str(extra.get("date") or env.get("started") or "unknown"),
        lower=fmt_num(ev.threats[0].lower),
        upper=fmt_num(ev.threats[0].upper),
        attacks=[a.to_dict() for a in ev.attacks],
        seed=ev.config.get("seed"),
        clean=ev.clean_accuracy,
        clean_lo=ev.clean_ci[0],
        clean_hi=ev.clean_ci[1],
        versions=versions,
        config=json.dumps(plain(config), indent=2, sort_keys=True),
    )


_SUMMARY = """
<section id="summary">
<h2>Robust accuracy</h2>
<p>Clean accuracy: <strong>{{ clean | pct }}</strong> <span class="ci">[{{ clean_lo | pct }}, {{ clean_hi | pct }}]</span>.
A sample counts as robust when it is classified correctly both clean and under attack;
<em>worst-case</em> counts it robust only if every attack failed on it. Intervals are Wilson 95%.
Success rate is the fraction of correctly classified samples an attack flipped; the median
{{ norm }} norm is taken over those.{% if method %} <em>certified ({{ method }})</em> counts a
sample when it is classified correctly and its certified radius is at least eps: no perturbation
within eps can change its prediction, so certified accuracy is a lower bound on the robust
accuracy, which the attacks bound from above.{% endif %}</p>
<table>
<thead><tr>
  <th>attack</th><th class="num">eps</th><th class="num">robust accuracy</th><th class="num">95% CI</th>
  <th class="num">success rate</th><th class="num">median norm</th><th class="num">queries</th>
  <th class="num">wall time</th>
</tr></thead>
<tbody>
{% for r in rows %}
<tr class="{% if r.attack == worst %}worst{% endif %}{% if r.certified %}certified{% endif %}{% if r.first %} group-start{% endif %}">
  <td>{{ r.attack }}</td>
  <td class="num">{{ r.eps | num }}</td>
  <td class="num">{{ r.robust_accuracy | pct }}</td>
  <td class="num ci">[{{ r.ci_low | pct }}, {{ r.ci_high | pct }}]</td>
  <td class="num">{{ r.success_rate | pct }}</td>
  <td class="num">{{ r.median_norm | num }}</td>
  <td class="num">{{ r.queries | num }}</td>
  <td class="num">{{ r.wall_time | seconds }}</td>
</tr>
{% endfor %}
</tbody>
</table>
</section>
"""


def summary_section(ev: Evaluation, extra: Mapping[str, Any]) -> str:
    """The table: attack, eps, robust accuracy with CI, success rate, median norm, cost; with
    certification, the certified accuracy after each eps's worst case."""
    rows = []
    last = None
    cert = {(c.norm, c.eps): c for c in ev.certified}
    for s in ev.summaries:
        rows.append({**s.to_dict(), "first": (s.norm, s.eps) != last and last is not None,
                     "certified": False})  # fmt: skip
        last = (s.norm, s.eps)
        c = cert.get((s.norm, s.eps)) if s.attack == WORST_CASE else None
        if c is not None:
            rows.append({
                "attack": f"certified ({c.method})", "eps": c.eps,
                "robust_accuracy": c.certified_accuracy, "ci_low": c.ci_low,
                "ci_high": c.ci_high, "success_rate": None, "median_norm": None,
                "queries": None, "wall_time": c.wall_time, "first": False, "certified": True,
            })  # fmt: skip
    return fragment(
        _SUMMARY,
        rows=rows,
        worst=WORST_CASE,
        norm=" / ".join(ev.norms),
        clean=ev.clean_accuracy,
        clean_lo=ev.clean_ci[0],
        clean_hi=ev.clean_ci[1],
        method=ev.certified[0].method if ev.certified else None,
    )


_CURVE = """
<section id="curve">
<h2>Robust accuracy against eps</h2>
{% for norm, uri in plots %}
<img src="{{ uri }}" class="plot" alt="robust accuracy against {{ norm }} eps, one line per attack and the worst case, with 95% intervals">
{% endfor %}
<p class="note">Shaded bands are Wilson 95% intervals; the dotted line is clean accuracy.{% if certified %}
The dash-dotted line is the certified accuracy: the robust accuracy lies between it and the
worst case.{% endif %}</p>
</section>
"""


def robustness_plot(ev: Evaluation, norm: str | None = None) -> str:
    """Robust accuracy against eps in one norm, one line per attack plus the worst case, as a
    data URI."""
    norm = norm or ev.norm
    fig = _figure(6.8, 4.2)
    ax = fig.add_subplot()
    names = ev.attack_names
    colors = [f"C{i}" for i in range(len(names) - 1)] + ["black"]
    for name, color in zip(names, colors, strict=True):
        curve = ev.curve(name, norm)
        if not curve:
            continue
        eps = [r.eps for r in curve]
        acc = [r.robust_accuracy for r in curve]
        worst = name == WORST_CASE
        ax.fill_between(
            eps, [r.ci_low for r in curve], [r.ci_high for r in curve],
            color=color, alpha=0.12 if worst else 0.15, linewidth=0,
        )  # fmt: skip
        ax.plot(
            eps, acc, marker="o", markersize=4, color=color, label=name,
            linewidth=2.2 if worst else 1.5, linestyle="--" if worst else "-",
            zorder=3 if worst else 2,
        )  # fmt: skip
    cert = [c for c in ev.certified if c.norm == norm]
    if cert:
        eps = [c.eps for c in cert]
        ax.fill_between(eps, [c.ci_low for c in cert], [c.ci_high for c in cert],
                        color=CERTIFIED_COLOR, alpha=0.12, linewidth=0)  # fmt: skip
        ax.plot(eps, [c.certified_accuracy for c in cert], marker="s", markersize=4,
                color=CERTIFIED_COLOR,
                linestyle="-.", linewidth=2.0, label=f"certified ({cert[0].method})")  # fmt: skip
    ax.axhline(ev.clean_accuracy, color="grey", linestyle=":", linewidth=1, label="clean")
    ax.set_xlabel(f"eps ({norm})")
    ax.set_ylabel("robust accuracy")
    ax.set_ylim(0.0, 1.02)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize="small", frameon=False)
    return png_data_uri(fig)


def curve_section(ev: Evaluation, extra: Mapping[str, Any]) -> str:
    """The robust-accuracy-against-eps plot."""
    return fragment(_CURVE, plots=[(n, robustness_plot(ev, n)) for n in ev.norms],
                    certified=bool(ev.certified))  # fmt: skip


_EXAMPLES = """
<section id="examples">
<h2>Adversarial examples</h2>
{% if uri %}
<img src="{{ uri }}" class="plot" alt="clean inputs, adversarial inputs and amplified perturbations">
<p class="note">The first {{ k }} samples (by dataset index) that the worst case flips at
eps = {{ eps | num }}: clean input with its label and prediction, the adversarial input with the
prediction and the attack that produced it, and the perturbation, amplified per sample by the
factor shown and centred at grey.</p>
{% else %}
<p class="note">{{ reason }}</p>
{% endif %}
</section>
"""


def _label(i: int, names: Sequence[str] | None) -> str:
    return f"{names[i]}" if names is not None and 0 <= i < len(names) else str(i)


def examples_plot(ev: Evaluation, class_names: Sequence[str] | None = None) -> str:
    """Grid of clean / adversarial / perturbation images of :attr:`Evaluation.examples`."""
    ex = ev.examples
    if not ex:
        raise ValueError("the evaluation holds no examples")
    lo, hi = ev.threats[0].lower, ev.threats[0].upper
    x = torch.stack([e.x for e in ex]).double()
    x_adv = torch.stack([e.x_adv for e in ex]).double()
    if x.dim() == 3:  # (K, H, W)
        x, x_adv = x[:, None], x_adv[:, None]
    k = len(ex)
    fig = _figure(1.45 * k + 0.6, 4.9)
    axes = fig.subplots(3, k, squeeze=False)

    def image(t: Any) -> tuple[Any, str | None]:
        a = t.permute(1, 2, 0).numpy() if t.shape[0] == 3 else t[0].numpy()
        return a.clip(0.0, 1.0), (None if t.shape[0] == 3 else "gray")

    for j in range(k):
        delta = x_adv[j] - x[j]
        amp = 0.5 / max(float(delta.abs().max()), 1e-12)
        rows = (
            ((x[j] - lo) / (hi - lo), f"{_label(ex[j].label, class_names)} → "
             f"{_label(ex[j].clean_pred, class_names)}"),
            ((x_adv[j] - lo) / (hi - lo), f"{_label(ex[j].adv_pred, class_names)} "
             f"({ex[j].attack})"),
            (0.5 + amp * delta, f"×{amp:.3g}"),
        )  # fmt: skip
        for i, (t, title) in enumerate(rows):
            ax = axes[i][j]
            arr, cmap = image(t)
            ax.imshow(arr, cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest")
            ax.set_title(title, fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
    for i, name in enumerate(("clean\nlabel → pred", "adversarial\npred (attack)", "perturbation")):
        axes[i][0].set_ylabel(name, fontsize=8)
    return png_data_uri(fig)


def examples_section(ev: Evaluation, extra: Mapping[str, Any]) -> str:
    """The image grid: clean, adversarial and amplified perturbation, with labels and predictions."""
    ex = ev.examples
    if not ex:
        reason = "No sample was flipped at the middle eps of the grid, so there is nothing to show."
        return fragment(_EXAMPLES, uri=None, reason=reason, k=0, eps=0.0)
    shape = tuple(ex[0].x.shape)
    eps = ev.example_eps
    if len(shape) not in (2, 3) or (len(shape) == 3 and shape[0] not in (1, 3)):
        reason = (
            f"The inputs have shape {shape}, not images with 1 or 3 channels; "
            "examples are listed in the JSON report."
        )
        return fragment(_EXAMPLES, uri=None, reason=reason, k=0, eps=eps)
    names = extra.get("class_names")
    names = [str(c) for c in names] if isinstance(names, Sequence) else None
    return fragment(_EXAMPLES, uri=examples_plot(ev, names), reason="", k=len(ex), eps=eps)


_CERTIFIED = """
<section id="certified">
<h2>Certified vs attack radius</h2>
<p>Each correctly classified sample's smallest adversarial perturbation lies between two bounds:
its <strong>certified radius</strong> ({{ method }}, {{ steps }} bisection steps), a lower bound
(no perturbation within it changes the prediction), and the <strong>smallest adversarial
example the attacks found</strong>, an upper bound (the perturbation of a minimal attack, or of a
bounded attack at any eps of the grid, whichever is smallest). The gap between them is what a
tighter certifier or a stronger attack could still close. A sample no attack broke has no upper
bound.</p>
{% for part in parts %}
<h3>{{ part.norm }}</h3>
<table class="facts">
<tr><th>correctly classified</th><td class="num">{{ part.correct | num }} of {{ part.n | num }}</td>
    <th>certified at a radius &gt; 0</th><td class="num">{{ part.certified_positive | num }}</td></tr>
<tr><th>broken by an attack</th><td class="num">{{ part.broken | num }}</td>
    <th>median certified radius</th><td class="num">{{ part.median_certified | num }}</td></tr>
<tr><th>median attack radius</th><td class="num">{{ part.median_attack_norm | num }}</td>
    <th>median gap</th><td class="num">{{ part.median_gap | num }}</td></tr>
</table>
{% if part.unsound %}
<p class="warn"><strong>{{ part.unsound | length }} sample(s) have a certified radius above the
norm of an adversarial example found for them</strong>: the certifier (or the attack's
verification) is wrong on them: {% for b in part.unsound %}#{{ b.index }} (certified
{{ b.certified | num }}, {{ b.attack }} {{ b.attack_norm | num }}){% if not loop.last %}, {% endif %}{% endfor %}.</p>
{% endif %}
{% if part.uri %}
<img src="{{ part.uri }}" class="plot" alt="per-sample certified radius and smallest adversarial perturbation in {{ part.norm }}">
<p class="note">Left: each correctly classified sample (sorted by its upper bound; samples no
attack broke at the right), its certified radius and its smallest adversarial example, joined by
the gap. Right: the fraction of correctly classified samples whose bound is at most r; the true
minimal perturbation's curve lies between the two.</p>
{% endif %}
{% if part.widest %}
<h4>Widest gaps</h4>
<table>
<thead><tr><th>sample</th><th>label</th><th class="num">certified radius</th>
<th class="num">attack radius</th><th>attack</th><th class="num">gap</th></tr></thead>
<tbody>
{% for b in part.widest %}
<tr><td>#{{ b.index }}</td><td>{{ b.label }}</td><td class="num">{{ b.certified | num }}</td>
<td class="num">{{ b.attack_norm | num }}</td><td>{{ b.attack }}</td><td class="num">{{ b.gap | num }}</td></tr>
{% endfor %}
</tbody>
</table>
{% endif %}
{% endfor %}
</section>
"""


def bounds_plot(bounds: Sequence[SampleBounds], norm: str, method: str) -> str:
    """Per-sample certified radius and smallest adversarial example (sorted), and the two
    distributions, as a data URI."""
    ok = [b for b in bounds if b.correct]
    order = sorted(ok, key=lambda b: (b.attack_norm is None, b.attack_norm or 0.0, b.certified))
    fig = _figure(9.6, 3.8)
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
    left.legend(loc="upper left", fontsize="small", frameon=False)
    k = max(len(ok), 1)
    for values, color, label in (
        (sorted(b.certified for b in ok), CERTIFIED_COLOR, "certified radius"),
        (sorted(b.attack_norm for b in ok if b.attack_norm is not None), "C3",
         "smallest adversarial example"),
    ):  # fmt: skip
        if values:
            right.step([0.0, *values], [j / k for j in range(len(values) + 1)], where="post",
                       color=color, label=label)  # fmt: skip
    right.set_xlabel(f"r ({norm})")
    right.set_ylabel("fraction of correct samples <= r")
    right.set_ylim(0.0, 1.02)
    right.grid(True, alpha=0.3)
    right.legend(loc="lower right", fontsize="small", frameon=False)
    return png_data_uri(fig)


def certified_section(ev: Evaluation, extra: Mapping[str, Any]) -> str:
    """Certified radius against the smallest adversarial example, per sample; empty when the
    evaluation was not certified."""
    if not ev.bounds or not ev.certified:
        return ""
    method = ev.certified[0].method
    parts = []
    for norm, bounds in ev.bounds.items():
        part = bounds_summary(bounds, norm)
        part["uri"] = bounds_plot(bounds, norm, method) if part["correct"] else None
        parts.append(part)
    return fragment(_CERTIFIED, parts=parts, method=method,
                    steps=ev.certified[0].params.get("steps", "?"))  # fmt: skip


_TRAINING = """
<section id="training">
<h2>Training curves</h2>
<img src="{{ uri }}" class="plot" alt="accuracy per training epoch">
<p class="note">How the model was trained: recipe <code>{{ recipe }}</code>{% if params %}
({% for k, v in params.items() %}{{ k }}={{ v }}{% if not loop.last %}, {% endif %}{% endfor %}){% endif %},
{{ epochs }} epochs. Training accuracy is on the inputs whose logits the recipe reports (the
adversarial ones for <code>pgd</code>, <code>fast</code> and <code>msd</code>); validation
accuracy, clean and under PGD{% if threat %} ({{ threat }}){% endif %}, is on training samples
held out from training.{% if stopped %} <strong>Stopped early:</strong> {{ stopped }}; the saved
weights are those of the epoch it names, not the last point plotted.{% endif %}</p>
</section>
"""


def training_history(extra: Mapping[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The per-epoch rows saved with a trained model (``advlab train``), and its recipe."""
    model = extra.get("model")
    if not isinstance(model, Mapping):
        return [], {}
    training = (model.get("extra") or {}).get("training") or {}
    rows = [r for r in training.get("history") or [] if isinstance(r, Mapping)]
    recipe = model.get("recipe") if isinstance(model.get("recipe"), Mapping) else {}
    return [dict(r) for r in rows], {**dict(recipe or {}), "stopped": training.get("stopped")}


def training_section(ev: Evaluation, extra: Mapping[str, Any]) -> str:
    """Training curves (clean and robust validation accuracy per epoch) of a trained model;
    empty when the model file carries no training history."""
    rows, recipe = training_history(extra)
    if not rows:
        return ""
    epochs = [r["epoch"] for r in rows]
    fig = _figure(6.4, 3.4)
    ax = fig.add_subplot(1, 1, 1)
    series = [("train_accuracy", "training (recipe inputs)", "-"),
              ("val_accuracy", "validation, clean", "-"),
              ("val_robust_accuracy", "validation, PGD", "--"),
              ("eval_accuracy", "evaluation data", ":")]  # fmt: skip
    for key, label, style in series:
        pts = [(e, 100 * r[key]) for e, r in zip(epochs, rows, strict=True)
               if isinstance(r.get(key), int | float)]  # fmt: skip
        if pts:
            ax.plot(*zip(*pts, strict=True), style, marker="o", label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 101)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize="small", frameon=False)
    threat = next((r.get("val_threat") for r in rows if r.get("val_threat")), None)
    return fragment(
        _TRAINING, uri=png_data_uri(fig), recipe=recipe.get("recipe", "?"),
        params=recipe.get("recipe_params") or {}, epochs=len(rows), threat=threat,
        stopped=recipe.get("stopped"),
    )  # fmt: skip


#: The default sections, in page order.
SECTIONS: list[Section] = [
    header_section, summary_section, curve_section, certified_section, training_section,
    examples_section,
]  # fmt: skip


def render_html(
    evaluation: Evaluation,
    extra: Mapping[str, Any] | None = None,
    *,
    sections: Sequence[Section] | None = None,
) -> str:
    """The report page as a string (see :func:`write_html_report`)."""
    import advlab

    extra = dict(extra or {})
    parts = [Markup(s(evaluation, extra)) for s in (SECTIONS if sections is None else sections)]
    page = _env().get_template("report.html")
    return page.render(
        title=str(extra.get("title") or f"advlab report: {evaluation.dataset}"),
        sections=[p for p in parts if p.strip()],
        version=advlab.__version__,
        generated=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    )


def write_html_report(
    path: str | os.PathLike[str],
    evaluation: Evaluation,
    extra: Mapping[str, Any] | None = None,
    *,
    sections: Sequence[Section] | None = None,
) -> Path:
    """Write the report as one self-contained HTML file, atomically.

    Args:
        path: destination; parent folders are created.
        evaluation: the result of :func:`advlab.evaluate.evaluate`.
        extra: context for the header and for extra sections: ``model`` (a display name),
            ``title``, ``date``, ``run_id``, ``config`` (the run's configuration),
            ``class_names``.
        sections: the sections to render, in order; default :data:`SECTIONS`.

    Returns:
        The path written.
    """
    return atomic_write_text(path, render_html(evaluation, extra, sections=sections))
