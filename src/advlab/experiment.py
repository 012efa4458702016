"""Experiments as YAML files: ``advlab run experiment.yaml``.

An experiment file has up to three sections, run in this order:

* ``train`` (optional): train a zoo architecture with a recipe (:class:`TrainSection`, the
  options of ``advlab train``: the architecture, data and output file, and every field of
  :class:`~advlab.defenses.TrainConfig`). A finished model file trained with the same options
  is reused; one trained with other options is an error.
* ``audit`` (optional): :class:`~advlab.audit.AuditConfig`: model, data, eps grid, attacks with
  their parameters (``attacks: [fgsm, {name: pgd, steps: 100}]``), certification, access and
  query budget. With a ``train`` section the audit's model is the trained file (and its data
  the training data, unless given). Identical audits reuse their stored run.
* ``certify`` (optional): :class:`~advlab.audit.CertifyConfig`, with the model and data of
  the audit (or of the training) unless given.

and two top-level options: ``out`` (the report folder, default ``advlab-out``) and ``store``
(the run store file). Relative paths in the file (``train.out``, a model or data file, ``out``,
``store``) are taken from the file's folder.

Every key is checked: an unknown key is an error naming its section path and the nearest valid
key (``audit.atacks: unknown key; did you mean 'attacks'?``), and a value of the wrong type
names the type expected. :func:`schema` is the file's JSON Schema, generated from the same
dataclasses (``advlab run --schema``), so an editor can complete and check the file.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from advlab.audit import AuditConfig, AuditOutcome, CertifyConfig, CertifyOutcome
from advlab.defenses import TrainConfig
from advlab.errors import ConfigError

Progress = Callable[[dict[str, Any]], None]

#: The top-level keys of an experiment file besides the sections.
TOP_LEVEL = {"out": "advlab-out", "store": None}


@dataclass(frozen=True)
class TrainSection:
    """The ``train`` section: what ``advlab train`` takes besides the training configuration.

    Attributes:
        model: zoo architecture to train (``advlab list models``).
        data: dataset name or ``.npz`` path (its train split).
        data_dir: where standard datasets live (else ``$ADVLAB_DATA``).
        out: the model file to write (default ``<model>-<data>.safetensors``).
        arch_params: architecture arguments, e.g. ``{width: 0.5}``.
        device: ``cpu`` or ``cuda`` (default cpu).
        resume: continue from the checkpoint beside ``out`` if there is one.
    """

    model: str = "papernot-mnist"
    data: str = "mnist5k"
    data_dir: str | None = None
    out: str | None = None
    arch_params: dict[str, Any] = field(default_factory=dict)
    device: str | None = None
    resume: bool = True


@dataclass(frozen=True)
class Experiment:
    """A parsed experiment file (module docstring).

    Attributes:
        path: the file.
        train, train_config: the ``train`` section and its training configuration.
        audit, certify: the configurations of those sections.
        out: the report folder; store: the run store file (``None``: the default store).
    """

    path: Path | None
    train: TrainSection | None
    train_config: TrainConfig | None
    audit: AuditConfig | None
    certify: CertifyConfig | None
    out: Path
    store: Path | None

    def to_dict(self) -> dict[str, Any]:
        """The resolved experiment, as a file would state it."""
        out: dict[str, Any] = {}
        if self.train is not None and self.train_config is not None:
            out["train"] = {**dataclasses.asdict(self.train), **self.train_config.to_dict()}
        if self.audit is not None:
            out["audit"] = self.audit.to_dict()
        if self.certify is not None:
            out["certify"] = self.certify.to_dict()
        out["out"] = str(self.out)
        out["store"] = None if self.store is None else str(self.store)
        return out


# -- types -------------------------------------------------------------------------------------


def _fields(cls: type) -> dict[str, tuple[Any, Any]]:
    """``name -> (type, default)`` of a dataclass (``default`` is ``MISSING`` if none)."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = dataclasses.MISSING
        out[f.name] = (hints[f.name], default)
    return out


