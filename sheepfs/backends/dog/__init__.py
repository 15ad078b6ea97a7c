"""The Sheepdog backend, through the ``dog`` CLI (``collie`` before Sheepdog 0.7).

``backend`` maps the Backend interface onto dog commands, ``process`` runs them, ``errors``
reads what dog says when a call fails and ``listing`` parses its raw output.
"""

from __future__ import annotations

import os
import shutil

from ...errors import Unavailable
from .backend import DogBackend

__all__ = ["DogBackend", "find_cli"]


def find_cli(explicit: str | None = None) -> str:
    """The CLI to run: ``explicit`` if given, else ``dog`` on PATH, else ``collie``."""
    if explicit:
        path = explicit if os.sep in explicit else shutil.which(explicit)
        if path and os.path.isfile(path) and os.access(path, os.X_OK):
            return os.path.abspath(path)
        raise Unavailable("start", None, f"{explicit} is not an executable file")
    for candidate in ("dog", "collie"):
        path = shutil.which(candidate)
        if path:
            return path
    raise Unavailable("start", None, "neither dog nor collie found on PATH (see --dog)")
