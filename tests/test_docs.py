"""The how-to pages run as written: their code blocks, in order, in an empty folder."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"
BLOCK = re.compile(r"```(python|bash)\n(.*?)```", re.S)


def _blocks(page: str) -> list[tuple[str, str]]:
    return [(m.group(1), m.group(2)) for m in BLOCK.finditer((DOCS / page).read_text())]


def _run(cmd: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, (cmd, out.stdout[-2000:], out.stderr[-2000:])
    return out


@pytest.mark.slow
def test_audit_your_model_runs_as_written(tmp_path: Path) -> None:
    env = {**os.environ, "ADVLAB_HOME": str(tmp_path / "home"), "ADVLAB_CACHE": str(tmp_path / "cache"),
           "OMP_NUM_THREADS": "2"}  # fmt: skip
    env.pop("PYTHONPATH", None)  # the factory must be found in the current folder on its own
    audits = []
    for lang, body in _blocks("audit-your-model.md"):
        first = body.splitlines()[0]
        if lang == "python":
            assert first.startswith("# file: "), "every python block of this page is a file"
            (tmp_path / first.removeprefix("# file: ").strip()).write_text(body)
            continue
        for line in body.strip().splitlines():
            argv = shlex.split(line)
            if argv[0] == "python":
                _run([sys.executable, *argv[1:]], tmp_path, env)
            else:
                assert argv[0] == "advlab"
                # the console script, as a user runs it: unlike `python -m`, it does not put the
                # current folder on the import path, so this also tests the factory lookup
                script = Path(sys.executable).parent / "advlab"
                out = _run([str(script), *argv[1:]], tmp_path, env)
                audits.append(out.stdout)
    assert len(audits) == 3
    reports = sorted((tmp_path / "reports").glob("*/report.json"))
    assert len(reports) == 3
    accs = set()
    for r in reports:
        ev = json.loads(r.read_text())["evaluation"]
        assert ev["n"] == 200 and ev["dataset"] == "mytest"
        accs.add(ev["clean_accuracy"])
        assert ev["clean_accuracy"] > 0.8  # the three files hold the same trained network
    assert len(accs) == 1


ROOT = DOCS.parent
NAV_PAGE = re.compile(r"^\s*-\s.*?([\w./-]+\.md)\s*$", re.M)  # "- Title: page.md" or "- page.md"


def _nav_pages() -> list[str]:
    text = (ROOT / "mkdocs.yml").read_text()
    return NAV_PAGE.findall(text[text.index("\nnav:") :])


def test_every_docs_page_is_in_the_site_nav() -> None:
    # mkdocs only warns about a page left out of the nav, so a new page is easy to forget;
    # this fails fast, without building the site (CI runs `mkdocs build --strict` too).
    nav = _nav_pages()
    pages = sorted(p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md")
                   if not p.relative_to(DOCS).as_posix().startswith("_"))  # fmt: skip
    assert len(nav) == len(set(nav)), "a page is listed twice in the nav of mkdocs.yml"
    assert sorted(set(pages) - set(nav)) == [], "add these pages to the nav in mkdocs.yml"
    assert sorted(set(nav) - set(pages)) == [], "the nav of mkdocs.yml names missing pages"


def test_api_reference_names_existing_objects() -> None:
    import importlib

    names = []
    for page in sorted((DOCS / "reference").glob("*.md")):
        names += re.findall(r"^::: ([\w.]+)\s*$", page.read_text(), re.M)
    assert len(names) >= 11
    for name in names:
        parts = name.split(".")
        for i in range(len(parts), 0, -1):  # the longest importable prefix, then attributes
            try:
                obj = importlib.import_module(".".join(parts[:i]))
            except ModuleNotFoundError:
                continue
            for attr in parts[i:]:
                obj = getattr(obj, attr)
            break
        else:
            raise AssertionError(f"{name} in docs/reference does not exist")