def _json_type(tp: Any) -> dict[str, Any]:
    """The JSON Schema of a field's type annotation."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        parts = [_json_type(a) for a in typing.get_args(tp)]
        kinds = [p["type"] for p in parts if set(p) == {"type"}]
        if len(kinds) == len(parts):
            return {"type": kinds if len(kinds) > 1 else kinds[0]}
        return {"anyOf": parts}
    if tp is type(None):
        return {"type": "null"}
    if tp is bool:
        return {"type": "boolean"}
    if tp is int:
        return {"type": "integer"}
    if tp is float:
        return {"type": "number"}
    if tp is str:
        return {"type": "string"}
    if origin in (tuple, list):
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        return {"type": "array", "items": _json_type(args[0])} if args else {"type": "array"}
    if origin is dict or tp is dict:
        return {"type": "object"}
    if tp is Any:
        return {}
    raise TypeError(f"no JSON Schema for {tp!r}")  # pragma: no cover - a new field type


def _check_value(where: str, value: Any, tp: Any) -> Any:
    """``value`` checked against a field's type (lists become tuples where a tuple is
    expected); raises ConfigError naming ``where`` and the type expected."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for a in typing.get_args(tp):
            try:
                return _check_value(where, value, a)
            except ConfigError as e:
                errors.append(e)
        raise ConfigError(f"{where}: expected {_type_words(tp)}, got {value!r}")
    ok: bool
    if tp is type(None):
        ok = value is None
    elif tp is bool:
        ok = isinstance(value, bool)
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif tp is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if ok:
            value = float(value)
    elif tp is str:
        ok = isinstance(value, str)
    elif origin in (tuple, list):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected {_type_words(tp)}, got {value!r}")
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        items = [_check_value(f"{where}[{i}]", v, args[0]) if args else v
                 for i, v in enumerate(value)]  # fmt: skip
        return tuple(items) if origin is tuple else items
    elif origin is dict or tp is dict:
        ok = isinstance(value, dict) and all(isinstance(k, str) for k in value)
    else:
        ok = True
    if not ok:
        raise ConfigError(f"{where}: expected {_type_words(tp)}, got {value!r}")
    return value


def _type_words(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_words(a) for a in typing.get_args(tp))
    if origin in (tuple, list):
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        return f"a list of {_type_words(args[0])}s" if args else "a list"
    names = {type(None): "null", bool: "true/false", int: "an integer", float: "a number",
             str: "a string", dict: "a mapping"}  # fmt: skip
    return names.get(tp, "a mapping" if origin is dict else str(tp))


def _descriptions(cls: type) -> dict[str, str]:
    """Per field, its text in the class docstring's ``Attributes:`` section."""
    doc = cls.__doc__ or ""
    lines = doc.splitlines()
    try:
        start = next(i for i, ln in enumerate(lines) if ln.strip() == "Attributes:")
    except StopIteration:
        return {}
    out: dict[str, str] = {}
    current: list[str] = []
    base: int | None = None
    for ln in lines[start + 1 :]:
        if not ln.strip():
            if base is not None:
                break
            continue
        indent = len(ln) - len(ln.lstrip())
        m = re.match(r"^([\w]+(?:, [\w]+)*):\s*(.*)$", ln.strip())
        if base is None:
            base = indent
        if indent < base:
            break
        if indent == base and m:
            current = [n.strip() for n in m.group(1).split(",")]
            for n in current:
                out[n] = m.group(2)
        else:
            for n in current:
                out[n] += " " + ln.strip()
    return {k: re.sub(r"``([^`]*)``", r"\1", v).replace(":class:", "").replace(":func:", "")
            for k, v in out.items()}  # fmt: skip


# -- sections ------------------------------------------------------------------------------------

#: Keys of the ``audit`` section that the file states otherwise (``attacks`` with parameters).
_AUDIT_HIDDEN = ("attack_params",)


def _section_types(name: str) -> dict[str, tuple[Any, Any]]:
    if name == "audit":
        return {k: v for k, v in _fields(AuditConfig).items() if k not in _AUDIT_HIDDEN}
    if name == "certify":
        return _fields(CertifyConfig)
    if name == "train":
        return {**_fields(TrainSection), **_fields(TrainConfig)}
    raise KeyError(name)


def _unknown(where: str, key: Any, valid: list[str]) -> ConfigError:
    close = difflib.get_close_matches(str(key), valid, n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}?" if close else f"valid keys: {', '.join(valid)}"
    path = f"{where}.{key}" if where else str(key)
    return ConfigError(f"{path}: unknown key; {hint}")


