"""Drive the fake dog from tests: make a store, change its config, inject faults, count calls."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def dog_path() -> str:
    return str(HERE / "dog")


def collie_path() -> str:
    return str(HERE / "collie")


def init_store(path: Path | str, **config) -> Path:
    """An empty, formatted cluster in ``path`` (created if needed)."""
    path = Path(path)
    (path / "objects").mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config))
    (path / "created").write_text(str(int(__import__("time").time())))
    return path


def config(path: Path | str) -> dict:
    return json.loads((Path(path) / "config.json").read_text())


def set_config(path: Path | str, **changes) -> None:
    """Change the cluster's behaviour; the next dog call sees it."""
    c = config(path)
    c.update(changes)
    tmp = Path(path) / "config.json.tmp"
    tmp.write_text(json.dumps(c))
    os.replace(tmp, Path(path) / "config.json")


def add_fault(path: Path | str, rule: dict) -> None:
    """Add a fault rule: {"match": ["vdi", "write"], "name": ..., "rc": 1, "stderr": ...,
    "stdout": ..., "hang": bool, "sleep": s, "kill": bool, "after_bytes": n, "times": k,
    "nospace": bool}. The first matching rule applies."""
    set_config(path, faults=config(path).get("faults", []) + [rule])


def clear_faults(path: Path | str) -> None:
    set_config(path, faults=[])


def calls(path: Path | str) -> list[list[str]]:
    """argv (after the program name) of every dog call so far."""
    log = Path(path) / "calls.log"
    if not log.exists():
        return []
    return [json.loads(line)["argv"] for line in log.read_text().splitlines() if line]


def count_calls(path: Path | str, *prefix: str) -> int:
    return sum(1 for argv in calls(path) if argv[: len(prefix)] == list(prefix))


def env(path: Path | str) -> dict[str, str]:
    e = dict(os.environ)
    e["SHEEPDOG_FAKE_STORE"] = str(path)
    e.setdefault("SHEEPDOG_FAKE_PYTHON", sys.executable)
    return e


def run(path: Path | str, *args: str | bytes, stdin: bytes = b"", dog: str | None = None,
        timeout: float = 60) -> subprocess.CompletedProcess:  # fmt: skip
    """Run the fake dog with ``args``; stdout and stderr are captured as bytes."""
    return subprocess.run(
        [dog or dog_path(), *args], input=stdin, capture_output=True, env=env(path),
        timeout=timeout,
    )  # fmt: skip
