"""Snapshots over the wire: listing one VDI's snapshots and reading them (docs/PROTOCOL.md P2).

A snapshot is a VDI of its own (its vid, header and index) that never changes, so its index
is read once and kept while it is read; it is looked up again (GET_VDI_INFO with its snapid)
once a second, so a snapshot deleted meanwhile is not read under a vid another VDI may
have by then (rule 32).
"""

from __future__ import annotations

import trio

from ...errors import InvalidArgument, NotFound
from ..base import VdiInfo
from .client import SheepClient
from .data import DataPath
from .inode import INDEX_TTL, Vdi, find_vid, load
from .listing import list_vdis, to_info

#: Seconds one listing serves the snapshots of every VDI (``ls`` of several directories).
LISTING_TTL = 1.0


class SnapshotReads:
    """The snapshots being read, by (name, snapshot id), and the last listing's snapshots."""

    def __init__(self) -> None:
        self._vdis: dict[tuple[bytes, int], Vdi] = {}
        self._checked: dict[tuple[bytes, int], float] = {}
        self._listed: dict[bytes, list[VdiInfo]] = {}
        self._listed_at = self._changed_at = float("-inf")

    def forget(self, name: bytes) -> None:
        """``name``'s snapshots changed (one was taken or deleted through us)."""
        self._listed_at, self._changed_at = float("-inf"), trio.current_time()
        for key in [k for k in self._vdis if k[0] == name]:
            del self._vdis[key]
            self._checked.pop(key, None)

    def saw(self, found: list[Vdi], started: float) -> None:
        """Keep the snapshots of a listing that began at ``started`` (not one that began
        before our last change: it may not show it)."""
        if started <= self._changed_at:
            return
        listed: dict[bytes, list[VdiInfo]] = {}
        for v in found:
            if v.header.is_snapshot:
                listed.setdefault(v.name, []).append(to_info(v.name, v))
        for infos in listed.values():
            infos.sort(key=lambda i: i.snapshot_id)
        self._listed, self._listed_at = listed, started

    async def of(self, client: SheepClient, name: bytes) -> list[VdiInfo]:
        """The snapshots of ``name``, oldest first: from a listing (headers and indexes)
        at most LISTING_TTL old, so that ``ls`` of many directories lists once."""
        if trio.current_time() - self._listed_at >= LISTING_TTL:
            started = trio.current_time()
            found = await list_vdis(client)
            self.saw(found, started)
            if self._listed_at != started:  # changed meanwhile: this listing only
                return sorted(
                    (to_info(name, v) for v in found if v.header.is_snapshot and v.name == name),
                    key=lambda i: i.snapshot_id,
                )
        return list(self._listed.get(name, []))

    async def _vdi(self, client: SheepClient, name: bytes, snapid: int) -> Vdi:
        key = (name, snapid)
        vdi = self._vdis.get(key)
        if vdi is not None and trio.current_time() - self._checked[key] < INDEX_TTL:
            return vdi
        vid = await find_vid(client, "read", name, snapid=snapid) if snapid > 0 else None
        if vid is None:
            self._vdis.pop(key, None)
            raise NotFound("read", name, f"no snapshot {snapid} (NO_VDI)")
        if vdi is None or vdi.vid != vid:
            vdi = await load(client, "read", name, vid)
            if vdi is None or not vdi.header.is_snapshot:
                raise NotFound("read", name, f"vid {vid:#x} is not snapshot {snapid}")
            self._vdis[key] = vdi
        self._checked[key] = trio.current_time()
        return vdi

    async def read(
        self, data: DataPath, name: bytes, snapid: int, offset: int, length: int
    ) -> bytearray:
        """Up to ``length`` bytes at ``offset``: short only at the snapshot's end."""
        vdi = await self._vdi(data.client, name, snapid)
        if offset > vdi.size:
            raise InvalidArgument("read", name, "Read offset is beyond the end of the VDI")
        buf = bytearray(max(0, min(length, vdi.size - offset)))
        if buf:
            await data.read_into(vdi, offset, memoryview(buf))
        return buf
