"""Replacing a VDI's data with a shorter file, which Sheepdog cannot do in place.

Sheepdog cannot shrink a VDI, so a live file truncated shorter (``O_TRUNC``, ``cp`` over
it, ``truncate -s``) is staged in the spool (REPLACING) and becomes a new VDI of the same
name with the same layout at upload. The old data is moved into a snapshot first and the
snapshot is dropped only once the new VDI holds the new data, so at no moment are both
gone; a failed upload says in which snapshot the old data waits.
"""

from __future__ import annotations

import logging
import secrets
import time

from ..backends.base import Backend
from ..cache.cache import ChunkCache
from ..errors import BackendError, Exists, NotFound
from ..spool import Aside, Spool, has_data
from .catalog import Catalog
from .openfile import OpenFile, State
from .timekeeper import TimeKeeper

log = logging.getLogger(__name__)


def snapshot_tag(purpose: str) -> str:
    """A snapshot tag of our own: never all digits (dog refuses those), unlikely to clash."""
    return f"sheepfs-{purpose}-{int(time.time())}-{secrets.token_hex(4)}"


class Replacer:
    """Stages live files to be replaced, and sets their old data aside at upload."""

    def __init__(
        self, backend: Backend, catalog: Catalog, cache: ChunkCache, spool: Spool,
        times: TimeKeeper,
    ) -> None:  # fmt: skip
        self.backend = backend
        self.catalog = catalog
        self.cache = cache
        self.spool = spool
        self.times = times
        #: File id -> the spool's record of its old data set aside, while it is.
        self.records: dict[int, Aside] = {}

    async def stage_existing(self, f: OpenFile, keep: int) -> None:
        """Shrink a LIVE file: stage its first ``keep`` bytes to replace the VDI at upload.

        Holes and zero objects are not copied, so ``O_TRUNC`` (keep=0) costs nothing here.
        """
        staged = self.spool.new(f.name)
        try:
            pos = 0
            while pos < keep:
                n = min(f.object_size - pos % f.object_size, keep - pos)
                data = bytes(await self.cache.read(f, pos, n))
                if has_data(data):
                    staged.pwrite(pos, data)
                pos += n
            staged.truncate(keep)
        except BaseException:
            staged.remove()
            raise
        staged.replaces = True
        staged.save_meta()
        self.cache.truncate(f, 0)  # dirty bytes below ``keep`` are in the spool now
        f.staged = staged
        f.to(State.REPLACING)
        f.touched = set()
        f.size = keep
        log.debug("staged %r (%d bytes kept) to replace its VDI", f.name, keep)

    async def set_aside(self, f: OpenFile) -> None:
        """Move the old data into a snapshot and delete the working VDI (under ``f.lock``):
        REPLACING -> STAGED, with ``f.aside`` naming the snapshot."""
        if f.aside is None:
            tag = f.aside_tried = f.aside_tried or snapshot_tag("old")
            if f.id not in self.records:  # first: a snapshot cut off may leave only itself
                self.records[f.id] = self.spool.set_aside(f.name, tag, "replace")
            await take_snapshot(self.backend, f.name, tag)
            f.aside = tag
            log.info(
                "replacing %r: its old data is in snapshot %s until the new data is in", f.name, tag
            )
        try:
            await self.times.delete(f.name)  # its times first: the new VDI gets its own
        except NotFound:  # an earlier try's delete landed though it failed (its reply lost)
            log.info("replacing %r: its VDI was deleted already", f.name)
        self.catalog.remove(f.name)
        f.backend_size = 0
        f.to(State.STAGED)

    def settled(self, f: OpenFile) -> None:
        """``f``'s old data must not come back any more (its new data is in, or it was
        deleted): the spool's record of it goes, before the snapshot does."""
        record = self.records.pop(f.id, None)
        if record is not None:
            record.remove()

    async def drop_snapshot(self, name: bytes, tag: str) -> None:
        await drop_snapshot(self.backend, name, tag)


async def has_snapshot(backend: Backend, name: bytes, tag: str) -> bool:
    return any(s.tag == tag.encode() for s in await backend.snapshots(name))


async def take_snapshot(backend: Backend, name: bytes, tag: str) -> None:
    """Snapshot ``tag`` of ``name``, also where an earlier try of it landed though it
    failed. Cut off, a snapshot can leave the name with no working VDI, only the snapshot
    (dog writes the tag into the inode first): "No VDI found" then, or "exists" if it is
    all there."""
    try:
        await backend.snapshot(name, tag)
    except (NotFound, Exists):
        if not await has_snapshot(backend, name, tag):
            raise
        log.info("snapshot %s of %r: an earlier try of it had landed", tag, name)


async def drop_snapshot(backend: Backend, name: bytes, tag: str) -> None:
    """Delete a snapshot of ours that has served; a failure costs only space, so it is
    logged, not raised."""
    try:
        await backend.delete_snapshot(name, tag)
    except BackendError as e:
        log.warning("could not delete snapshot %s of %r (delete it by hand): %s", tag, name, e)