def _section(name: str, raw: Any) -> dict[str, Any]:
    """The section's keys checked (names and types); values as the dataclasses take them."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{name}: expected a mapping of options, got {raw!r}")
    types_ = _section_types(name)
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in types_:
            raise _unknown(name, key, list(types_))
        if name == "audit" and key == "attacks":
            out.update(_attacks(value))
            continue
        out[key] = _check_value(f"{name}.{key}", value, types_[key][0])
    return out


def _attacks(value: Any) -> dict[str, Any]:
    """``attacks: [fgsm, {name: pgd, steps: 100}]`` -> ``attacks`` and ``attack_params``."""
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, list):
        raise ConfigError(f"audit.attacks: expected a list of attack names or mappings with a "
                          f"name, got {value!r}")  # fmt: skip
    names: list[str] = []
    params: dict[str, dict[str, Any]] = {}
    for i, item in enumerate(value):
        if isinstance(item, str):
            names.append(item)
        elif isinstance(item, dict) and isinstance(item.get("name"), str):
            rest = {k: v for k, v in item.items() if k != "name"}
            if "params" in rest and isinstance(rest["params"], dict) and len(rest) == 1:
                rest = dict(rest["params"])  # {name: pgd, params: {steps: 100}} also reads
            names.append(item["name"])
            if rest:
                _check_attack_params(f"audit.attacks[{i}]", item["name"], rest)
                params[item["name"]] = rest
        else:
            raise ConfigError(f"audit.attacks[{i}]: expected an attack name or a mapping with "
                              f"'name', got {item!r}")  # fmt: skip
    out: dict[str, Any] = {"attacks": tuple(names)}
    if params:
        out["attack_params"] = params
    return out


def _check_attack_params(where: str, name: str, params: dict[str, Any]) -> None:
    from advlab.attacks import get_attack

    spec = get_attack(name)  # UnknownNameError naming the registered attacks
    for key in params:
        if key not in spec.defaults:
            raise _unknown(where, key, list(spec.defaults))
    spec.resolve(params)


def _relative(base: Path | None, value: str | None) -> str | None:
    """A path in the file, taken from the file's folder when relative (names stay names)."""
    if value is None or base is None:
        return value
    p = Path(value).expanduser()
    if p.is_absolute():
        return str(p)
    candidate = base / p
    looks_like_path = "/" in value or "\\" in value or p.suffix != "" or candidate.exists()
    return str(candidate) if looks_like_path else value


def _build(where: str, make: Callable[[], Any]) -> Any:
    try:
        return make()
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    except TypeError as e:  # pragma: no cover - the keys are checked before
        raise ConfigError(f"{where}: {e}") from None


def parse_experiment(doc: Any, *, path: Path | None = None) -> Experiment:
    """An :class:`Experiment` from the parsed YAML of an experiment file.

    Raises:
        ConfigError: an unknown key (its section path and the nearest valid key), a value of
            the wrong type, an invalid configuration, or nothing to run.
    """
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise ConfigError(f"an experiment file is a mapping with sections audit, train, certify; "
                          f"got {type(doc).__name__}")  # fmt: skip
    valid = ["audit", "train", "certify", *TOP_LEVEL]
    for key in doc:
        if key not in valid:
            raise _unknown("", key, valid)
    if not any(doc.get(k) is not None for k in ("audit", "train", "certify")):
        raise ConfigError("the experiment has nothing to run: add an audit, train or certify "
                          "section (`advlab run --schema` lists the keys)")  # fmt: skip
    base = path.parent if path is not None else None
    for key in TOP_LEVEL:
        if doc.get(key) is not None and not isinstance(doc[key], str):
            raise ConfigError(f"{key}: expected a string (a path), got {doc[key]!r}")
    train = tcfg = None
    trained_model = trained_data = None
    if doc.get("train") is not None:
        t = _section("train", doc["train"])
        own = {k: v for k, v in t.items() if k in _fields(TrainSection)}
        tcfg = _build("train", lambda: TrainConfig.from_dict(
            {k: v for k, v in t.items() if k not in own}))  # fmt: skip
        train = _build("train", lambda: TrainSection(**own))
        out_file = train.out or f"{train.model}-{Path(train.data).stem}.safetensors"
        train = dataclasses.replace(train, out=_path(base, out_file),
                                    data=_relative(base, train.data) or train.data)  # fmt: skip
        from advlab.defenses import build_recipe

        _build("train", lambda: build_recipe(tcfg.recipe, tcfg.recipe_params))
        trained_model, trained_data = train.out, train.data
    audit = None
    if doc.get("audit") is not None:
        a = _section("audit", doc["audit"])
        a = _inherit("audit", a, trained_model, trained_data, base)
        audit = _build("audit", lambda: AuditConfig(**a))
    certify = None
    if doc.get("certify") is not None:
        c = _section("certify", doc["certify"])
        model = trained_model or (audit.model if audit is not None else None)
        data = trained_data or (audit.data if audit is not None else None)
        c = _inherit("certify", c, model, data, base, from_train=trained_model is not None)
        certify = _build("certify", lambda: CertifyConfig(**c))
    out = _path(base, doc.get("out") or str(TOP_LEVEL["out"]))
    store = _path(base, doc["store"]) if doc.get("store") else None
    return Experiment(path, train, tcfg, audit, certify, Path(out),
                      Path(store) if store else None)  # fmt: skip


