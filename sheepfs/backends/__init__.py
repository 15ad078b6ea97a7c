"""Storage backends: where VDIs live (a cluster over the sheep protocol or through the
dog/collie CLI, or a local directory).

:func:`make_backend` is the one place that picks one; everything above sees only the
interface of :mod:`.base`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .base import Backend


@dataclass(frozen=True)
class BackendChoice:
    """Which backend a mount uses, as the command line says."""

    local: Path | None = None  # a directory of image files instead of a cluster
    kind: str = "sheep"  # "sheep" (the wire protocol) or "dog" (the CLI)
    addresses: tuple[tuple[str, int], ...] = (("127.0.0.1", 7000),)
    dog: str | None = None  # the dog (or collie) CLI; found on PATH without one
    timeout: float = 60.0  # seconds before a call is given up


def make_backend(choice: BackendChoice) -> Backend:
    if choice.local is not None:
        from .local import LocalBackend

        return LocalBackend(choice.local)
    if choice.kind == "sheep":
        from .sheep import SheepBackend

        return SheepBackend(choice.addresses, timeout=choice.timeout)
    from .dog import DogBackend, find_cli

    address, port = choice.addresses[0]  # dog talks to one sheep
    return DogBackend(find_cli(choice.dog), address, port, timeout=choice.timeout)
