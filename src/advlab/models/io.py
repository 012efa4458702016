"""Saving and loading models without unpickling untrusted files.

advlab's own model format is a pair of files:

* ``<stem>.safetensors``: the ``state_dict`` (safetensors: a JSON header and raw tensor bytes,
  nothing executable);
* ``<stem>.json``: metadata, i.e. the zoo architecture and its arguments, dataset, clean accuracy,
  training recipe, seed, package versions, a timestamp and the SHA-256 of the weights file.

:func:`load_model` also reads state dicts saved with ``torch.save(model.state_dict())`` (loaded
with ``torch.load(weights_only=True)``) and TorchScript archives. A whole pickled ``nn.Module``
(``torch.save(model)``) can only be read by running code from the file, so it is refused unless
the caller passes ``allow_unsafe_pickle=True`` (CLI: ``--unsafe-allow-pickle``).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import pickle
import platform
import struct
import sys
import warnings
import zipfile
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import Tensor, nn

from advlab.errors import CheckpointError, ConfigError
from advlab.fileio import atomic_write_bytes, atomic_write_json
from advlab.models.zoo import arch_kwargs as _resolve_arch_kwargs
from advlab.models.zoo import build_model

SUFFIX = ".safetensors"
FORMAT = "advlab-model/1"
_HEADER_KEY = "advlab"  # key of advlab's entry in the safetensors header metadata

PICKLE_FLAG = "--unsafe-allow-pickle"


def _paths(path: str | Path) -> tuple[Path, Path]:
    """``(weights, metadata)`` paths for a path given with or without the suffix."""
    p = Path(path).expanduser()
    if p.suffix == ".json":
        p = p.with_suffix(SUFFIX)
    weights = p if p.name.endswith(SUFFIX) else p.with_name(p.name + SUFFIX)
    return weights, weights.with_name(weights.name[: -len(SUFFIX)] + ".json")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _versions() -> dict[str, str]:
    import advlab  # late import: advlab/__init__ imports this package

    return {
        "advlab": advlab.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def _portable_state(model: nn.Module) -> dict[str, Tensor]:
    """The state dict as contiguous CPU tensors that share no memory (safetensors forbids it)."""
    out: dict[str, Tensor] = {}
    seen: set[tuple[str, int]] = set()
    for k, v in model.state_dict().items():
        t = v.detach().to("cpu")
        key = (str(v.device), v.untyped_storage().data_ptr())
        if not t.is_contiguous():
            t = t.contiguous()
        elif key in seen:
            t = t.clone()  # tied weights: each name gets its own copy
        seen.add(key)
        out[k] = t
    return out


def save_model(
    model: nn.Module,
    path: str | Path,
    *,
    arch: str | None = None,
    arch_kwargs: Mapping[str, Any] | None = None,
    dataset: str | None = None,
    clean_accuracy: float | None = None,
    recipe: Mapping[str, Any] | None = None,
    seed: int | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Save ``model``'s weights as safetensors and its metadata as JSON, both atomically.

    Args:
        model: the model; its ``state_dict`` is saved (tied or non-contiguous tensors are copied).
        path: ``<stem>`` or ``<stem>.safetensors``; ``<stem>.json`` is written beside it.
        arch: the zoo name the model was built from (``advlab list models``), or ``None`` (the
            default) for a model of your own: load it later with
            ``factory="pkg.module:function"`` (CLI: ``--factory``).
        arch_kwargs: the keyword arguments the zoo factory was called with. They are stored with
            the factory's defaults filled in, and checked now: if the model they build does not
            have this model's parameter names and shapes, ConfigError is raised.
        dataset, clean_accuracy, recipe, seed: provenance recorded in the metadata.
        extra: any further JSON-serializable metadata.

    Returns:
        The path of the ``.safetensors`` file.

    Raises:
        ConfigError: ``arch``/``arch_kwargs`` do not describe ``model``, or metadata that is not
            JSON-serializable.
    """
    weights_path, meta_path = _paths(path)
    state = _portable_state(model)
    kwargs: dict[str, Any] = {}
    if arch is not None:
        kwargs = _resolve_arch_kwargs(arch, **dict(arch_kwargs or {}))
        with torch.device("meta"):
            reference = build_model(arch, **dict(arch_kwargs or {}))
        diff = state_mismatch({k: tuple(v.shape) for k, v in reference.state_dict().items()}, state)
        if diff:
            raise ConfigError(
                f"the model does not match arch {arch!r} with arguments {kwargs}: {diff}. "
                "Pass the arch and arch_kwargs it was built with, or arch=None for your own model"
            )
    elif arch_kwargs:
        raise ConfigError("arch_kwargs were given without arch; name the zoo model or drop them")
    meta: dict[str, Any] = {
        "format": FORMAT,
        "arch": arch,
        "arch_kwargs": kwargs,
        "dataset": dataset,
        "clean_accuracy": None if clean_accuracy is None else float(clean_accuracy),
        "recipe": dict(recipe) if recipe is not None else None,
        "seed": seed,
        "extra": dict(extra) if extra is not None else {},
        "versions": _versions(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "weights_file": weights_path.name,
    }
    try:
        header = json.dumps({"arch": arch, "arch_kwargs": kwargs})
        json.dumps(meta)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"model metadata must be JSON-serializable: {e}") from None
    data = safetensors.torch.save(state, metadata={_HEADER_KEY: header})
    meta["weights_sha256"] = _sha256(data)
    atomic_write_bytes(weights_path, data)
    atomic_write_json(meta_path, meta)
    return weights_path


