"""Vids a cut-off NEW_VDI left without an inode, mended (docs/SHEEPDOG.md F24).

A NEW_VDI first gives its vid a state on every node (``notify_vdi_add``), then its gateway
writes the inode, and only then is the vid marked in use (``sheep/vdi.c:vdi_create``). A
gateway that dies between the two leaves a state without an inode. The next node to join
marks every vid that has a state in use, and from then on every lookup of a name of that
hash chain reads the missing inode and fails with NO_OBJ (``fill_vdi_info_range``): the
names are unreachable, their data with them, until every sheep has restarted (a starting
sheep marks only the vids whose inodes it stores).

So a NEW_VDI of ours that was cut off, or failed once the vid had its state (VDI_WRITE:
the inode's write failed), is remembered by its chain; when any look-up of a name of that
chain fails (a lookup, or the GET_VDI_INFO of a snapshot, clone, delete or resize), and
the chain's last vid alone has no inode, that vid gets the inode a DEL_VDI leaves (no
name, size 0), which lookups pass by. Only the last vid: a NEW_VDI takes
the vid just past its chain, and no later one can land past a vid that breaks lookups. A
late write of the real inode, from a gateway that was slow rather than dead, still lands
over it; so only once a timeout has passed since the cut-off, when one has become unlikely.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import trio

from ...errors import BackendError
from . import proto
from .client import SheepClient
from .cluster import ClusterInfo
from .proto import INODE_HEADER_SIZE, NR_VDIS, VDI_BITMAP_SIZE, Op, Reply, Res
from .structs import INODE_HEADER, fnv64a

log = logging.getLogger(__name__)
T = TypeVar("T")

#: NEW_VDI failures that come after the vid got its state: as a cut-off, they may leave it
#: with no inode (the new inode's write failed, or the base's before it).
HALF_DONE = frozenset({Res.VDI_WRITE, Res.BASE_VDI_READ, Res.BASE_VDI_WRITE})


def chain_start(name: bytes) -> int:
    """``sd_hash_vdi``: where the vids of ``name`` begin (0 is skipped, as vdi_lookup does)."""
    return fnv64a(name) & (NR_VDIS - 1) or 1


@dataclass(frozen=True)
class CutOff:
    """A NEW_VDI of ours whose reply never came: when, and the layout it asked for."""

    at: float
    copies: int
    copy_policy: int
    block_size_shift: int


class Holes:
    """NEW_VDIs of ours, remembered when cut off; the holes they leave, mended."""

    def __init__(self, client: SheepClient, defaults: ClusterInfo) -> None:
        self.client = client
        self.defaults = defaults
        self._cut: dict[int, CutOff] = {}  # chain start -> the last cut-off there

    async def new_vdi(self, name: bytes, **fields: int) -> Reply:
        """Send NEW_VDI for ``name`` (never resent: it is not idempotent)."""
        req = proto.vdi_request(Op.NEW_VDI, name, **fields)
        try:
            reply = await self.client.call(req, resend=False)
        except BackendError as e:
            if e.may_have_run:
                self._cut_off(name, fields)
            raise
        if reply.result in HALF_DONE:
            self._cut_off(name, fields)
        return reply

    def _cut_off(self, name: bytes, fields: dict[str, int]) -> None:
        d = self.defaults
        copies = fields.get("copies") or d.copies
        policy = fields.get("copy_policy", 0) if fields.get("copies") else d.copy_policy
        shift = fields.get("block_size_shift") or d.block_size_shift or 22
        self._cut[chain_start(name)] = CutOff(trio.current_time(), copies, policy, shift)

    async def retried(self, name: bytes, attempt: Callable[[], Awaitable[T]]) -> T:
        """``attempt()`` (a lookup of ``name``), once more if it failed and mending a hole
        in the chain of ``name`` helped."""
        try:
            return await attempt()
        except BackendError:
            if not await self.mend(name):
                raise
        return await attempt()

    async def mend(self, name: bytes) -> bool:
        """After a failed lookup of ``name``: give the hole a cut-off NEW_VDI of ours left
        in its chain the inode of a deleted VDI; True if one was mended."""
        start = chain_start(name)
        cut = self._cut.get(start)
        if cut is None or trio.current_time() - cut.at < self.client.timeout:
            return False
        reply = await self.client.call(proto.vdi_request(Op.GET_VDI_INFO, name))
        if reply.result != Res.NO_OBJ:
            return False  # not broken (any more), or for another reason
        vid = await self._hole(start)
        if vid is None:
            return False
        req = proto.obj_create(proto.ioid(vid), 0, deleted_inode(vid, cut))
        proto.checked("mend", name, await self.client.call(req, resend=False))
        del self._cut[start]
        log.warning(
            "vid %#x had no inode (a create cut off when its sheep died), so no name of its"
            " hash chain could be looked up, %r among them: it now holds a deleted VDI's inode",
            vid,
            name,
        )
        return True

    async def _hole(self, start: int) -> int | None:
        """The last vid of the chain at ``start`` if it alone lacks its inode, else None."""
        bitmap = proto.checked(
            "mend", None, await self.client.call(proto.plain(Op.READ_VDIS, VDI_BITMAP_SIZE))
        ).payload
        chain = _chain(bitmap, start)
        if not chain:
            return None
        reads = [proto.obj_read(proto.ioid(v), 0, INODE_HEADER_SIZE) for v in chain]
        replies = await self.client.call_many(reads)
        missing = [v for v, r in zip(chain, replies, strict=True) if r.result == Res.NO_OBJ]
        unreadable = [r for r in replies if not r.ok and r.result != Res.NO_OBJ]
        if unreadable or missing != chain[-1:]:
            return None
        return chain[-1]


def _chain(bitmap: bytes | bytearray | memoryview, start: int) -> list[int]:
    """The vids in use from ``start`` up to the first free one (``get_vdi_bitmap_range``,
    wrapping past the end to vid 1)."""

    def used(v: int) -> bool:
        return bool(bitmap[v >> 3] >> (v & 7) & 1)

    out, v = [], start
    while v < NR_VDIS and used(v):
        out.append(v)
        v += 1
    if v == NR_VDIS:
        v = 1
        while v < start and used(v):
            out.append(v)
            v += 1
    return out


def deleted_inode(vid: int, cut: CutOff) -> bytes:
    """The header DEL_VDI leaves: no name, size 0, its layout (the index stays zero)."""
    now = time.time_ns()
    ctime = (now // 1_000_000_000) << 32 | now % 1_000_000_000
    return INODE_HEADER.pack(
        b"", b"", ctime, 0, 0, 0, 0, cut.copy_policy, 0, cut.copies, cut.block_size_shift,
        1, vid, 0, 0,
    )  # fmt: skip
