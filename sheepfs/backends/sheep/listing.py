"""Listing VDIs and the cluster's space over the wire (docs/PROTOCOL.md P2, P9).

``dog vdi list`` reads every whole inode (12.6 MB each); this reads the in-use and deleted
bitmaps, then only the header and index of each live vid, many at once.
"""

from __future__ import annotations

import logging
import struct

import trio

from ...errors import BackendError, PartialListing
from ..base import FsStats, Layout, VdiInfo, VdiKind
from . import proto
from .client import SheepClient
from .cluster import ClusterInfo
from .data import run_all
from .inode import Vdi, read_entries
from .proto import INODE_HEADER_SIZE, NODE_LIST_SIZE, VDI_BITMAP_SIZE, Op, Reply
from .structs import InodeHeader, bits, node_addresses

log = logging.getLogger(__name__)

#: Large indexes read at once while listing.
AT_ONCE = 32
#: Index entries read with the header in the same request (VDIs up to 4 GiB at 4 MiB
#: objects need no second request).
WITH_HEADER = 1024


def to_info(name: bytes, vdi: Vdi) -> VdiInfo:
    h = vdi.header
    data, parity = h.data_parity
    kind = VdiKind.SNAPSHOT if h.is_snapshot else VdiKind.CLONE if h.is_clone else VdiKind.WORKING
    return VdiInfo(
        name=name,
        size=h.vdi_size,
        used=vdi.used(),
        ctime=h.create_time >> 32,
        kind=kind,
        layout=Layout(h.block_size_shift, data, parity),
        snapshot_id=h.snap_id if h.is_snapshot else 0,
        tag=h.tag,
        ctime_ns=(h.create_time >> 32) * 1_000_000_000 + (h.create_time & 0xFFFFFFFF),
    )


async def live_vids(client: SheepClient) -> list[int]:
    """Vids in use and not deleted (a delete that kept its inode is only in the second)."""
    reads = [
        proto.plain(Op.READ_VDIS, VDI_BITMAP_SIZE),
        proto.plain(Op.READ_DEL_VDIS, VDI_BITMAP_SIZE),
    ]
    in_use, deleted = (proto.checked("list", None, r) for r in await client.call_many(reads))
    gone = deleted.payload
    return [v for v in bits(in_use.payload) if not gone[v >> 3] >> (v & 7) & 1]


def _inode_of(vid: int, reply: Reply) -> Vdi | InodeHeader | None:
    """The VDI a header-and-index read shows; its header alone when the index did not fit
    in the read (hyper volumes, more than WITH_HEADER objects); None for no VDI to show."""
    if reply.result == proto.Res.NO_OBJ:
        return None  # half made: its vid taken, its inode never written
    proto.checked("list", None, reply)  # unreadable now (a node down, recovering)
    header = InodeHeader.parse(reply.payload)
    if not header.name:
        return None  # deleted: its name is zeroed
    if header.hyper or header.objects > WITH_HEADER:
        return header
    entries = list(struct.unpack_from(f"<{header.objects}I", reply.payload, INODE_HEADER_SIZE))
    return Vdi(header.name, header, entries, trio.current_time())


async def list_vdis(client: SheepClient) -> list[Vdi]:
    """Every live VDI, snapshots included, with its header and index: the header and a
    small index of every vid in one request each, all pipelined (reading both at once is
    safe, only writing them together is not); a large index in a second read.
    PartialListing (its ``found`` by vid) where a header could not be read."""
    vids = await live_vids(client)
    length = INODE_HEADER_SIZE + 4 * WITH_HEADER
    replies = await client.call_many([proto.obj_read(proto.ioid(v), 0, length) for v in vids])
    found: list[Vdi] = []
    large: list[InodeHeader] = []
    unreadable: list[str] = []
    for vid, reply in zip(vids, replies, strict=True):
        try:
            got = _inode_of(vid, reply)
        except BackendError as e:
            unreadable.append(f"vid {vid:#x}: {e.detail}")
            continue
        if isinstance(got, Vdi):
            found.append(got)
        elif got is not None:
            large.append(got)

    async def whole(header: InodeHeader) -> None:
        try:
            entries = await read_entries(client, "list", header)
        except BackendError as e:  # one bad index must not hide every other VDI
            log.warning("listing: %s; %r is shown with nothing used", e, header.name)
            entries = {} if header.hyper else []
        found.append(Vdi(header.name, header, entries, trio.current_time()))

    await run_all([lambda h=h: whole(h) for h in large], AT_ONCE)
    found.sort(key=lambda v: v.vid)
    if unreadable:  # a name it lacks may be one of these (docs/SHEEPDOG.md F21)
        why = f"{len(unreadable)} VDI(s) could not be read ({unreadable[0]})"
        raise PartialListing("list", {v.vid: v for v in found}, why)
    return found


async def _ask_every_node(
    client: SheepClient, op: str, req: proto.Request, timeout: float
) -> list[proto.Reply]:
    """``req`` sent to each node of the cluster (GET_NODE_LIST) on a connection of its
    own, and the SUCCESS replies; a node that does not answer is passed by."""
    nodes = proto.checked(
        op, None, await client.call(proto.plain(Op.GET_NODE_LIST, NODE_LIST_SIZE))
    )
    replies = []
    for address in node_addresses(nodes.payload[: nodes.nr_nodes * proto.NODE_SIZE],
                                  nodes.nr_nodes):  # fmt: skip
        try:
            async with SheepClient([address], timeout=timeout) as node:
                replies.append(proto.checked(op, None, await node.call(req)))
        except BackendError as e:
            log.debug("%s: node %s:%d does not answer: %s", op, *address, e)
    return replies


async def nodes_recovering(client: SheepClient, timeout: float) -> bool:
    """Whether a node answers STAT_RECOVERY with ``in_recovery`` set, as ``dog node
    recovery`` asks them: every node recovers after a node came or went, each at its pace."""
    req = proto.plain(Op.STAT_RECOVERY, proto.RECOVERY_STATE_SIZE)
    replies = await _ask_every_node(client, "recovery", req, timeout)
    return any(r.payload[:1] not in (b"", b"\0") for r in replies)


async def stat_nodes(client: SheepClient, timeout: float, defaults: ClusterInfo) -> FsStats:
    """Space a user can fill: the nodes' raw totals divided by the copies each byte takes
    (``copies``, or ``(d + p) / d`` for erasure coding), as ``df`` should show it."""
    replies = await _ask_every_node(client, "statfs", proto.plain(Op.STAT_SHEEP), timeout)
    total = sum(r.store_size for r in replies)
    free = sum(r.store_free for r in replies)
    if defaults.copy_policy:
        data, parity = (defaults.copy_policy >> 4) * 2, defaults.copy_policy & 0x0F
        share = (data + parity) / data
    else:
        share = max(1, defaults.copies)
    return FsStats(
        total=int(total / share), used=int((total - free) / share), avail=int(free / share)
    )
