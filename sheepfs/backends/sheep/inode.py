"""Inodes over the wire: looking a VDI up, reading its header and its index.

A VDI's inode is 12.6 MB, but a client needs only the 4,664-byte header and the index
entries that matter (4 bytes per object of ``vdi_size``), so those are read once per open
and kept (docs/PROTOCOL.md P4), and read again when they may be stale: after a READONLY
reply (someone snapshotted the VDI), after NO_OBJ for an object the index names, or when
a hole is read long after the index was (another client may have written it).
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass, field

import trio

from ...errors import BackendError
from . import proto
from .client import SheepClient
from .proto import INDEX_OFFSET, INODE_HEADER_SIZE, Op, Res
from .structs import InodeHeader

log = logging.getLogger(__name__)

#: Seconds a cached index is trusted for holes: past that, a hole is read again first.
INDEX_TTL = 1.0
_BTREE_MAGIC = 0x6274


@dataclass
class Vdi:
    """One VDI as the backend knows it: header, index, and the creates in flight."""

    name: bytes
    header: InodeHeader
    entries: dict[int, int] | list[int]  # object index -> owning vid (list: flat VDIs)
    loaded_at: float = 0.0
    #: Objects whose allocating write (CREATE_AND_WRITE_OBJ + index) is under way.
    allocating: dict[int, trio.Event] = field(default_factory=dict)
    #: Objects whose create was cut off (timed out, or its connection broke) and may still
    #: run, by when it must have (rule 22): no other write goes to them before that.
    unsettled: dict[int, float] = field(default_factory=dict)
    #: Erasure-coded VDIs only: held around every write to an object, so that no two are
    #: in flight to one object, whichever call they come from (rule 13).
    object_locks: dict[int, trio.Lock] = field(default_factory=dict)
    #: Held by the one READONLY repair at a time (the others wait, then redo their piece).
    repairing: trio.Lock = field(default_factory=trio.Lock)
    #: Index entries published by our writes so far: a read of the index that began before
    #: one of them must not replace ``entries`` (see SheepBackend._remember).
    publishes: int = 0
    #: Set while a snapshot we take is under way: no new piece starts (rule 15).
    frozen: trio.Event | None = None
    #: Entries published while an index read is under way, one dict per read: the read
    #: may have missed them, so they are kept over what it read.
    watching: list[dict[int, int]] = field(default_factory=list)

    @property
    def vid(self) -> int:
        return self.header.vdi_id

    @property
    def object_size(self) -> int:
        return self.header.object_size

    @property
    def size(self) -> int:
        return self.header.vdi_size

    def owner(self, index: int) -> int:
        """The vid whose object ``index`` holds this VDI's bytes there (0: a hole)."""
        if isinstance(self.entries, list):
            return self.entries[index] if index < len(self.entries) else 0
        return self.entries.get(index, 0)

    def publish(self, index: int, vid: int) -> None:
        assert isinstance(self.entries, list)
        if index >= len(self.entries):
            self.entries.extend([0] * (index + 1 - len(self.entries)))
        self.entries[index] = vid
        self.publishes += 1
        for seen in self.watching:
            seen[index] = vid

    @property
    def stale(self) -> bool:
        return trio.current_time() - self.loaded_at > INDEX_TTL

    def used(self) -> int:
        """Bytes of the objects this VDI owns (not those it shares with a parent)."""
        values = self.entries if isinstance(self.entries, list) else self.entries.values()
        return sum(1 for v in values if v == self.vid) * self.object_size


async def find_vid(
    client: SheepClient, op: str, name: bytes, tag: bytes = b"", snapid: int = 0
) -> int | None:
    """The vid of working VDI ``name`` (or of its snapshot ``tag``/``snapid``); None if
    there is none (NO_VDI, or NO_TAG for a snapshot)."""
    reply = await client.call(proto.vdi_request(Op.GET_VDI_INFO, name, tag, snapid))
    if reply.result in (Res.NO_VDI, Res.NO_TAG):
        return None
    return proto.checked(op, name, reply).vdi_id


async def read_header(client: SheepClient, op: str, vid: int) -> InodeHeader:
    reply = await client.call(proto.obj_read(proto.ioid(vid), 0, INODE_HEADER_SIZE))
    return InodeHeader.parse(proto.checked(op, None, reply).payload)


