"""File names <-> VDI names.

A VDI name may hold any byte but NUL, including `/`, and may be `.`, `..` or `.snapshots`,
which a file name in the mount cannot be (the last is the snapshots directory). So a few
escapes are needed, and a name typed by a user must still mean what it says. The rule:

- Reading a file name (:func:`decode`): `%25` is `%` and `%2F` is `/`, wherever they stand
  (read left to right, so `%252F` is `%2F`); the whole names `%2E`, `%2E%2E` and
  `%2Esnapshots` are `.`, `..` and `.snapshots`. Every other byte is itself: a `%` that
  starts no escape (`50%off`, `100%`, `a%2`, `%zz`) and the lower-case `%2f` too, since
  escapes are upper-case, as they are written.
- Writing one (:func:`encode`): `/` is `%2F`, and a `%` is written `%25` only where it
  would otherwise be read as an escape: before `25` or `2F`, and at the start of the VDIs
  `%2E`, `%2E%2E` and `%2Esnapshots` (shown `%252E`, `%252E%2E`, `%252Esnapshots`).

So every VDI has one name in listings and it leads back to that VDI; a name with no `%25`
and no `%2F` in it (and not one of the three whole names) is the VDI of exactly that name,
and is listed as typed. The only other names that are accepted hold a `%25` the encoding
would not write (`50%25`, the form of `50%` before percent signs were kept as typed): each
is a second name of the VDI it reads as, as before. Refused: the names `.`, `..` and
`.snapshots` (directories, not VDIs) and VDI names over 255 bytes.
"""

from __future__ import annotations

import errno
import re

from .backends.base import MAX_NAME_LEN

#: The directory of snapshots in the mount's root; the VDI of that name is `%2Esnapshots`.
SNAPSHOTS_DIR = b".snapshots"

#: Names a file cannot have, and the whole file names that show them.
_SPECIAL = {b".": b"%2E", b"..": b"%2E%2E", SNAPSHOTS_DIR: b"%2Esnapshots"}
_SPECIAL_BACK = {f: v for v, f in _SPECIAL.items()}
_ESCAPE = re.compile(rb"%(25|2F)")
_UNESCAPE = {b"25": b"%", b"2F": b"/"}
#: A `%` that the reader would take for the start of an escape.
_AMBIGUOUS_PERCENT = re.compile(rb"%(?=25|2F)")


class BadName(Exception):
    """A file name that cannot name a VDI; ``errno`` says why."""

    def __init__(self, err: int, why: str) -> None:
        super().__init__(why)
        self.errno = err


def encode(vdi_name: bytes) -> bytes:
    """The file name that shows ``vdi_name`` in listings."""
    special = _SPECIAL.get(vdi_name)
    if special is not None:
        return special
    # Percent signs first, judged on the VDI name itself: the `%` of a `%2F` written for
    # a slash must not be taken for one.
    shown = _AMBIGUOUS_PERCENT.sub(b"%25", vdi_name).replace(b"/", b"%2F")
    if shown in _SPECIAL_BACK:  # the VDI `%2E` and the like: escape their first `%`
        shown = b"%25" + shown[1:]
    return shown


def decode(file_name: bytes) -> bytes:
    """The VDI a file name stands for; raises :class:`BadName` if it names none."""
    vdi = _SPECIAL_BACK.get(file_name)
    if vdi is not None:
        return vdi
    if file_name in _SPECIAL:
        raise BadName(errno.EINVAL, f"{file_name.decode()!r} is a directory, not a VDI")
    if not file_name:
        raise BadName(errno.EINVAL, "empty name")
    vdi = _ESCAPE.sub(lambda m: _UNESCAPE[m.group(1)], file_name)
    if len(vdi) > MAX_NAME_LEN:
        raise BadName(errno.ENAMETOOLONG, f"VDI names are limited to {MAX_NAME_LEN} bytes")
    return vdi
