"""What happens to an open file's times: a write moves mtime, utimes sets them, and they
reach its VDI once the VDI holds the file.

An open file carries its times in memory (``times``; ``written_ns``: the last write since
they were set; ``saved_times``: what its VDI keeps). They are stored right after sheepfs
creates the file's VDI (over whatever an earlier VDI of the name left), when the file is
closed (FLUSH, so before ``rsync`` or ``cp -p`` set times of their own), at its last
release if that failed, and at once when utimes reaches a file whose VDI holds it already.
A file whose data waits in the spool keeps them in memory until its VDI exists.
"""

from __future__ import annotations

import logging

from ..backends.base import VdiInfo
from ..errors import BackendError
from .openfile import OpenFile, State
from .timekeeper import TimeKeeper
from .times import Times

log = logging.getLogger(__name__)

#: States in which the VDI of the file's name holds the file (all of it, or the part
#: uploaded behind its writer): its times may be stored there.
_STORED_IN_VDI = frozenset({State.LIVE, State.UPLOADING, State.UPLOADED})


def current(keeper: TimeKeeper, f: OpenFile) -> Times:
    """The times of an open file: set on it, else kept for its VDI, else its creation
    time; a write since then moves mtime to the time of that write."""
    base = f.times or keeper.known(f.info()) or Times.created(f.ctime)
    return Times(f.written_ns, base.atime_ns) if f.written_ns else base


def unsaved(f: OpenFile) -> bool:
    return bool(f.written_ns) or (f.times is not None and f.times != f.saved_times)


async def set_times(
    keeper: TimeKeeper, f: OpenFile, atime_ns: int | None, mtime_ns: int | None
) -> None:
    """utimes: the new times win over earlier writes; stored now if the VDI holds the
    file (raising if that fails), else once it does."""
    if (atime_ns is None or mtime_ns is None) and f.times is None and f.state is State.LIVE:
        await keeper.looked_up(f.info())  # the time not given keeps its value
    base = current(keeper, f)
    mtime = base.mtime_ns if mtime_ns is None else mtime_ns
    f.times = Times(mtime, base.atime_ns if atime_ns is None else atime_ns)
    f.written_ns = 0
    if f.state is State.LIVE and not f.gone:
        await _store(keeper, f)


async def created(keeper: TimeKeeper, f: OpenFile) -> None:
    """Right after sheepfs created ``f``'s VDI: its times go with it at once. A failure is
    logged and tried again when the file is closed."""
    f.times_bound = False
    try:
        await _store(keeper, f)
    except BackendError as e:
        log.warning("%r: times not stored with its new VDI (tried again at close): %s",
                    f.name, e)  # fmt: skip


async def settle(keeper: TimeKeeper, f: OpenFile) -> None:
    """At close (and the last release): store ``f``'s times if they changed since they
    were stored. Its data is in by then; a failure is logged, the times stay unsaved."""
    if f.state not in _STORED_IN_VDI or not unsaved(f):
        return
    try:
        await _store(keeper, f)
    except BackendError as e:
        log.error("%r: its times could not be stored: %s", f.name, e)


async def _store(keeper: TimeKeeper, f: OpenFile) -> None:
    written, times = f.written_ns, current(keeper, f)
    if f.times_bound:
        await keeper.keep(f.name, f.ctime, times)
    else:
        f.ctime, _ = await keeper.bind(f.name, times)
        f.times_bound = True
    f.saved_times = times
    if written == f.written_ns:  # no write came while it was stored
        f.written_ns, f.times = 0, times


async def snapshotted(keeper: TimeKeeper, before: VdiInfo, f: OpenFile | None = None) -> None:
    """The working VDI ``before`` was just snapshotted and stays (``f``: its open file, if
    any): the snapshot took its inode and creation time, so its times are stored again for
    the new inode. A failure is logged: the times fall back to the new creation time."""
    if f is None and keeper.known(before) is None:
        await keeper.looked_up(before)  # the value still names the old inode: readable
    times = current(keeper, f) if f is not None else keeper.known(before)
    if times is None:
        return
    try:
        ctime, _ = await keeper.bind(before.name, times)
    except BackendError as e:
        log.warning("%r: times not kept through its snapshot: %s", before.name, e)
        return
    if f is not None:
        f.ctime, f.times, f.saved_times, f.times_bound = ctime, times, times, True