async def finish_delete(client: SheepClient, name: bytes, vid: int, create_time: int) -> None:
    """After DEL_VDI of ``vid`` answered SUCCESS: check that its inode lost its name, and
    take it away here if not. The sheep does not check its write of the emptied inode
    (``sheep/vdi.c:delete_vdi_work``); lost (nodes going down), the VDI stays found by
    name, blocks a new VDI of it, and is listed again after the next cluster start, which
    takes a vid for deleted only where the inode's name is empty (docs/SHEEPDOG.md F23).
    Only this vid's name is written, so a VDI made since under the name is not touched."""
    try:
        reply = await client.call(proto.obj_read(proto.ioid(vid), 0, INODE_HEADER_SIZE))
        if reply.result == Res.NO_OBJ:
            return  # no inode: nothing that could come back
        header = InodeHeader.parse(proto.checked("delete", name, reply).payload)
        if not header.name or header.create_time != create_time:
            return
        log.warning("delete %r: the sheep kept its inode's name (vid %#x): emptying it", name, vid)
        reply = await client.call(proto.obj_write(proto.ioid(vid), 0, bytes(proto.NAME_SIZE)))
        proto.checked("delete", name, reply)
    except BackendError as e:
        raise BackendError(
            "delete",
            name,
            f"Sheepdog took the delete, but the emptied inode could not be checked ({e.detail});"
            " the VDI may come back when the cluster next starts",
        ) from e


async def read_entries(
    client: SheepClient, op: str, header: InodeHeader
) -> dict[int, int] | list[int]:
    """The index: a list for a flat VDI, a dict of the allocated entries for a hyper
    volume (whose index is a B-tree of depth 1 or 2; any other depth is corruption)."""
    if header.hyper:
        return await _read_btree(client, op, header)
    count = min(header.objects, proto.MAX_INDEX)
    entries: list[int] = []
    step = 1 << 20  # entries per request: 4 MiB, the most a request should carry
    for first in range(0, count, step):
        n = min(step, count - first)
        req = proto.obj_read(proto.ioid(header.vdi_id), INDEX_OFFSET + 4 * first, 4 * n)
        data = proto.checked(op, header.name, await client.call(req)).payload
        entries.extend(struct.unpack_from(f"<{n}I", data))
    return entries


async def _read_btree(client: SheepClient, op: str, header: InodeHeader) -> dict[int, int]:
    oid = proto.ioid(header.vdi_id)
    root = proto.checked(op, header.name, await client.call(proto.obj_read(oid, INDEX_OFFSET, 8)))
    magic, depth, count = struct.unpack_from("<HHI", root.payload)
    if magic != _BTREE_MAGIC and (magic, depth, count) != (0, 0, 0):
        raise BackendError(op, header.name, f"corrupt hyper volume index (magic {magic:#x})")
    if magic and depth not in (1, 2):  # rule 35: whatever the entry count
        raise BackendError(op, header.name, f"corrupt hyper volume index (depth {depth})")
    if count == 0:
        return {}
    if depth == 1:
        return await _read_leaf(client, op, header.name, oid, INDEX_OFFSET + 8, count)
    req = proto.obj_read(oid, INDEX_OFFSET + 8, 16 * count)
    data = proto.checked(op, header.name, await client.call(req)).payload
    entries: dict[int, int] = {}
    for k in range(count):
        _, _, node = struct.unpack_from("<IIQ", data, 16 * k)
        head = proto.checked(op, header.name, await client.call(proto.obj_read(node, 0, 8)))
        _, _, n = struct.unpack_from("<HHI", head.payload)
        entries.update(await _read_leaf(client, op, header.name, node, 8, n))
    return entries


async def _read_leaf(
    client: SheepClient, op: str, name: bytes, oid: int, offset: int, count: int
) -> dict[int, int]:
    if not count:
        return {}
    data = proto.checked(
        op, name, await client.call(proto.obj_read(oid, offset, 8 * count))
    ).payload
    pairs = struct.unpack_from(f"<{2 * count}I", data)
    return {pairs[k]: pairs[k + 1] for k in range(0, len(pairs), 2) if pairs[k + 1]}


async def load(client: SheepClient, op: str, name: bytes, vid: int | None = None) -> Vdi | None:
    """The VDI ``name`` with its header and index (looked up unless ``vid`` is given)."""
    if vid is None:
        vid = await find_vid(client, op, name)
        if vid is None:
            return None
    header = await read_header(client, op, vid)
    entries = await read_entries(client, op, header)
    return Vdi(name, header, entries, trio.current_time())
