"""Where advlab keeps things on disk.

* data: ``--data-dir``, else ``$ADVLAB_DATA``, else ``~/.cache/advlab/data``;
* cache (trained default models): ``$ADVLAB_CACHE``, else ``~/.cache/advlab``;
* run store: ``$ADVLAB_HOME/runs.sqlite``, else ``~/.local/share/advlab/runs.sqlite``.
"""

from __future__ import annotations

import os
from pathlib import Path


def data_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """Folder holding standard datasets (see module docstring for the lookup order)."""
    if explicit is not None:
        return Path(explicit).expanduser()
    env = os.environ.get("ADVLAB_DATA")
    return Path(env).expanduser() if env else cache_dir() / "data"


def cache_dir() -> Path:
    """Folder for cached models and other reusable artifacts."""
    env = os.environ.get("ADVLAB_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "advlab"


def home_dir() -> Path:
    """Folder holding the run store."""
    env = os.environ.get("ADVLAB_HOME")
    return Path(env).expanduser() if env else Path.home() / ".local" / "share" / "advlab"


def store_path() -> Path:
    """Default path of the SQLite run store."""
    return home_dir() / "runs.sqlite"
