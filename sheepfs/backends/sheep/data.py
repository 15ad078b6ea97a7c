"""Reading and writing a VDI's bytes object by object (docs/PROTOCOL.md P5-P8).

A read is cut at object boundaries; a hole (index entry 0) reads as zeros with no request,
any other entry is read from that vid's object, so a clone or snapshot's inherited data
needs no walk up its parents. A write to an object the VDI owns is a WRITE_OBJ; to a hole
or an inherited object it is a CREATE_AND_WRITE_OBJ (copy-on-write from the parent's
object) followed by the index entry, at most one per object in flight, and later writes to
that object wait for it. Pieces of one call to different objects run at once. A READONLY
(someone snapshotted the VDI) moves it to the new working vid, one repair at a time; a
NO_OBJ for an object the index names (someone trimmed it) reads the index again.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager

import trio

from ...errors import BackendError, InvalidArgument, NotFound, ReadOnly
from ..base import Buffer
from . import proto
from .client import SheepClient
from .inode import Vdi, find_vid, read_entries, read_header
from .proto import INDEX_OFFSET, Res

log = logging.getLogger(__name__)

#: Pieces of one read or write in flight at once (the client bounds its connections too).
PIECES_AT_ONCE = 16
#: Bytes one request carries at most, even when objects are larger (rule 24).
MAX_PIECE = 4 << 20


def pieces(vdi: Vdi, offset: int, length: int) -> list[tuple[int, int, int, int]]:
    """``(object index, offset in it, length, offset in the caller's range)`` of a range."""
    out = []
    osz = vdi.object_size
    pos, end = offset, offset + length
    while pos < end:
        index, within = divmod(pos, osz)
        n = min(end - pos, osz - within, MAX_PIECE - within % MAX_PIECE)
        out.append((index, within, n, pos - offset))
        pos += n
    return out


async def run_all(calls: Sequence[Callable[[], Awaitable[object]]], at_once: int = 0) -> None:
    """Run ``calls`` at most ``at_once`` (``PIECES_AT_ONCE``) at a time, by that many tasks
    taking them in turn (a task per call costs more than a small call itself). The first
    failure stops the ones not yet begun and is raised as it is (never wrapped in an
    exception group), so the errno it carries reaches the user."""
    if len(calls) == 1:
        await calls[0]()
        return
    todo = iter(calls)
    failed: list[Exception] = []

    async def worker() -> None:
        for call in todo:  # shared: each call is taken by one worker
            if failed:
                return
            try:
                await call()
            except Exception as e:
                failed.append(e)
                return

    async with trio.open_nursery() as nursery:
        for _ in range(min(len(calls), at_once or PIECES_AT_ONCE)):
            nursery.start_soon(worker)
    if failed:
        raise failed[0]


class DataPath:
    """Reads and writes of one backend's VDIs through its client."""

    def __init__(self, client: SheepClient) -> None:
        self.client = client

    async def read_into(self, vdi: Vdi, offset: int, buf: memoryview) -> int:
        """Fill ``buf`` from ``offset`` (clamped to the VDI's size); bytes read."""
        length = max(0, min(len(buf), vdi.size - offset))
        parts = pieces(vdi, offset, length)
        if vdi.stale and any(vdi.owner(i) == 0 for i, *_ in parts):
            await self.refresh(vdi)  # another client may have written those holes
        calls = []
        for index, within, n, at in parts:
            view = buf[at : at + n]
            if vdi.owner(index) == 0:
                view[:] = bytes(n)
            else:
                calls.append(lambda i=index, w=within, v=view: self._read_piece(vdi, i, w, v))
        await run_all(calls)
        return length

    async def _read_piece(self, vdi: Vdi, index: int, within: int, view: memoryview) -> None:
        for attempt in (1, 2):
            owner = vdi.owner(index)
            if owner == 0:
                view[:] = bytes(len(view))
                return
            req = proto.obj_read(proto.doid(owner, index), within, len(view))
            reply = await self.client.call(req, into=view)
            if reply.ok:
                return
            if reply.result == Res.NO_OBJ and attempt == 1:
                await self.refresh(vdi)  # someone trimmed, deleted or snapshotted it
                continue
            raise proto.error_for("read", vdi.name, reply.result)

    async def write(self, vdi: Vdi, offset: int, parts: Sequence[Buffer]) -> None:
        """Write the concatenation of ``parts`` at ``offset`` (inside the VDI), without
        joining them. Pieces of one object go one after the other (on erasure-coded VDIs
        no two writes to one object may overlap in time, rule 13), objects at once."""
        if vdi.header.hyper:
            raise ReadOnly(
                "write", vdi.name, "hyper volumes are read-only through the sheep backend"
            )
        if offset + sum(len(p) for p in parts) > vdi.size:
            raise InvalidArgument("write", vdi.name, "Write past the end of the VDI")
        by_object: dict[int, list[tuple[int, memoryview]]] = {}
        pos = offset
        for part in parts:
            view = memoryview(part).cast("B")
            for index, within, n, at in pieces(vdi, pos, len(view)):
                by_object.setdefault(index, []).append((within, view[at : at + n]))
            pos += len(view)
        calls = [lambda i=i, ps=ps: self._write_object(vdi, i, ps) for i, ps in by_object.items()]
        await run_all(calls)

    async def _write_object(
        self, vdi: Vdi, index: int, parts: list[tuple[int, memoryview]]
    ) -> None:
        """The pieces of one object, one after the other; on an erasure-coded VDI also
        after any other call's write to that object (rule 13: the gateway's read-merge-write
        of the stripes at a write's ends loses one of two overlapping in time)."""
        if not vdi.header.copy_policy:
            for within, data in parts:
                await self._write_piece(vdi, index, within, data)
            return
        lock = vdi.object_locks.setdefault(index, trio.Lock())
        try:
            async with lock:
                for within, data in parts:
                    await self._write_piece(vdi, index, within, data)
        finally:
            if not lock.locked() and not lock.statistics().tasks_waiting:
                vdi.object_locks.pop(index, None)

    async def _write_piece(
        self, vdi: Vdi, index: int, within: int, data: memoryview, retried: bool = False
    ) -> None:
        await self._claim(vdi, index)
        if vdi.owner(index) == vdi.vid:
            await self._overwrite(vdi, index, within, data, retried)
            return
        done = vdi.allocating[index] = trio.Event()
        try:
            await self._allocate(vdi, index, within, data)
        except BackendError as e:
            self._unsettle(vdi, index, e)
            raise
        finally:
            del vdi.allocating[index]
            done.set()

    def _unsettle(self, vdi: Vdi, index: int, error: BackendError) -> None:
        """A create of object ``index`` failed with ``error``: if it may still run, a late
        one would replace what we write there next, so hold writes back (rule 22)."""
        if error.may_have_run:
            vdi.unsettled[index] = trio.current_time() + self.client.timeout

    async def _claim(self, vdi: Vdi, index: int) -> None:
        """Wait until object ``index`` may be written: no create of it in flight (rule 12)
        or perhaps still running (rule 22), no snapshot of ours under way (rule 15). After
        any wait look again: another writer may have taken the object meanwhile."""
        while True:
            pending = vdi.allocating.get(index)
            if pending is None:
                pending = vdi.frozen
            if pending is not None:
                await pending.wait()
            elif not await self._settled(vdi, index):
                return

    async def _settled(self, vdi: Vdi, index: int) -> bool:
        """Wait until a create of object ``index`` that was cut off can no longer land;
        True if that took a wait."""
        until = vdi.unsettled.get(index)
        if until is None:
            return False
        wait = until - trio.current_time()
        if wait <= 0:
            del vdi.unsettled[index]
            return False
        log.info(
            "%r: waiting %.0f s before writing object %d again: its create was cut off"
            " and may still run (rule 22)",
            vdi.name, wait, index,
        )  # fmt: skip
        await trio.sleep(wait)
        return True

    async def _overwrite(
        self, vdi: Vdi, index: int, within: int, data: memoryview, retried: bool
    ) -> None:
        """WRITE_OBJ to an object the VDI owns. READONLY: someone snapshotted the VDI, so
        repair and redo; NO_OBJ: someone trimmed the object (rule 34), so read the index
        again and redo, once."""
        vid = vdi.vid
        reply = await self.client.call(proto.obj_write(proto.doid(vid, index), within, data))
        if reply.ok:
            return
        if reply.result == Res.READONLY:
            await self.repair(vdi, vid)
        elif reply.result == Res.NO_OBJ and not retried:
            await self.refresh(vdi, "write")
        else:
            raise proto.error_for("write", vdi.name, reply.result)
        await self._write_piece(vdi, index, within, data, retried=True)

    async def _allocate(self, vdi: Vdi, index: int, within: int, data: memoryview) -> None:
        """CREATE_AND_WRITE_OBJ (from the parent's object if inherited), then publish; the
        caller holds the object. Again against the new vid after a READONLY, or when a
        repair moved the VDI on while the create was in flight (its index lacks it)."""
        while True:
            my, owner = vdi.vid, vdi.owner(index)
            if owner == my:  # only if a repair re-created it meanwhile
                req = proto.obj_write(proto.doid(my, index), within, data)
            else:
                cow = proto.doid(owner, index) if owner else 0
                req = proto.obj_create(proto.doid(my, index), within, data, cow_oid=cow)
            reply = await self.client.call(req, resend=owner == my)
            if reply.result == Res.READONLY:
                await self.repair(vdi, my)  # raises if there is no newer vid (rule 29)
                continue
            if not reply.ok:
                raise proto.error_for("write", vdi.name, reply.result)
            if owner != my and vdi.vid == my:
                await self._publish(vdi, index, my)
            if vdi.vid == my:
                return

    async def _publish(self, vdi: Vdi, index: int, vid: int) -> None:
        """Write entry ``index`` = ``vid`` into ``vid``'s index, only after its data is in
        (rule 14); the cache takes it only if ``vid`` is still the working VDI."""
        entry = struct.pack("<I", vid)
        req = proto.obj_write(proto.ioid(vid), INDEX_OFFSET + 4 * index, entry)
        reply = await self.client.call(req)
        if not reply.ok:
            raise proto.error_for("write", vdi.name, reply.result)
        if vdi.vid == vid:
            vdi.publish(index, vid)

    async def refresh(self, vdi: Vdi, op: str = "read") -> None:
        """Read the header and index again (same vid), keeping what our own writes publish
        meanwhile; nothing changes if a repair moved the VDI on meanwhile. NotFound if the
        vid is no longer this VDI (deleted, perhaps reused by another name)."""
        vid, seen = vdi.vid, {}
        vdi.watching.append(seen)
        try:
            header = await read_header(self.client, op, vid)
            if (header.name, header.create_time) != (vdi.name, vdi.header.create_time):
                raise NotFound(op, vdi.name, "deleted by another client (rule 32)")
            entries = await read_entries(self.client, op, header)
        finally:
            vdi.watching[:] = [w for w in vdi.watching if w is not seen]
        if vdi.vid != vid:
            return
        vdi.header, vdi.entries, vdi.loaded_at = header, entries, trio.current_time()
        for index, owner in seen.items():
            vdi.publish(index, owner)

    async def repair(self, vdi: Vdi, failed: int) -> None:
        """After READONLY under vid ``failed``: someone snapshotted the VDI. Move to the new
        working vid, and re-create the objects we published that the snapshot's race lost
        (P8). One repair at a time: a piece refused under a vid already left behind just
        redoes itself."""
        async with vdi.repairing:
            if vdi.vid != failed:
                return
            new = await find_vid(self.client, "write", vdi.name)
            if new is None or new == failed:  # rule 29: never loop
                raise BackendError("write", vdi.name, "the VDI is read-only and has no newer vid")
            log.info("%r was snapshotted by another client: writing to its new vid", vdi.name)
            header = await read_header(self.client, "write", new)
            entries = await read_entries(self.client, "write", header)
            cached = vdi.entries  # as published up to now: no wait from here to the swap
            vdi.header, vdi.entries, vdi.loaded_at = header, entries, trio.current_time()
            assert isinstance(cached, list)
            lost = [i for i, v in enumerate(cached) if v == failed and vdi.owner(i) != failed]
            for index in lost:
                vdi.publish(index, failed)  # read from there until it is re-created
            await self._recreate(vdi, failed, lost)

    async def _recreate(self, vdi: Vdi, old: int, lost: list[int]) -> None:
        """Copy each lost object of ``old`` whole into the working vid and publish it; other
        writes to those objects wait meanwhile (rule 12)."""
        held = {i: trio.Event() for i in lost if i not in vdi.allocating}
        vdi.allocating.update(held)
        try:
            for index in held:
                new = vdi.vid
                req = proto.obj_create(proto.doid(new, index), 0, b"", proto.doid(old, index))
                try:
                    reply = await self.client.call(req, resend=False)
                except BackendError as e:
                    self._unsettle(vdi, index, e)
                    raise
                if not reply.ok:
                    raise proto.error_for("write", vdi.name, reply.result)
                await self._publish(vdi, index, new)
        finally:
            for index, done in held.items():
                del vdi.allocating[index]
                done.set()

    @asynccontextmanager
    async def quiesced(self, vdi: Vdi) -> AsyncIterator[None]:
        """For a snapshot we take (rule 15): hold back new pieces of ``vdi`` and wait until
        every create+index pair in flight is done; the pieces go on when the block ends
        (switch ``vdi`` to the new working vid with :meth:`moved` inside it)."""
        while vdi.frozen is not None:
            await vdi.frozen.wait()
        gate = vdi.frozen = trio.Event()
        try:
            while vdi.allocating:
                await next(iter(vdi.allocating.values())).wait()
            yield
        finally:
            vdi.frozen = None
            gate.set()

    async def moved(self, vdi: Vdi, vid: int) -> None:
        """Our own snapshot made ``vid`` the working VDI; its index is a copy of ours."""
        vdi.header = await read_header(self.client, "snapshot", vid)
        vdi.loaded_at = trio.current_time()
