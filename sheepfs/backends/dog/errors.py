"""What dog's failures mean: its stderr text, classified into sheepfs's exceptions.

dog has few distinct exit codes, so the text it prints is what tells a missing VDI from an
unreachable cluster; this is the one place that text is read (docs/SHEEPDOG.md F17).
"""

from __future__ import annotations

from collections.abc import Sequence

from ...errors import (
    BackendError,
    Exists,
    InvalidArgument,
    NoSpace,
    NotFound,
    NotPermitted,
    TooLarge,
    Unavailable,
)


class MissingAttribute(NotFound):
    """``dog vdi getattr`` or ``setattr -d`` of a key the VDI does not have."""


# stderr text -> exception, first match wins (docs/SHEEPDOG.md F17).
_ERRORS: Sequence[tuple[str, type[BackendError]]] = (
    ("' not found", MissingAttribute),  # "Attribute 'KEY' not found" (exit 5)
    ("No VDI found", NotFound),
    ("VDI not found", NotFound),  # vdi setattr/getattr (exit 5, as for a missing key)
    ("Failed to find requested tag", NotFound),
    ("VDI exists already", Exists),
    ("is existed", Exists),
    ("no space", NoSpace),
    ("snapshot of hypervolume is not supported", NotPermitted),
    ("Shrinking VDIs is not implemented", InvalidArgument),
    ("beyond the end of the VDI", InvalidArgument),
    ("larger than", TooLarge),
    ("too large", TooLarge),
    ("max size", TooLarge),
    ("failed to connect", Unavailable),
    ("Connection refused", Unavailable),
    ("I/O error", Unavailable),
    ("Failed to get node list", Unavailable),
    ("Waiting for cluster to be formatted", Unavailable),
    ("Invalid ip address", Unavailable),
    ("Invalid port number", Unavailable),
)


def error_for(op: str, name: bytes | None, rc: int, stderr: bytes) -> BackendError:
    """The exception for a failed dog call: the one place dog's failures are classified."""
    text = stderr.decode(errors="replace").strip()
    detail = "; ".join(line for line in text.splitlines() if line.strip())
    if not detail:
        detail = f"dog exited with status {rc} and said nothing"
    lowered = text.lower()
    for needle, cls in _ERRORS:
        if needle.lower() in lowered:
            return cls(op, name, detail)
    return BackendError(op, name, detail)
