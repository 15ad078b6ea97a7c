"""Renaming: Sheepdog has no rename, so a VDI gets a new name without copying its data.

A file that is only in the spool just changes its name (free). A VDI is renamed as a
snapshot, a clone of the snapshot under the new name, the old VDI deleted and the snapshot
dropped (docs/SHEEPDOG.md F13: clones outlive their source snapshot). A VDI renamed over
an existing one first snapshots the one it replaces, so a failure leaves its data
reachable and the log says where. The clone gets the times the old name showed (a rename
keeps mtime: ``rsync`` sets times on its temporary file, then renames it).
"""

from __future__ import annotations

import dataclasses
import logging
import time

import trio

from ..backends.base import Backend, VdiInfo, VdiKind
from ..errors import BackendError, InvalidArgument, NotFound, NotPermitted, ReadOnly
from .aside import put_back_later
from .catalog import Catalog
from .filetimes import current
from .openfile import OpenFile, State
from .openfiles import OpenFiles
from .replace import drop_snapshot, snapshot_tag, take_snapshot
from .timekeeper import TimeKeeper
from .times import Times

log = logging.getLogger(__name__)

#: Failures of a snapshot that mean it was refused before anything changed.
REFUSED = (NotPermitted, InvalidArgument, ReadOnly, NotFound)
#: Seconds a rename tries to delete its source's old name (and between two tries).
SOURCE_DELETE_FOR = 60.0
RETRY = 2.0


@dataclasses.dataclass(frozen=True)
class Rename:
    """One rename: the names, what is open under them, and what the listing knows."""

    src: bytes
    dst: bytes
    src_file: OpenFile | None
    dst_file: OpenFile | None
    src_info: VdiInfo | None
    dst_exists: bool


async def rename(backend: Backend, catalog: Catalog, files: OpenFiles, r: Rename) -> None:
    """Give ``r.src`` the name ``r.dst``, replacing ``r.dst`` if it exists."""
    if r.dst_file is not None and r.dst_file is not r.src_file:
        async with r.dst_file.lock:  # an upload of it under way ends first
            if not r.dst_file.gone:
                r.dst_file.to(State.UNLINKED)
                files.replacer.settled(r.dst_file)
    f = r.src_file
    if f is not None and f.staged is not None and not f.has_vdi:
        async with f.lock:
            _rename_staged(f, r.dst, r.dst_exists)
        return
    if f is None:
        assert r.src_info is not None
        await files.times.looked_up(r.src_info)
        times = files.times.shown(r.src_info)  # a rename keeps the times it shows
        ctime, ctime_ns = await _rename_vdi(backend, catalog, r, files.times, times, files)
        moved = dataclasses.replace(r.src_info, name=r.dst, kind=VdiKind.CLONE, ctime=ctime)
        catalog.put(dataclasses.replace(moved, ctime_ns=ctime_ns))
        return
    async with f.lock:  # no write-back may reach the old VDI once it is snapshotted
        await files.sync_locked(f)
        if f.times is None:
            await files.times.looked_up(f.info())
        times = current(files.times, f)
        f.ctime, _ = await _rename_vdi(backend, catalog, r, files.times, times, files)
        f.times, f.saved_times, f.written_ns, f.times_bound = times, times, 0, True
        f.name = r.dst
        if f.staged is not None:
            f.staged.rename(r.dst)
        files.record(f)


def _rename_staged(f: OpenFile, dst: bytes, dst_exists: bool) -> None:
    """A file with no VDI yet: only its name changes (and it replaces ``dst``'s VDI)."""
    assert f.staged is not None
    f.name = dst
    if dst_exists and f.state is State.STAGED:
        f.to(State.REPLACING)
        f.staged.replaces = True
    f.staged.rename(dst)