# ---------------------------------------------------------------------------------------------
# loading


def resolve_factory(spec: str) -> Callable[[], nn.Module]:
    """Import the model factory named by ``"package.module:function"``.

    The function is called later with no arguments and must return an ``nn.Module``.

    The module is looked up in the current folder first (as ``python -m`` does), then on the
    import path.

    Raises:
        ConfigError: a malformed spec, a module that cannot be imported, a missing attribute or
            one that is not callable.
    """
    if not isinstance(spec, str) or spec.count(":") != 1:
        raise ConfigError(f"factory must look like 'package.module:function', got {spec!r}")
    mod_name, attr = (s.strip() for s in spec.split(":"))
    if not mod_name or not attr:
        raise ConfigError(f"factory must look like 'package.module:function', got {spec!r}")
    cwd = os.getcwd()
    added = cwd not in sys.path and "" not in sys.path
    if added:  # look in the current folder first, as `python -m` does
        sys.path.insert(0, cwd)
    importlib.invalidate_caches()
    try:
        module = importlib.import_module(mod_name)
    except ImportError as e:
        raise ConfigError(
            f"cannot import module {mod_name!r} for factory {spec!r} ({e}); run from the folder "
            "that holds it, install it, or add its folder to PYTHONPATH"
        ) from None
    finally:
        if added:
            sys.path.remove(cwd)
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigError(
                f"module {mod_name!r} has no attribute {attr!r} (factory {spec!r}); "
                "check the name after the colon"
            ) from None
    if not callable(obj):
        raise ConfigError(f"factory {spec!r} is a {type(obj).__name__}, not a callable")
    fn: Callable[[], nn.Module] = obj
    return fn


def _call_factory(spec: str) -> nn.Module:
    model = resolve_factory(spec)()
    if not isinstance(model, nn.Module):
        raise ConfigError(
            f"factory {spec!r} returned a {type(model).__name__}; it must return an nn.Module"
        )
    return model


def state_mismatch(expected: Mapping[str, tuple[int, ...]], state: Mapping[str, Tensor]) -> str:
    """Describe how a state dict differs from the expected ``{key: shape}`` ('' if it does not).

    Lists missing keys, unexpected keys and keys whose shapes differ (five of each at most).
    """
    parts = []
    missing = sorted(k for k in expected if k not in state)
    unexpected = sorted(k for k in state if k not in expected)
    shapes = [
        f"{k}: file {tuple(state[k].shape)} vs model {expected[k]}"
        for k in expected
        if k in state and tuple(state[k].shape) != tuple(expected[k])
    ]
    for label, items in (("missing", missing), ("unexpected", unexpected), ("mismatched", shapes)):
        if items:
            more = f" (+{len(items) - 5} more)" if len(items) > 5 else ""
            parts.append(f"{label} keys: {', '.join(items[:5])}{more}")
    return "; ".join(parts)


