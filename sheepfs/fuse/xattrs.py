"""Extended attributes: those of the mount's root tell the daemon's status.

``sheepfs status MOUNTPOINT`` reads ``user.sheepfs.status`` (the whole snapshot as JSON,
:mod:`sheepfs.status`) with getxattr(2) from its own process, and ``getfattr -d -m
user.sheepfs MOUNTPOINT`` shows it beside a few single numbers. So the status needs no
socket or file of its own, and whoever can see the mount can ask it. No other inode has
attributes: Sheepdog keeps none.
"""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Callable

import pyfuse3

from ..status import Status

log = logging.getLogger(__name__)

ROOT = pyfuse3.ROOT_INODE
PREFIX = b"user.sheepfs."
STATUS = PREFIX + b"status"
#: Single values beside the JSON, for a glance with getfattr and for scripts without JSON.
SCALARS: dict[bytes, Callable[[Status], object]] = {
    PREFIX + b"version": lambda s: s.where.version,
    PREFIX + b"uptime": lambda s: int(s.uptime),
    PREFIX + b"files_open": lambda s: s.files_open,
    PREFIX + b"pending_files": lambda s: s.pending_files,
    PREFIX + b"pending_bytes": lambda s: s.pending_bytes,
    PREFIX + b"errors": lambda s: s.errors,
}
NAMES = [STATUS, *SCALARS]
#: Seconds one caller keeps getting the same value of a name. getfattr asks for the size
#: (a getxattr with an empty buffer) and then for the value: both must see one snapshot,
#: or a value grown in between fails with ERANGE.
SAME_FOR = 0.5


class RootXattrs:
    """The attributes of the root, from ``snapshot`` (none without one)."""

    def __init__(self, snapshot: Callable[[], Status] | None = None) -> None:
        self.snapshot = snapshot
        #: (pid, name) -> (when, value) of recent answers (see SAME_FOR).
        self._recent: dict[tuple[int, bytes], tuple[float, bytes]] = {}

    def names(self, inode: int) -> list[bytes]:
        return list(NAMES) if inode == ROOT and self.snapshot is not None else []

    def get(self, inode: int, name: bytes, pid: int) -> bytes:
        """The value of attribute ``name``; ENODATA where the root has none, ENOTSUP for
        every other inode: ``ls -l`` then asks once per mount, not once per file (1,000
        requests more in an ``ls -l`` of 1,000 VDIs, measured), as it did before the root
        had attributes."""
        if inode != ROOT:
            raise pyfuse3.FUSEError(errno.ENOTSUP)
        if self.snapshot is None or name not in NAMES:
            raise pyfuse3.FUSEError(errno.ENODATA)
        now = time.monotonic()
        self._recent = {k: v for k, v in self._recent.items() if now - v[0] < SAME_FOR}
        recent = self._recent.get((pid, name))
        if recent is not None:
            return recent[1]
        try:
            status = self.snapshot()
            value = (status.to_json() if name == STATUS else str(SCALARS[name](status))).encode()
        except Exception:  # a bug costs this answer, never the mount
            log.exception("status: the snapshot failed")
            raise pyfuse3.FUSEError(errno.EIO) from None
        self._recent[(pid, name)] = (now, value)
        return value
