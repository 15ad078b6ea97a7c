"""File names <-> VDI names.

A VDI name may hold any byte but NUL, including `/`, and may be `.` or `..`, which a file
name cannot be. Such names are shown percent-encoded: `%` -> `%25`, `/` -> `%2F`, and a name
that is exactly `.` or `..` -> `%2E` / `%2E%2E`. Only canonical encodings are accepted back,
so every VDI has exactly one file name and every file name exactly one VDI.
"""

from __future__ import annotations

import errno

from .backends.base import MAX_NAME_LEN


class BadName(Exception):
    """A file name that cannot name a VDI; ``errno`` says why."""

    def __init__(self, err: int, why: str) -> None:
        super().__init__(why)
        self.errno = err


def encode(vdi_name: bytes) -> bytes:
    """The file name that shows ``vdi_name``."""
    if vdi_name == b".":
        return b"%2E"
    if vdi_name == b"..":
        return b"%2E%2E"
    return vdi_name.replace(b"%", b"%25").replace(b"/", b"%2F")


def decode(file_name: bytes) -> bytes:
    """The VDI a file name stands for; raises :class:`BadName` if it names none."""
    if file_name == b"%2E":
        vdi = b"."
    elif file_name == b"%2E%2E":
        vdi = b".."
    else:
        vdi = file_name.replace(b"%2F", b"/").replace(b"%25", b"%")
    if encode(vdi) != file_name:
        raise BadName(errno.EINVAL, "not a canonical sheepfs name (write % as %25, / as %2F)")
    if not vdi:
        raise BadName(errno.EINVAL, "empty name")
    if len(vdi) > MAX_NAME_LEN:
        raise BadName(errno.ENAMETOOLONG, f"VDI names are limited to {MAX_NAME_LEN} bytes")
    return vdi