def _path(base: Path | None, value: str) -> str:
    """A path in the file, taken from the file's folder when relative."""
    p = Path(value).expanduser()
    return str(p if p.is_absolute() or base is None else base / p)


def _inherit(
    name: str, d: dict[str, Any], model: str | None, data: str | None, base: Path | None,
    *, from_train: bool = True,
) -> dict[str, Any]:  # fmt: skip
    """A section's model and data: the trained model (it may not name another) or its own."""
    d = dict(d)
    if model is not None:
        if from_train and "model" in d:
            raise ConfigError(f"{name}.model: the train section sets the model (its out file); "
                              "drop this key or the train section")  # fmt: skip
        d.setdefault("model", model)
    elif "model" in d:
        d["model"] = _relative(base, d["model"])
    if data is not None:
        d.setdefault("data", data)
    elif "data" in d:
        d["data"] = _relative(base, d["data"])
    return d


def set_key(doc: dict[str, Any], dotted: str, value: Any) -> None:
    """Override one key of a parsed file in place: ``set_key(doc, "audit.n", 10)``."""
    parts = dotted.split(".")
    if not all(parts):
        raise ConfigError(f"--set {dotted}: expected SECTION.KEY=VALUE, e.g. audit.n=10")
    node = doc
    for p in parts[:-1]:
        nxt = node.get(p)
        if nxt is None:
            nxt = node[p] = {}
        if not isinstance(nxt, dict):
            raise ConfigError(f"--set {dotted}: {p} is not a section")
        node = nxt
    node[parts[-1]] = value


def load_experiment(path: str | Path, overrides: Mapping[str, Any] | None = None) -> Experiment:
    """Read and check an experiment file (module docstring); ``overrides`` maps dotted keys
    (``"audit.n"``) to values that replace the file's.

    Raises:
        ConfigError: the file cannot be read or is not YAML, or :func:`parse_experiment` fails;
            every message starts with the file's name.
    """
    import yaml

    p = Path(path).expanduser()
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot read the experiment file {p} ({e.strerror or e}); check the "
                          "path") from None  # fmt: skip
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where is not None else ""
        raise ConfigError(f"{p.name}: not valid YAML{at} ({getattr(e, 'problem', e)}); fix "
                          "the syntax") from None  # fmt: skip
    if isinstance(doc, dict):
        for k, v in (overrides or {}).items():
            set_key(doc, k, v)
    try:
        return parse_experiment(doc, path=p)
    except ConfigError as e:
        raise ConfigError(f"{p.name}: {e}") from None


# -- running ---------------------------------------------------------------------------------------


@dataclass
class ExperimentOutcome:
    """What :func:`run_experiment` did: the trained model's metadata (and whether it was
    reused), the audit's and the certification's outcomes."""

    train_meta: dict[str, Any] | None = None
    train_reused: bool = False
    audit: AuditOutcome | None = None
    certify: CertifyOutcome | None = None


