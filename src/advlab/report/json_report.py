"""The JSON report: an evaluation's numbers in a machine-readable file."""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from torch import Tensor

from advlab.evaluate.engine import Evaluation
from advlab.fileio import atomic_write_json

#: Identifies the file format; bumped on incompatible changes.
FORMAT = "advlab-report"
FORMAT_VERSION = 1


def plain(obj: Any) -> Any:
    """``obj`` made of JSON types: tensors become lists (or numbers), paths strings, dataclasses
    dicts, NaN and inf ``None``; anything else unknown becomes its ``str``."""
    if obj is None or isinstance(obj, bool | int | str):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Tensor):
        return plain(obj.detach().cpu().tolist())
    if isinstance(obj, Mapping):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple | set | frozenset):
        return [plain(v) for v in obj]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        to_dict = getattr(obj, "to_dict", None)
        return plain(to_dict() if callable(to_dict) else dataclasses.asdict(obj))
    item = getattr(obj, "item", None)  # numpy scalars
    if callable(item):
        try:
            return plain(item())
        except (TypeError, ValueError):
            pass
    return str(obj)


def json_report(evaluation: Evaluation, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The report as a dict: format tag, creation time, ``extra`` (model, run, environment, ...)
    and the evaluation's :meth:`~advlab.evaluate.Evaluation.to_dict`."""
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "extra": plain(dict(extra or {})),
        "evaluation": plain(evaluation.to_dict()),
    }


def write_json_report(
    path: str | os.PathLike[str],
    evaluation: Evaluation,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write :func:`json_report` to ``path`` atomically (a crash leaves no partial file).

    Args:
        path: destination; parent folders are created.
        evaluation: the result of :func:`advlab.evaluate.evaluate`.
        extra: anything else to record, e.g. ``{"model": "mnist-cnn", "environment": {...}}``.

    Returns:
        The path written.
    """
    return atomic_write_json(path, json_report(evaluation, extra))
