"""Griffe extension for advlab's API reference (loaded by mkdocs.yml; not part of the package).

advlab's docstrings are Google style with a few reST habits, and its attacks are decorated
functions. Three fixes, applied to what the reference renders, never to the sources:

* reST cross-reference roles (``:func:`name```, ``:class:`~pkg.Name```) become code spans, and
  a paragraph ending in a reST literal-block marker ``::`` ends in ``:`` (the indented block
  under it is already a Markdown code block);
* an ``Args:`` item that documents several parameters at once (``x, y: ...``) becomes one item
  per parameter (the first with the text, the others pointing to it), so that each gets its
  type and default from the signature instead of showing as one unknown, "required" name;
* doctest lines (``>>> ...`` and their ``...`` continuations) become ``pycon`` code blocks, so
  they do not render as nested Markdown quotes;
* a function made by ``@register_attack`` gets the public signature that the decorator sets at
  run time, ``(model, x, y, threat, *, target=None, seed=0, **hyper-parameters)``, instead of the
  algorithm's ``(run, **hyper-parameters)`` that static analysis sees.
"""

from __future__ import annotations

import importlib
import inspect
import re
from typing import Any

import griffe

LITERAL = re.compile(r"(?<=\S)::$", re.M)
ROLE = re.compile(r":(?:func|class|meth|attr|data|mod|obj|exc|const):`~?([^`]+)`")
KINDS = {
    inspect.Parameter.POSITIONAL_ONLY: griffe.ParameterKind.positional_only,
    inspect.Parameter.POSITIONAL_OR_KEYWORD: griffe.ParameterKind.positional_or_keyword,
    inspect.Parameter.VAR_POSITIONAL: griffe.ParameterKind.var_positional,
    inspect.Parameter.KEYWORD_ONLY: griffe.ParameterKind.keyword_only,
    inspect.Parameter.VAR_KEYWORD: griffe.ParameterKind.var_keyword,
}


# The annotations of the public head that register_attack writes (src/advlab/attacks/base.py);
# functools.wraps copies the algorithm's annotations over them at run time, so they are lost there.
HEAD = {
    "model": "nn.Module | Oracle",
    "x": "Tensor",
    "y": "Tensor",
    "threat": "ThreatModel",
    "target": "Tensor | None",
    "seed": "int | SampleRNG",
}


def _role(match: re.Match[str]) -> str:
    target = match.group(1)
    if match.group(0).split("`")[1].startswith("~"):
        target = target.rsplit(".", 1)[-1]
    return f"`{target}`"


def _doctests(text: str) -> str:
    out: list[str] = []
    block: list[str] = []
    indent = ""

    def flush() -> None:
        if block:
            out.extend([f"{indent}```pycon", *block, f"{indent}```"])
            block.clear()

    for line in text.splitlines():
        stripped = line.lstrip()
        if stripped.startswith((">>>", "...")) and (block or stripped.startswith(">>>")):
            if not block:
                indent = line[: len(line) - len(stripped)]
            block.append(line)
            continue
        flush()
        out.append(line)
    flush()
    return "\n".join(out)


SECTION = re.compile(r"^(\s*)(Args|Arguments|Parameters|Keyword Args|Other Parameters):\s*$")
GROUP = re.compile(r"^(\s+)(\*{0,2}\w+(?:, \*{0,2}\w+)+):(.*)$")


def _split_groups(text: str) -> str:
    out: list[str] = []
    section: str | None = None  # indentation of the current Args header
    for line in text.splitlines():
        header = SECTION.match(line)
        if header:
            section = header.group(1)
        elif section is not None and line.strip() and not line.startswith(section + " "):
            section = None
        group = GROUP.match(line) if section is not None else None
        if group and len(group.group(1)) == len(section or "") + 4:
            indent, names, rest = group.groups()
            first, *others = [n.strip() for n in names.split(",")]
            out.append(f"{indent}{first}:{rest}")
            out.extend(f"{indent}{name}: see `{first.lstrip('*')}`." for name in others)
            continue
        out.append(line)
    return "\n".join(out)


def _annotation(value: Any) -> str | None:
    if value is inspect.Parameter.empty:
        return None
    return value if isinstance(value, str) else inspect.formatannotation(value)


class AdvlabDocs(griffe.Extension):
    """The three fixes above."""

    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            text = LITERAL.sub(":", ROLE.sub(_role, obj.docstring.value))
            obj.docstring.value = _split_groups(_doctests(text))

    def on_function(self, *, func: griffe.Function, **kwargs: Any) -> None:
        if not any("register_attack" in str(d.value) for d in func.decorators):
            return
        live = getattr(importlib.import_module(func.module.path), func.name)
        sig = inspect.signature(live)
        static = {p.name: p.annotation for p in func.parameters}
        func.parameters = griffe.Parameters(
            *(
                griffe.Parameter(
                    p.name,
                    annotation=HEAD.get(p.name) or static.get(p.name) or _annotation(p.annotation),
                    kind=KINDS[p.kind],
                    default=None if p.default is inspect.Parameter.empty else repr(p.default),
                )
                for p in sig.parameters.values()
            )
        )
        ret = sig.return_annotation
        func.returns = ret.__name__ if isinstance(ret, type) else _annotation(ret)
