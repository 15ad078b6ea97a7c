"""File times (mtime, atime) that stick, kept with each VDI in Sheepdog: the values.

Sheepdog has no mtime. sheepfs keeps one as the VDI attribute ``sheepfs.times`` with the
value ``v1 <ctime> <mtime ns> <atime ns>`` (ASCII: ``dog vdi getattr NAME sheepfs.times``
shows it). Sheepdog keys attributes by the VDI's name, never removes them, and hands them
to the next VDI of that name (docs/PROTOCOL.md P12); a stale time is worse than none
(``rsync -a`` would skip a changed image). So a value is trusted only if its ``ctime`` is
the VDI's creation time (and, where the store stamps values with the creation time in ns,
that too); otherwise the VDI's creation time is shown. Keeping and reading them is
:mod:`.timekeeper`'s job, what files do to them :mod:`.filetimes`'.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from ..backends.base import AttrValue, VdiInfo

#: The attribute that holds a VDI's times.
KEY = b"sheepfs.times"
NS = 1_000_000_000


@dataclass(frozen=True)
class Times:
    mtime_ns: int
    atime_ns: int

    @classmethod
    def now(cls) -> Times:
        t = time.time_ns()
        return cls(t, t)

    @classmethod
    def created(cls, ctime: int) -> Times:
        """What a VDI with no times kept shows: its creation time."""
        return cls(ctime * NS, ctime * NS)


def encode(ctime: int, times: Times) -> bytes:
    return b"v1 %d %d %d" % (ctime, times.mtime_ns, times.atime_ns)


def decode(value: bytes) -> tuple[int, Times] | None:
    """(ctime, times) of a value of ours; None for anything else."""
    parts = value.split(b" ")
    if len(parts) != 4 or parts[0] != b"v1":
        return None
    if not all(p.isdigit() for p in parts[1:]):
        return None
    ctime, mtime, atime = (int(p) for p in parts[1:])
    return ctime, Times(mtime, atime)


def trusted(attr: AttrValue, info: VdiInfo) -> Times | None:
    """The times in ``attr`` if they were set for the VDI ``info`` is (rule 36)."""
    got = decode(attr.value)
    if got is None or got[0] != info.ctime:
        return None
    if attr.vdi_ctime_ns and info.ctime_ns and attr.vdi_ctime_ns != info.ctime_ns:
        return None  # an earlier VDI of that name, created in the same second
    return got[1]
