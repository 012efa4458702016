"""The one JSON normalizer: configurations, records, provenance and reports all pass through it.

:func:`plain` turns a value into JSON types with one rule for numbers that JSON cannot hold:

* NaN means "no value" and becomes ``null``;
* infinities are values (an unbounded ``eps``, the norm of a failed attack) and become the
  strings ``"inf"`` and ``"-inf"``, as :meth:`advlab.ThreatModel.to_dict` writes them;
  :func:`from_plain_float` reads them back.

Tensors become lists (or numbers), paths strings, tuples and sets lists, dataclasses their
``to_dict()`` (or fields), NumPy scalars numbers. Anything else is an error in strict mode (the
default, for what is stored) and its ``str`` otherwise (for what is only displayed).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping
from typing import Any

from advlab.errors import ConfigError


def plain(obj: Any, *, strict: bool = True) -> Any:
    """``obj`` made of JSON types (see the module docstring).

    Raises:
        ConfigError: in strict mode, for a value with no JSON form.
    """
    if obj is None or isinstance(obj, bool | int | str):
        return obj
    if isinstance(obj, float):
        if math.isnan(obj):
            return None
        return obj if math.isfinite(obj) else ("inf" if obj > 0 else "-inf")
    if isinstance(obj, Mapping):
        return {str(k): plain(v, strict=strict) for k, v in obj.items()}
    if isinstance(obj, list | tuple | set | frozenset):
        return [plain(v, strict=strict) for v in obj]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    tolist = getattr(obj, "tolist", None)  # tensors and NumPy arrays / scalars
    if callable(tolist) and hasattr(obj, "dtype"):
        return plain(tolist(), strict=strict)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        to_dict = getattr(obj, "to_dict", None)
        return plain(to_dict() if callable(to_dict) else dataclasses.asdict(obj), strict=strict)
    if strict:
        raise ConfigError(
            f"cannot store a {type(obj).__name__} as JSON; use numbers, strings, lists and dicts "
            "in configurations and parameters"
        )
    return str(obj)


def canonical_json(obj: Any) -> str:
    """Compact JSON with sorted keys: equal configurations give equal strings."""
    return json.dumps(plain(obj), sort_keys=True, separators=(",", ":"), allow_nan=False)


def pretty_json(obj: Any) -> str:
    """Indented JSON for files people read (values without a JSON form become strings)."""
    return json.dumps(plain(obj, strict=False), indent=2, allow_nan=False) + "\n"


def from_plain_float(v: Any) -> float:
    """A float written by :func:`plain`: ``None`` is NaN, ``"inf"``/``"-inf"`` infinities."""
    if v is None:
        return math.nan
    if isinstance(v, str):
        return float(v)  # "inf", "-inf"
    return float(v)
