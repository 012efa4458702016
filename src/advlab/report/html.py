"""The HTML report: one self-contained, offline file with the numbers, plots and example images.

The page is a list of *sections* (:mod:`advlab.report.sections`). A section is a function
``section(evaluation, extra) -> str`` returning an HTML fragment (``""`` to leave itself out);
:data:`SECTIONS` holds the default ones in page order: the verdict (clean and worst-case robust
accuracy at each eps in large type, one plain sentence, diagnostic warnings), the attacks x eps
table and the attacks' cost, robust accuracy against eps, minimal perturbation norms, per-class
robust accuracy, success against queries, certified against attack radius, transferability,
the image grids, training curves, the checks and the provenance. Each appears only when its
data exists. Later capabilities add their own by passing ``sections=[*SECTIONS, my_section]``
to :func:`write_html_report`, reading what they need from ``extra``. A section builds its
fragment with :func:`~advlab.report.fmt.fragment` (Jinja2 with autoescaping, so values are
always escaped); plots go in as PNG data URIs (:func:`~advlab.report.fmt.png_data_uri`). Nothing
in the page refers to the network, and a print stylesheet makes "save as PDF" clean.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from markupsafe import Markup

from advlab.evaluate.aggregate import Evaluation
from advlab.fileio import atomic_write_text
from advlab.report.fmt import (
    env,
    fmt_num,
    fmt_pct,
    fmt_seconds,
    fragment,
    image_data_uri,
    png_data_uri,
)
from advlab.report.plots import CERTIFIED_COLOR, robustness_plot
from advlab.report.sections import (
    SECTIONS,
    Section,
    certified_section,
    checks_section,
    curve_section,
    examples_section,
    norms_section,
    per_class_section,
    provenance_section,
    queries_section,
    render_transfer_matrix,
    summary_section,
    targeted_section,
    training_section,
    transfer_section,
    verdict_section,
)

__all__ = [
    "CERTIFIED_COLOR",
    "SECTIONS",
    "Section",
    "certified_section",
    "checks_section",
    "curve_section",
    "examples_section",
    "fmt_num",
    "fmt_pct",
    "fmt_seconds",
    "fragment",
    "image_data_uri",
    "norms_section",
    "per_class_section",
    "png_data_uri",
    "provenance_section",
    "queries_section",
    "render_html",
    "render_transfer_matrix",
    "robustness_plot",
    "summary_section",
    "targeted_section",
    "training_section",
    "transfer_section",
    "verdict_section",
    "write_html_report",
]


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
    page = env().get_template("report.html")
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
        extra: context for the sections (:mod:`advlab.report.sections` lists the keys):
            ``model`` and ``dataset`` (a name or a dict with ``name``), ``title``, ``date``,
            ``run_id``, ``config`` (the run's configuration), ``wall_time``, ``class_names``,
            ``example_confidence``, ``query_price``, ``transfer``, ``targeted_grid``.
        sections: the sections to render, in order; default :data:`SECTIONS`.

    Returns:
        The path written.
    """
    return atomic_write_text(path, render_html(evaluation, extra, sections=sections))