def _trained(exp: Experiment, progress: Progress | None) -> tuple[dict[str, Any], bool]:
    """Train the ``train`` section's model, or reuse the file if it was trained the same way."""
    from advlab.defenses import train_and_save
    from advlab.defenses.recipes import recipe_params
    from advlab.fileio import check_writable_folder
    from advlab.models import load_model

    assert exp.train is not None and exp.train_config is not None and exp.train.out is not None
    t, cfg = exp.train, exp.train_config
    dest = Path(t.out)  # type: ignore[arg-type]
    if dest.exists():
        _, meta = load_model(dest)
        want = {**cfg.to_dict(), "recipe_params": recipe_params(cfg.recipe, cfg.recipe_params)}
        if meta.get("arch") == t.model and meta.get("recipe") == want:
            if progress is not None:
                progress({"stage": "train", "message": f"reusing trained model {dest}"})
            return dict(meta), True
        raise ConfigError(
            f"train.out: {dest} exists but was not trained with these options (architecture or "
            "training settings differ); delete it or set another train.out"
        )
    check_writable_folder(dest.parent, f"train.out {dest}")
    _, meta = train_and_save(t.model, t.data, cfg, dest, data_dir=t.data_dir, resume=t.resume,
                             progress=progress, arch_kwargs=dict(t.arch_params),
                             device=t.device)  # fmt: skip
    return dict(meta), False


def run_experiment(
    exp: Experiment, *, progress: Progress | None = None, fresh: bool = False
) -> ExperimentOutcome:
    """Run an experiment's sections in order: train, audit, certify (module docstring)."""
    from advlab.audit import run_audit, run_certify
    from advlab.store import RunStore

    out = ExperimentOutcome()
    if exp.train is not None:
        out.train_meta, out.train_reused = _trained(exp, progress)
    if exp.audit is not None:
        with RunStore(exp.store) as store:
            out.audit = run_audit(exp.audit, store=store, out_dir=exp.out, progress=progress,
                                  fresh=fresh)  # fmt: skip
    if exp.certify is not None:
        out.certify = run_certify(exp.certify, out_dir=exp.out, progress=progress)
    return out


# -- the schema -------------------------------------------------------------------------------------


def _section_schema(name: str, cls: tuple[type, ...], title: str) -> dict[str, Any]:
    types_ = _section_types(name)
    desc: dict[str, str] = {}
    for c in cls:
        desc.update(_descriptions(c))
    props: dict[str, Any] = {}
    for key, (tp, default) in types_.items():
        prop = dict(_json_type(tp))
        if key == "attacks":
            prop = {
                "type": "array",
                "items": {"anyOf": [
                    {"type": "string", "description": "a registered attack (advlab list attacks)"},
                    {"type": "object", "required": ["name"],
                     "properties": {"name": {"type": "string"}},
                     "additionalProperties": True,
                     "description": "an attack and its parameters, e.g. {name: pgd, steps: 100}"},
                ]},
            }  # fmt: skip
        if key in desc:
            prop["description"] = " ".join(desc[key].split())
        if default is not dataclasses.MISSING:
            prop["default"] = _plain_default(default)
        props[key] = prop
    return {"type": "object", "title": title, "additionalProperties": False, "properties": props}


def _plain_default(v: Any) -> Any:
    if isinstance(v, tuple):
        return list(v)
    return v


def schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of an experiment file, from the config dataclasses."""
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "advlab-experiment.schema.json",
        "title": "advlab experiment",
        "description": "An experiment file for `advlab run FILE`: train (optional), audit and "
        "certify sections, run in that order. Generated by `advlab run --schema`.",
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "train": _section_schema(
                "train",
                (TrainSection, TrainConfig),
                "train a zoo model with a recipe (advlab train)",
            ),
            "audit": _section_schema(
                "audit", (AuditConfig,), "attack the model over an eps grid (advlab audit)"
            ),
            "certify": _section_schema(
                "certify", (CertifyConfig,), "certified accuracy and radii (advlab certify)"
            ),
            "out": {
                "type": "string",
                "default": TOP_LEVEL["out"],
                "description": "folder for the reports",
            },
            "store": {
                "type": ["string", "null"],
                "default": None,
                "description": "the run store file (default: advlab's store)",
            },
        },
    }