async def _snapshot_source(
    backend: Backend, catalog: Catalog, files: OpenFiles, src: bytes, tag: str
) -> None:
    """Snapshot ``src`` for the clone. Cut off, a snapshot can leave the name with the
    snapshot only (the old inode made the snapshot, no new working VDI): the file would be
    gone though the rename failed. So it is recorded first, as a rename's old data is, and
    if the snapshot fails the name is checked in the background (EIO meanwhile) and given
    its data back from the snapshot if it has no VDI; the record goes once it is taken."""
    record = files.spool.set_aside(src, tag, "rename")
    try:
        await backend.snapshot(src, tag)
    except REFUSED:  # refused before anything changed: nothing to check
        record.remove()
        raise
    except BaseException:
        put_back_later(files, catalog, record)
        raise
    record.remove()


async def _rename_vdi(
    backend: Backend, catalog: Catalog, r: Rename, keeper: TimeKeeper, times: Times,
    files: OpenFiles,
) -> tuple[int, int]:  # fmt: skip
    """Snapshot ``src``, clone it as ``dst`` (over the old ``dst``), delete ``src``; each
    VDI's times go before it does, and ``times`` come with the clone. Returns the clone's
    creation time (s, ns)."""
    tag = snapshot_tag("mv")
    await _snapshot_source(backend, catalog, files, r.src, tag)
    dst_tag = record = None
    try:
        if r.dst_exists:
            dst_tag = snapshot_tag("old")
            # For a failure or a crash: until the delete has ended, what is left of the
            # target (a delete cut off zeroes its index first, a snapshot cut off may leave
            # only itself) must give way to its old data.
            record = files.spool.set_aside(r.dst, dst_tag, "replace")
            await take_snapshot(backend, r.dst, dst_tag)
            await keeper.delete(r.dst)
            if await backend.lookup(r.dst) is None:  # gone indeed (dog's word is not enough)
                record = files.spool.set_aside(r.dst, dst_tag, "rename", record.path)
            catalog.remove(r.dst)
        await backend.clone(r.src, tag, r.dst)
        if record is not None:
            record.remove()
    except BaseException:
        if dst_tag is not None:
            log.error(
                "rename %r -> %r failed; the old %r is in its snapshot %s",
                r.src,
                r.dst,
                r.dst,
                dst_tag,
            )
        if record is not None:  # the target may be deleted: it gets its old data back
            put_back_later(files, catalog, record)
        await drop_snapshot(backend, r.src, tag)
        raise
    try:
        created = await keeper.bind(r.dst, times)
    except BackendError as e:  # the data is renamed: only its times are not
        log.warning("rename %r -> %r: times not kept: %s", r.src, r.dst, e)
        created = int(time.time()), 0
    if await _delete_source(keeper, r):
        catalog.remove(r.src)
    await drop_snapshot(backend, r.src, tag)
    if dst_tag is not None:
        await drop_snapshot(backend, r.dst, dst_tag)
    return created


async def _delete_source(keeper: TimeKeeper, r: Rename) -> bool:
    """Delete the renamed VDI's old name; True if it is gone. The clone holds the data now,
    so a failure here must not fail the rename: a delete cut off may have zeroed the
    source's index (Sheepdog zeroes it first), and ``mv``, told the rename failed and seeing
    the source still there, renames it again, over the clone (found by the soak). Nor may
    the old name stay after a rename that succeeded, so a delete that fails is tried again
    for SOURCE_DELETE_FOR seconds (a node that died, a cluster that restarts); only then is
    what is left kept listed, for ``rm``, and the log says so."""
    deadline = trio.current_time() + SOURCE_DELETE_FOR
    while True:
        try:
            await keeper.delete(r.src)
            return True
        except NotFound:
            return True  # an earlier try landed
        except BackendError as e:
            if isinstance(e, REFUSED) or trio.current_time() + RETRY > deadline:
                _left_behind(r, e)
                return False
            log.info("rename %r -> %r: deleting the old name failed (%s); trying again in "
                     "%g s", r.src, r.dst, e, RETRY)  # fmt: skip
        await trio.sleep(RETRY)


def _left_behind(r: Rename, e: BackendError) -> None:
    log.warning(
        "rename %r -> %r: the data is under the new name, but deleting the old name "
        "failed (%s): %r may stay, maybe reading zeros; rm it",
        r.src,
        r.dst,
        e,
        r.src,
    )
