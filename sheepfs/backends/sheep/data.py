"""Reading and writing a VDI's bytes object by object (docs/PROTOCOL.md P5-P8).

A read is cut at object boundaries; a hole (index entry 0) reads as zeros with no request,
any other entry is read from that vid's object, so a clone or snapshot's inherited data
needs no walk up its parents. A write to an object the VDI owns is a WRITE_OBJ; to a hole
or an inherited object it is a CREATE_AND_WRITE_OBJ (copy-on-write from the parent's
object) followed by the index entry, at most one per object in flight, and later writes to
that object wait for it. Pieces of one call to different objects run at once.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Awaitable, Callable, Sequence

import trio

from ...errors import BackendError, InvalidArgument, ReadOnly
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
        for within, data in parts:
            await self._write_piece(vdi, index, within, data)

    async def _write_piece(self, vdi: Vdi, index: int, within: int, data: memoryview) -> None:
        while True:
            pending = vdi.allocating.get(index)
            if pending is None:
                break
            await pending.wait()  # one allocating write per object in flight (rule 12)
        await self._settled(vdi, index)
        owner = vdi.owner(index)
        if owner == vdi.vid:
            if not await self._write_in_place(vdi, index, within, data):
                await self.repair(vdi)
                await self._write_piece(vdi, index, within, data)
            return
        done = vdi.allocating[index] = trio.Event()
        try:
            await self._allocate(vdi, index, within, data, owner)
        except BackendError as e:
            if e.may_have_run:  # a late create would replace what we write next (rule 22)
                vdi.unsettled[index] = trio.current_time() + self.client.timeout
            raise
        finally:
            del vdi.allocating[index]
            done.set()

    async def _settled(self, vdi: Vdi, index: int) -> None:
        """Wait until a create of object ``index`` that was cut off can no longer land."""
        until = vdi.unsettled.get(index)
        if until is None:
            return
        wait = until - trio.current_time()
        if wait > 0:
            log.info(
                "%r: waiting %.0f s before writing object %d again: its create was cut off"
                " and may still run (rule 22)",
                vdi.name, wait, index,
            )  # fmt: skip
            await trio.sleep(wait)
        vdi.unsettled.pop(index, None)

    async def _allocate(
        self, vdi: Vdi, index: int, within: int, data: memoryview, owner: int
    ) -> None:
        """CREATE_AND_WRITE_OBJ (from the parent's object if inherited), then publish."""
        my = vdi.vid
        cow = proto.doid(owner, index) if owner else 0
        req = proto.obj_create(proto.doid(my, index), within, data, cow_oid=cow)
        reply = await self.client.call(req, resend=False)
        if reply.result == Res.READONLY:
            await self.repair(vdi)
            return await self._write_piece_after_repair(vdi, index, within, data)
        if not reply.ok:
            raise proto.error_for("write", vdi.name, reply.result)
        await self._publish(vdi, index, my)

    async def _write_piece_after_repair(
        self, vdi: Vdi, index: int, within: int, data: memoryview
    ) -> None:
        owner = vdi.owner(index)
        if owner == vdi.vid:
            if not await self._write_in_place(vdi, index, within, data):
                raise proto.error_for("write", vdi.name, Res.READONLY)  # read-only again
            return
        await self._allocate(vdi, index, within, data, owner)

    async def _write_in_place(self, vdi: Vdi, index: int, within: int, data: memoryview) -> bool:
        """WRITE_OBJ to an object the VDI owns; False if it answered READONLY."""
        req = proto.obj_write(proto.doid(vdi.vid, index), within, data)
        reply = await self.client.call(req)
        if reply.result == Res.READONLY:
            return False
        proto.checked("write", vdi.name, reply)
        return True

    async def _publish(self, vdi: Vdi, index: int, vid: int) -> None:
        """Write index entry ``index`` = ``vid``, only after its data is in (rule 14)."""
        entry = struct.pack("<I", vid)
        req = proto.obj_write(proto.ioid(vdi.vid), INDEX_OFFSET + 4 * index, entry)
        reply = await self.client.call(req)
        if not reply.ok:
            raise proto.error_for("write", vdi.name, reply.result)
        vdi.publish(index, vid)

    async def refresh(self, vdi: Vdi) -> None:
        """Read the header and index again (same vid)."""
        vdi.header = await read_header(self.client, "read", vdi.vid)
        vdi.entries = await read_entries(self.client, "read", vdi.header)
        vdi.loaded_at = trio.current_time()

    async def repair(self, vdi: Vdi) -> None:
        """After READONLY: someone snapshotted the VDI. Move to the new working vid, and
        re-create the objects we published that the snapshot's race lost (P8)."""
        old, cached = vdi.vid, vdi.entries
        new = await find_vid(self.client, "write", vdi.name)
        if new is None or new == old:
            raise BackendError("write", vdi.name, "the VDI is read-only and has no newer vid")
        log.info("%r was snapshotted by another client: writing to its new vid", vdi.name)
        header = await read_header(self.client, "write", new)
        entries = await read_entries(self.client, "write", header)
        vdi.header, vdi.entries, vdi.loaded_at = header, entries, trio.current_time()
        assert isinstance(cached, list)
        lost = [i for i, v in enumerate(cached) if v == old and vdi.owner(i) != old]
        for index in lost:
            req = proto.obj_create(proto.doid(new, index), 0, b"", cow_oid=proto.doid(old, index))
            reply = await self.client.call(req, resend=False)
            if not reply.ok:
                raise proto.error_for("write", vdi.name, reply.result)
            await self._publish(vdi, index, new)
