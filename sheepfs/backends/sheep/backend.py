"""The sheep backend: the Backend interface over the sheep wire protocol, no process per call.

Metadata follows docs/PROTOCOL.md's sequences: a listing is the in-use bitmap minus the
deleted one, and the inode headers of what is left read in parallel; a lookup is
GET_VDI_INFO and the header; create, resize, snapshot, clone and delete are the requests
dog sends, with the rules dog breaks kept (a hyper volume's delete is DEL_VDI alone; a
resize writes only the size). Data goes through :mod:`.data` with each VDI's index cached
(:mod:`.inode`).
"""

from __future__ import annotations

import contextlib
import logging
import struct
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager

import trio

from ... import buffers, errors
from ...errors import BackendError, Exists, InvalidArgument, NotFound, NotPermitted, TooLarge
from ..base import (
    MAX_HYPER_SIZE,
    MAX_OBJECTS,
    Backend,
    Buffer,
    FsStats,
    Hints,
    Layout,
    VdiInfo,
    check_name,
)
from . import proto
from .attrs import AttributeOps
from .client import SheepClient
from .cluster import ClusterInfo
from .data import DataPath
from .deletes import Deletes
from .extents import write_extents
from .holes import Holes
from .inode import Vdi, find_vid, load, read_entries, read_header
from .listing import list_vdis, nodes_recovering, stat_nodes, to_info
from .proto import INDEX_OFFSET, Op, Res
from .snapshots import SnapshotReads
from .stream import prefetch
from .structs import InodeHeader, ec_policy

log = logging.getLogger(__name__)


def _check_tag(op: str, name: bytes, tag: str) -> bytes:
    raw = tag.encode()
    if not raw or raw.isdigit() or len(raw) > 255 or b"\0" in raw:
        raise InvalidArgument(op, name, f"a snapshot tag is 1-255 bytes, not all digits: {tag!r}")
    return raw


