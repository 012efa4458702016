"""Formatting helpers shared by the report's sections: numbers, Jinja2 fragments, PNG data URIs.

Every value that reaches the page goes through :func:`fragment` (Jinja2 with autoescaping), and
every picture through :func:`png_data_uri` or :func:`image_data_uri`, so the page stays one
self-contained file with nothing fetched from the network.
"""

from __future__ import annotations

import base64
import functools
import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

import jinja2
from markupsafe import Markup

NORM_NAMES = {"linf": "L∞", "l2": "L2", "l1": "L1", "l0": "L0"}
_ATTACK_NAMES = {"fgsm": "FGSM", "pgd": "PGD", "bim": "BIM", "deepfool": "DeepFool",
                 "jsma": "JSMA", "lbfgs": "L-BFGS", "cw-l2": "C&W L2", "cw-linf": "C&W L∞",
                 "cw-l0": "C&W L0"}  # fmt: skip


def attack_label(name: str, params: Mapping[str, Any] | None = None) -> str:
    """A readable attack name: ``("pgd", {"steps": 40}) -> "PGD-40"``."""
    base = _ATTACK_NAMES.get(name, name)
    steps = (params or {}).get("steps")
    return f"{base}-{steps}" if isinstance(steps, int) and name in ("pgd", "bim") else base


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
    """Seconds as ``"0.42 s"``, ``"3.1 min"`` or ``"1.2 h"`` (one value on its own)."""
    if x is None or not math.isfinite(x):
        return "–"
    if x < 60:
        return f"{x:.2f} s"
    if x < 3600:
        return f"{x / 60:.1f} min"
    return f"{x / 3600:.1f} h"


def time_unit(values: Sequence[float | None]) -> tuple[str, float]:
    """One unit for a column of durations, chosen by its largest value: ``("s", 1)``,
    ``("min", 60)`` or ``("h", 3600)``, so that a table never mixes ``"9.36 s"`` with
    ``"2.7 min"``."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    top = max(finite, default=0.0)
    if top < 120:
        return "s", 1.0
    if top < 7200:
        return "min", 60.0
    return "h", 3600.0


def fmt_in_unit(x: float | None, scale: float) -> str:
    """A duration in a unit of ``scale`` seconds, with 3 significant digits (``None`` -> "–")."""
    if x is None or not math.isfinite(x):
        return "–"
    v = x / scale
    return f"{v:.2f}" if v < 10 else f"{v:.3g}" if v < 100 else f"{v:,.0f}"


def fmt_pct_pair(lo: float | None, hi: float | None) -> str:
    """A 95% interval as ``"63.8–76.4%"``."""
    if lo is None or hi is None or not (math.isfinite(lo) and math.isfinite(hi)):
        return "–"
    return f"{100 * lo:.1f}–{100 * hi:.1f}%"


@functools.lru_cache(maxsize=1)
def env() -> jinja2.Environment:
    """The Jinja2 environment of the report (autoescaping, strict undefined, the filters)."""
    e = jinja2.Environment(
        loader=jinja2.PackageLoader("advlab.report", "templates"),
        autoescape=jinja2.select_autoescape(["html"], default_for_string=True),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    e.filters.update(pct=fmt_pct, num=fmt_num, seconds=fmt_seconds, interval=fmt_pct_pair)
    return e


@functools.lru_cache(maxsize=128)
def _compiled(source: str) -> jinja2.Template:
    return env().from_string(source)


def fragment(source: str, **context: Any) -> Markup:
    """Render a Jinja2 template string with autoescaping (filters ``pct``, ``num``, ``seconds``,
    ``interval``).

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


def image_data_uri(
    array: Any, *, cmap: str | None = None, vmin: float = 0.0, vmax: float = 1.0
) -> str:
    """One image at its own resolution as a PNG data URI (the page scales it up, pixelated).

    Args:
        array: ``(H, W)`` (drawn with ``cmap``, default grey) or ``(H, W, 3)`` in
            ``[vmin, vmax]`` (RGB).
        cmap: a matplotlib colormap name for single-channel images.
        vmin, vmax: the value range mapped to the colormap's ends (clipped).
    """
    import numpy as np
    from matplotlib import colormaps
    from PIL import Image

    a = np.clip((np.asarray(array, dtype=np.float64) - vmin) / (vmax - vmin), 0.0, 1.0)
    if a.ndim == 2:
        rgba = colormaps[cmap or "gray"](a)
        a = rgba[..., :3]
    img = Image.fromarray((a * 255.0 + 0.5).astype(np.uint8))
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def figure(width: float, height: float) -> Any:
    """A matplotlib figure (no pyplot) with constrained layout and the report's font sizes."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")