def _load_state(model: nn.Module, state: Mapping[str, Tensor], source: Path) -> None:
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    diff = state_mismatch(expected, state)
    if diff:
        raise CheckpointError(
            f"the weights in {source} do not fit the model ({diff}); build the architecture the "
            "weights were saved from (check arch, arch_kwargs or factory)"
        )
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"cannot load the weights in {source} into the model: {e}") from None


def _corrupt(path: Path, what: str = "file") -> CheckpointError:
    return CheckpointError(f"{what} {path} is corrupt or truncated; re-create it")


def _read_header(data: bytes, path: Path) -> dict[str, Any]:
    """The safetensors header (validates the framing, not the tensors)."""
    if len(data) < 8:
        raise _corrupt(path, "model file")
    (n,) = struct.unpack("<Q", data[:8])
    if n > len(data) - 8:
        raise _corrupt(path, "model file")
    try:
        header = json.loads(data[8 : 8 + n])
    except (UnicodeDecodeError, ValueError):
        raise _corrupt(path, "model file") from None
    if not isinstance(header, dict):
        raise _corrupt(path, "model file")
    return header


def _is_safetensors(head: bytes, size: int) -> bool:
    if len(head) < 9:
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return 0 < n <= size - 8 and head[8:9] == b"{"


def _load_safetensors(
    weights: Path, meta_path: Path, factory: str | None
) -> tuple[nn.Module, dict[str, Any]]:
    data = weights.read_bytes()
    meta: dict[str, Any] = {}
    if meta_path.exists():
        try:
            loaded = json.loads(meta_path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise _corrupt(meta_path, "model metadata file") from None
        if not isinstance(loaded, dict):
            raise _corrupt(meta_path, "model metadata file")
        meta = loaded
        sha = meta.get("weights_sha256")
        if sha is not None and sha != _sha256(data):
            raise CheckpointError(
                f"model file {weights} is corrupt: its SHA-256 does not match the one recorded "
                f"in {meta_path.name} (modified or truncated since it was saved); re-create it"
            )
    header = _read_header(data, weights)
    if not meta:
        info = header.get("__metadata__", {}).get(_HEADER_KEY)
        if info is not None:
            try:
                meta = dict(json.loads(info))
            except (TypeError, ValueError):
                raise _corrupt(weights, "model file") from None
    try:
        state = safetensors.torch.load(data)
    except Exception:  # the Rust SafetensorError and friends: never a raw traceback
        raise _corrupt(weights, "model file") from None
    if factory is not None:
        model = _call_factory(factory)
    elif meta.get("arch"):
        kwargs = dict(meta.get("arch_kwargs") or {})
        model = build_model(str(meta["arch"]), **kwargs)
    else:
        why = (
            f'{meta_path.name} has no zoo architecture ("arch": null: a model of your own)'
            if meta_path.exists()
            else f"there is no {meta_path.name} beside it"
        )
        raise CheckpointError(
            f"{weights} does not say how to build its network: {why}; pass "
            "factory='package.module:function' (CLI: --factory) to build it"
        )
    _load_state(model, state, weights)
    meta.update(path=str(weights), format="safetensors")
    return model, meta


def _is_torchscript(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any(n.endswith("/constants.pkl") or "/code/" in n for n in names)


def _as_state_dict(obj: Any) -> dict[str, Tensor] | None:
    """``obj`` as a state dict, also from common wrappers ``{"state_dict": ...}``."""
    if isinstance(obj, Mapping):
        if obj and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items()):
            return dict(obj)
        for key in ("state_dict", "model_state_dict", "model"):
            inner = obj.get(key)
            if isinstance(inner, Mapping):
                return _as_state_dict(inner)
    return None


def _load_torch(
    path: Path, factory: str | None, allow_unsafe_pickle: bool
) -> tuple[nn.Module, dict[str, Any]]:
    meta: dict[str, Any] = {"path": str(path)}
    if _is_torchscript(path):
        try:
            with warnings.catch_warnings():  # torch deprecates TorchScript; we still read it
                warnings.simplefilter("ignore", DeprecationWarning)
                scripted = torch.jit.load(str(path), map_location="cpu")
        except Exception as e:
            raise CheckpointError(
                f"cannot load TorchScript archive {path} ({type(e).__name__}); it may be corrupt or "
                "truncated; re-create it"
            ) from None
        meta["format"] = "torchscript"
        return scripted, meta
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        if not allow_unsafe_pickle:
            raise CheckpointError(
                f"{path} holds pickled Python objects (e.g. a whole module saved with "
                "torch.save(model)); loading it executes code from the file. Re-save it as a "
                "state dict or with advlab.models.save_model, or, only if you trust the file, "
                f"pass allow_unsafe_pickle=True (CLI: {PICKLE_FLAG})"
            ) from None
        try:
            obj = torch.load(path, map_location="cpu", weights_only=False)
        except Exception:
            raise _corrupt(path, "model file") from None
        meta["format"] = "pickle"
    except Exception:
        raise _corrupt(path, "model file") from None
    else:
        meta["format"] = "state_dict"
    if isinstance(obj, nn.Module):
        return obj, meta
    state = _as_state_dict(obj)
    if state is None:
        raise CheckpointError(
            f"{path} holds a {type(obj).__name__}, not a model or a state dict of tensors; "
            "save model.state_dict() or use advlab.models.save_model"
        )
    if factory is None:
        raise CheckpointError(
            f"{path} holds a state dict, which does not say which architecture it belongs to; "
            "pass factory='package.module:function' (CLI: --factory) to build the model"
        )
    model = _call_factory(factory)
    _load_state(model, state, path)
    return model, meta


def load_model(
    path: str | Path,
    *,
    factory: str | None = None,
    allow_unsafe_pickle: bool = False,
    map_location: str | torch.device = "cpu",
) -> tuple[nn.Module, dict[str, Any]]:
    """Load a model saved by :func:`save_model`, a state dict, or a TorchScript archive.

    The format is recognized from the file's content:

    * safetensors (``.safetensors``, with its ``.json`` beside it): the architecture comes from
      the metadata's zoo name, or from ``factory``; the SHA-256 recorded in the metadata is
      checked; weights are loaded with ``strict=True``.
    * a ``torch.save`` file holding a state dict (``.pt``/``.pth``): read with
      ``torch.load(weights_only=True)`` and loaded into ``factory()``.
    * TorchScript (``torch.jit.save``): loaded as is.
    * a pickled ``nn.Module`` (``torch.save(model)``): refused unless ``allow_unsafe_pickle``,
      because unpickling it runs code from the file.

    Args:
        path: the model file (the ``.safetensors`` suffix may be left out).
        factory: ``"package.module:function"``, a function called with no arguments that returns
            the model's ``nn.Module``; needed for state dicts and for safetensors files that do
            not name a zoo architecture; overrides the metadata's architecture when given.
        allow_unsafe_pickle: permit full unpickling of trusted files.
        map_location: device to put the model on.

    Returns:
        ``(model, metadata)``: the model in eval mode, and the metadata (the saved JSON for
        safetensors files) with ``path`` and ``format`` added.

    Raises:
        CheckpointError: a missing, corrupt, mismatched or refused file.
        ConfigError: a bad ``factory``.
    """
    p = Path(path).expanduser()
    if p.suffix == ".json" or (not p.exists() and _paths(p)[0].exists()):
        p = _paths(p)[0]
    if not p.is_file():
        raise CheckpointError(
            f"model file {p} does not exist; check the path (save one with advlab.models.save_model)"
        )
    try:
        size = p.stat().st_size
        with open(p, "rb") as fh:
            head = fh.read(16)
    except OSError as e:
        raise CheckpointError(f"cannot read model file {p}: {e.strerror}") from None
    if p.name.endswith(SUFFIX) or _is_safetensors(head, size):
        meta_path = _paths(p)[1] if p.name.endswith(SUFFIX) else p.with_suffix(".json")
        model, meta = _load_safetensors(p, meta_path, factory)
    elif head.startswith(b"PK\x03\x04") or head.startswith(b"\x80"):
        model, meta = _load_torch(p, factory, allow_unsafe_pickle)
    else:
        raise CheckpointError(
            f"{p} is not a safetensors, torch.save or TorchScript file (or it is corrupt); "
            "save models with advlab.models.save_model"
        )
    return model.to(map_location).eval(), meta
