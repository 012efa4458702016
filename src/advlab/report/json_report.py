"""The JSON report: an evaluation's numbers and provenance in a machine-readable file."""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from advlab.evaluate.aggregate import Evaluation
from advlab.evaluate.certification import bounds_summary
from advlab.fileio import atomic_write_json
from advlab.serialize import plain

#: Identifies the file format; bumped on incompatible changes.
FORMAT = "advlab-report"
FORMAT_VERSION = 2


def json_report(evaluation: Evaluation, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The report as a dict: format tag, creation time, ``extra`` (model, dataset, ...) and the
    evaluation's :meth:`~advlab.evaluate.Evaluation.to_dict` (rows, provenance, run id; with
    certification, the certified accuracy per eps and each sample's certified radius beside
    its smallest adversarial example). With certification, ``certified_vs_attack`` holds what
    the HTML report's section shows, per norm (counts, medians, widest gaps, unsound samples).
    """
    out = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "extra": plain(dict(extra or {}), strict=False),
        "evaluation": plain(evaluation.to_dict(), strict=False),
    }
    if evaluation.bounds:
        out["certified_vs_attack"] = plain(
            {n: bounds_summary(b, n) for n, b in evaluation.bounds.items()}, strict=False
        )
    return out


def write_json_report(
    path: str | os.PathLike[str],
    evaluation: Evaluation,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write :func:`json_report` to ``path`` atomically (a crash leaves no partial file).

    Args:
        path: destination; parent folders are created.
        evaluation: the result of :func:`advlab.evaluate.evaluate`.
        extra: anything else to record, e.g. ``{"model": "mnist-cnn"}``.

    Returns:
        The path written.
    """
    return atomic_write_json(path, json_report(evaluation, extra))