class SheepBackend(AttributeOps, Backend):
    """A Sheepdog 1.0 cluster through its own protocol (see the module docstring)."""

    #: Calls are cheap: many may run at once, and a write-back run of many objects goes out
    #: as one call whose objects are written in parallel. A lookup is one request.
    hints = Hints(
        max_request=64 << 20,
        parallel_calls=32,
        serialize_first_writes=True,
        serialize_ec_writes=True,
        cheap_lookup=True,
        partial_reads=True,
        cheap_attrs=True,
    )

    def __init__(self, addresses: Sequence[tuple[str, int]], timeout: float = 60.0) -> None:
        self.addresses = list(addresses)
        self.timeout = timeout
        self._stack = contextlib.AsyncExitStack()
        self._client: SheepClient | None = None
        self._data: DataPath | None = None
        self._holes: Holes | None = None
        self._deletes = Deletes()  # those whose emptied inode is not checked yet
        self._vdis: dict[bytes, Vdi] = {}
        self._loading: dict[bytes, trio.Lock] = {}
        self._default_shift = 22
        self._defaults: ClusterInfo | None = None  # what open() probed
        self._snaps = SnapshotReads()

    @property
    def client(self) -> SheepClient:
        if self._client is None:
            raise BackendError("start", None, "the sheep backend is not open")
        return self._client

    @property
    def holes(self) -> Holes:
        if self._holes is None:
            raise BackendError("start", None, "the sheep backend is not open")
        return self._holes

    # -- lifecycle ---------------------------------------------------------------------------

    async def open(self) -> None:
        client = SheepClient(self.addresses, timeout=self.timeout)
        self._client = await self._stack.enter_async_context(client)
        defaults = self._defaults = await client.probe()
        self._default_shift = defaults.block_size_shift or 22
        self._data, self._holes = DataPath(client), Holes(client, defaults)
        host, port = client.address
        log.info(
            "cluster at %s:%d: running, %d nodes, epoch %d, %d copies%s, %d MiB objects",
            host, port, defaults.nr_nodes, defaults.epoch, defaults.copies,
            f" (erasure coded, policy {defaults.copy_policy:#x})" if defaults.copy_policy else "",
            (1 << self._default_shift) >> 20,
        )  # fmt: skip

    async def aclose(self) -> None:
        if self._client is not None and self._deletes:
            with trio.move_on_after(2 * self.timeout):
                await self._deletes.recheck(self._client)
        await self._stack.aclose()
        self._client = self._data = self._holes = None

    # -- the VDI cache -----------------------------------------------------------------------

    async def _find_vid(self, op: str, name: bytes, *tag_snapid: bytes | int) -> int | None:
        """``find_vid``, again after mending a hole a cut-off create of ours left (F24)."""
        return await self.holes.retried(name, lambda: find_vid(self.client, op, name, *tag_snapid))

    async def _vdi(self, op: str, name: bytes) -> Vdi:
        """The cached VDI ``name``, loaded (header and index) on first use."""
        check_name(op, name)
        vdi = self._vdis.get(name)
        if vdi is not None:
            return vdi
        lock = self._loading.setdefault(name, trio.Lock())
        async with lock:
            vdi = self._vdis.get(name)
            if vdi is None:
                vdi = await self.holes.retried(name, lambda: load(self.client, op, name))
                if vdi is None:
                    raise NotFound(op, name, "no such VDI (NO_VDI)")
                self._vdis[name] = vdi
        return vdi

    def _mark(self, name: bytes) -> tuple[int, int] | None:
        """The cached VDI's vid and publishes, taken before a listing or lookup reads."""
        vdi = self._vdis.get(name)
        return None if vdi is None else (vdi.vid, vdi.publishes)

    def _remember(self, name: bytes, fresh: Vdi, before: tuple[int, int] | None) -> None:
        """Keep what a listing or lookup read, unless the cached VDI changed since the read
        began (``before``): an object our writes allocated meanwhile would be forgotten, and
        its next write would make it again from zeros (found by scripts/soak). Nor while a
        write of ours is under way."""
        cached = self._vdis.get(name)
        if self._mark(name) != before or (cached is not None and cached.allocating):
            return
        if cached is None or cached.vid != fresh.vid:
            self._vdis[name] = fresh
        else:
            cached.header, cached.entries = fresh.header, fresh.entries
            cached.loaded_at = fresh.loaded_at

    # -- metadata ----------------------------------------------------------------------------

    async def list(self) -> dict[bytes, VdiInfo]:
        started, partial = trio.current_time(), None
        before = {name: self._mark(name) for name in self._vdis}
        try:
            found = await list_vdis(self.client)
            self._snaps.saw(found, started)
        except errors.PartialListing as e:
            found, partial = list(e.found.values()), e
        out = {}
        for vdi in found:
            if not vdi.header.is_snapshot:
                self._remember(vdi.name, vdi, before.get(vdi.name))
                out[vdi.name] = to_info(vdi.name, vdi)
        if partial is not None:  # what it lacks may be there all the same
            raise errors.PartialListing("list", out, partial.detail)
        self._forget_unlisted(out)
        await self._deletes.recheck(self.client)
        return out

    def _forget_unlisted(self, listed: dict[bytes, VdiInfo]) -> None:
        """Drop cached VDIs the listing no longer shows: deleted by someone else, their vid
        may be reused by another name (rule 32). Not one with a write of ours under way."""
        for name, vdi in list(self._vdis.items()):
            if name not in listed and not vdi.allocating and not vdi.unsettled:
                del self._vdis[name]

    async def lookup(self, name: bytes) -> VdiInfo | None:
        check_name("lookup", name)
        await self._deletes.recheck(self.client, name)  # before it may be found again
        before = self._mark(name)
        vdi = await self.holes.retried(name, lambda: load(self.client, "lookup", name))
        if vdi is None:
            self._vdis.pop(name, None)
            return None
        self._remember(name, vdi, before)
        return to_info(name, vdi)

    async def create(self, name: bytes, size: int, layout: Layout | None = None) -> None:
        check_name("create", name)
        await self._deletes.recheck(self.client, name)
        shift = layout.block_size_shift if layout else 0
        if shift and not 20 <= shift <= 31:  # the sheep shifts by it unchecked (rule 11)
            raise InvalidArgument("create", name, f"object size 2^{shift}: only 2^20..2^31")
        limit = (1 << (shift or self._default_shift)) * MAX_OBJECTS
        if size > limit:
            raise TooLarge("create", name, f"VDI size is larger than {limit} bytes")
        copies, policy = 0, 0
        if layout is not None and layout.copies:
            copies = layout.copies + layout.parity
            policy = ec_policy(layout.copies, layout.parity) if layout.parity else 0
        reply = await self.holes.new_vdi(
            name, vdi_size=size, copies=copies, copy_policy=policy, block_size_shift=shift
        )
        if reply.result == Res.VDI_EXIST:
            raise Exists("create", name, "VDI exists already")
        proto.checked("create", name, reply)
        self._vdis.pop(name, None)

    async def delete(self, name: bytes) -> None:
        """Zero the index, then DEL_VDI; a hyper volume: DEL_VDI alone (P3)."""
        check_name("delete", name)
        vid = await self._find_vid("delete", name)
        if vid is None:
            raise NotFound("delete", name, "no such VDI (NO_VDI)")
        await self._delete_vid(name, b"", vid)
        self._vdis.pop(name, None)

    async def _delete_vid(self, name: bytes, tag: bytes, vid: int, snapid: int = 0) -> None:
        header = await read_header(self.client, "delete", vid)
        if not header.hyper:
            await self._zero_index(name, vid, await read_entries(self.client, "delete", header))
        req = proto.vdi_request(Op.DEL_VDI, name, tag, snapid)
        reply = proto.checked("delete", name, await self.client.call(req, resend=False))
        if reply.vdi_id != vid:
            log.warning("delete %r: deleted vid %#x, not %#x (changed meanwhile)", name,
                        reply.vdi_id, vid)  # fmt: skip
        await self._deletes.finish(self.client, name, reply.vdi_id, header.create_time)

    async def _zero_index(self, name: bytes, vid: int, entries: Sequence[int] | dict) -> None:
        """Zero every run of non-zero index entries (only entries that change, rule 14)."""
        assert isinstance(entries, list)
        i = 0
        while i < len(entries):
            if not entries[i]:
                i += 1
                continue
            j = i
            while j < len(entries) and entries[j] and j - i < 128:
                j += 1
            zeros = bytes(4 * (j - i))
            req = proto.obj_write(proto.ioid(vid), INDEX_OFFSET + 4 * i, zeros)
            proto.checked("delete", name, await self.client.call(req))
            i = j

    async def resize(self, name: bytes, size: int) -> None:
        """Grow by writing the 8-byte size alone, to the vid looked up just now (P3)."""
        check_name("resize", name)
        vid = await self._find_vid("resize", name)
        if vid is None:
            raise NotFound("resize", name, "no such VDI (NO_VDI)")
        header = await read_header(self.client, "resize", vid)
        limit = MAX_HYPER_SIZE if header.hyper else header.object_size * MAX_OBJECTS
        if size < header.vdi_size:
            raise InvalidArgument("resize", name, "Shrinking VDIs is not implemented")
        if size > limit:
            raise TooLarge("resize", name, f"This volume's max size is {limit}")
        req = proto.obj_write(proto.ioid(vid), 536, struct.pack("<Q", size))
        proto.checked("resize", name, await self.client.call(req))
        cached = self._vdis.get(name)
        if cached is not None and cached.vid == vid:
            cached.header = await read_header(self.client, "resize", vid)

    async def statfs(self) -> FsStats:
        assert self._defaults is not None
        return await stat_nodes(self.client, self.timeout, self._defaults)

    async def recovering(self) -> bool:
        return await nodes_recovering(self.client, self.timeout)

    async def snapshot(self, name: bytes, tag: str) -> None:
        check_name("snapshot", name)
        raw = _check_tag("snapshot", name, tag)
        if await self._find_vid("snapshot", name, raw) is not None:
            raise Exists("snapshot", name, f"tag {tag} is existed")
        vid = await self._find_vid("snapshot", name)
        if vid is None:
            raise NotFound("snapshot", name, "no such VDI (NO_VDI)")
        h = await read_header(self.client, "snapshot", vid)
        if h.hyper:
            raise NotPermitted("snapshot", name, "snapshot of hypervolume is not supported")
        vdi = self._vdis.get(name)
        try:
            if vdi is None or vdi.vid != vid or self._data is None:
                await self._snapshot_vid(name, raw, vid, h)
                self._vdis.pop(name, None)
            else:
                async with self._data.quiesced(vdi):  # no create+index pair may race (15)
                    await self._data.moved(vdi, await self._snapshot_vid(name, raw, vid, h))
        finally:  # a snapshot cut off may have landed: the next look is a fresh one
            self._snaps.forget(name)

    async def _snapshot_vid(self, name: bytes, raw: bytes, vid: int, h: InodeHeader) -> int:
        """Tag working vid ``vid`` and make a new working VDI on it; the new vid."""
        req = proto.obj_write(proto.ioid(vid), 256, proto.pad(raw))
        proto.checked("snapshot", name, await self.client.call(req))
        reply = await self.holes.new_vdi(name, snapid=1, base_vdi_id=vid, **h.like())
        return proto.checked("snapshot", name, reply).vdi_id

    async def clone(self, name: bytes, tag: str, new_name: bytes) -> None:
        check_name("clone", name)
        check_name("clone", new_name)
        base = await self._find_vid("clone", name, _check_tag("clone", name, tag))
        if base is None:
            raise NotFound("clone", name, f"Failed to find requested tag {tag}")
        h = await read_header(self.client, "clone", base)
        if not h.is_snapshot:
            raise InvalidArgument("clone", name, "only a snapshot can be cloned")
        reply = await self.holes.new_vdi(new_name, base_vdi_id=base, **h.like())
        if reply.result == Res.VDI_EXIST:
            raise Exists("clone", new_name, "VDI exists already")
        proto.checked("clone", new_name, reply)

    async def delete_snapshot(self, name: bytes, tag: str) -> None:
        check_name("delete snapshot", name)
        snapid = int(tag) if tag.isdigit() else 0  # as dog reads -s: digits are an id
        raw = b"" if snapid else _check_tag("delete snapshot", name, tag)
        vid = await self._find_vid("delete snapshot", name, raw, snapid)
        if vid is None:
            raise NotFound("delete snapshot", name, f"Failed to find requested tag {tag}")
        await self._delete_vid(name, raw, vid, snapid)
        self._snaps.forget(name)

    async def snapshots(self, name: bytes) -> list[VdiInfo]:
        check_name("snapshots", name)
        return await self._snaps.of(self.client, name)

    async def read_snapshot(self, name: bytes, snapshot_id: int, offset: int, length: int):
        check_name("read", name)
        assert self._data is not None
        return await self._snaps.read(self._data, name, snapshot_id, offset, length)

    # -- data --------------------------------------------------------------------------------

    async def _covering(self, op: str, name: bytes, end: int) -> Vdi:
        """The VDI, read again if the range passes its cached end (someone grew it)."""
        vdi = await self._vdi(op, name)
        if end > vdi.size and self._data is not None:
            await self._data.refresh(vdi)
        return vdi

    async def read(self, name: bytes, offset: int, length: int) -> bytes | bytearray:
        buf = buffers.take(length) if length >= 1 << 20 else bytearray(length)
        n = await self.read_into(name, offset, memoryview(buf))
        return buf if n == length else buf[:n]

    @contextlib.contextmanager
    def _forgotten_if_gone(self, name: bytes) -> Iterator[None]:
        """A VDI found gone is not served from the cache again: its vid may belong to
        another VDI by now (rule 32)."""
        try:
            yield
        except NotFound:
            self._vdis.pop(name, None)
            raise

    async def read_into(self, name: bytes, offset: int, buf: memoryview) -> int:
        with self._forgotten_if_gone(name):
            vdi = await self._covering("read", name, offset + len(buf))
            if offset > vdi.size:
                raise InvalidArgument("read", name, "Read offset is beyond the end of the VDI")
            assert self._data is not None
            return await self._data.read_into(vdi, offset, buf)

    @asynccontextmanager
    async def read_stream(
        self, name: bytes, offset: int, length: int, piece_size: int = 1 << 22
    ) -> AsyncIterator[AsyncIterator[bytes | bytearray]]:
        """Several pieces read ahead at once, handed over in order."""
        async with prefetch(self.read, name, offset, length, piece_size) as pieces:
            yield pieces

    async def write_extents(self, name: bytes, fd: int, extents: Sequence[tuple[int, int]]) -> int:
        """A spool file's extents, many objects at once (``DataPath.write``)."""
        return await write_extents(lambda pos, d: self.write_parts(name, pos, [d]), fd, extents)

    async def write_parts(self, name: bytes, offset: int, parts: Sequence[Buffer]) -> None:
        length = sum(len(p) for p in parts)
        if not length:
            return
        with self._forgotten_if_gone(name):
            vdi = await self._covering("write", name, offset + length)
            assert self._data is not None
            await self._data.write(vdi, offset, parts)
