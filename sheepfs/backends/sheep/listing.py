"""Listing VDIs and the cluster's space over the wire (docs/PROTOCOL.md P2, P9).

``dog vdi list`` reads every whole inode (12.6 MB each); this reads the in-use and deleted
bitmaps, then only the header and index of each live vid, many at once.
"""

from __future__ import annotations

import logging
import struct

import trio

from ...errors import BackendError
from ..base import FsStats
from . import proto
from .client import ClusterInfo, SheepClient
from .data import run_all
from .inode import Vdi, read_entries
from .proto import INODE_HEADER_SIZE, NODE_LIST_SIZE, VDI_BITMAP_SIZE, Op
from .structs import InodeHeader, bits, node_addresses

log = logging.getLogger(__name__)

#: Inodes read at once while listing.
AT_ONCE = 32
#: Index entries read with the header in the same request (VDIs up to 4 GiB at 4 MiB
#: objects need no second request).
WITH_HEADER = 1024


async def live_vids(client: SheepClient) -> list[int]:
    """Vids in use and not deleted (a delete that kept its inode is only in the second)."""
    in_use = proto.checked(
        "list", None, await client.call(proto.plain(Op.READ_VDIS, VDI_BITMAP_SIZE))
    )
    deleted = proto.checked(
        "list", None, await client.call(proto.plain(Op.READ_DEL_VDIS, VDI_BITMAP_SIZE))
    )
    gone = set(bits(deleted.payload))
    return [v for v in bits(in_use.payload) if v not in gone]


async def _read_inode(client: SheepClient, vid: int) -> Vdi | None:
    """The header and index of ``vid`` (a small index in the same request: reading both
    at once is safe, only writing them together is not); None for no VDI to show."""
    length = INODE_HEADER_SIZE + 4 * WITH_HEADER
    reply = await client.call(proto.obj_read(proto.ioid(vid), 0, length))
    if not reply.ok:
        return None  # half made or gone
    header = InodeHeader.parse(reply.payload)
    if not header.name:
        return None  # deleted: its name is zeroed
    if header.hyper or header.objects > WITH_HEADER:
        entries = await read_entries(client, "list", header)
    else:
        n = header.objects
        entries = list(struct.unpack_from(f"<{n}I", reply.payload, INODE_HEADER_SIZE))
    return Vdi(header.name, header, entries, trio.current_time())


async def list_vdis(client: SheepClient) -> list[Vdi]:
    """Every live VDI, snapshots included, with its header and index."""
    vids = await live_vids(client)
    found: list[Vdi] = []

    async def one(vid: int) -> None:
        vdi = await _read_inode(client, vid)
        if vdi is not None:
            found.append(vdi)

    await run_all([lambda v=v: one(v) for v in vids], AT_ONCE)
    found.sort(key=lambda v: v.vid)
    return found


async def stat_nodes(client: SheepClient, timeout: float, defaults: ClusterInfo) -> FsStats:
    """Space a user can fill: the nodes' raw totals divided by the copies each byte takes
    (``copies``, or ``(d + p) / d`` for erasure coding), as ``df`` should show it."""
    nodes = proto.checked(
        "statfs", None, await client.call(proto.plain(Op.GET_NODE_LIST, NODE_LIST_SIZE))
    )
    addresses = node_addresses(nodes.payload[: nodes.nr_nodes * proto.NODE_SIZE],
                                     nodes.nr_nodes)  # fmt: skip
    total = free = 0
    for address in addresses:
        try:
            async with SheepClient([address], timeout=timeout) as node:
                reply = proto.checked("statfs", None, await node.call(proto.plain(Op.STAT_SHEEP)))
        except BackendError as e:
            log.debug("statfs: node %s:%d does not answer: %s", *address, e)
            continue
        total += reply.store_size
        free += reply.store_free
    if defaults.copy_policy:
        data, parity = (defaults.copy_policy >> 4) * 2, defaults.copy_policy & 0x0F
        share = (data + parity) / data
    else:
        share = max(1, defaults.copies)
    return FsStats(
        total=int(total / share), used=int((total - free) / share), avail=int(free / share)
    )
