"""The VDI bitmaps and the per-vid state of ``sheep/vdi.c`` (``struct vdi_state_entry``):
copies, snapshot flag, locks, and the families used to recycle vids on ``-R`` clusters."""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass, field

from .proto import BITMAP_SIZE, SD_NR_VDIS, VDI_STATE_SIZE

log = logging.getLogger(__name__)

LOCK_STATE_UNLOCKED, LOCK_STATE_LOCKED, LOCK_STATE_SHARED = 1, 2, 3
LOCK_TYPE_NORMAL, LOCK_TYPE_SHARED = 0, 1
SHARED_MODIFIED, SHARED_SHARED, SHARED_INVALIDATED = 1, 2, 3
SD_MAX_COPIES = 31


@dataclass
class VdiStateEntry:
    vid: int
    nr_copies: int
    snapshot: bool
    copy_policy: int
    block_size_shift: int
    parent_vid: int
    deleted: bool = False
    lock_state: int = LOCK_STATE_UNLOCKED
    owner: bytes = bytes(40)  # node_id of the node that took a normal lock
    participants: list[tuple[bytes, int]] = field(default_factory=list)  # (node_id, state)

    def pack(self) -> bytes:
        """``struct vdi_state`` (1,428 bytes), as GET_VDI_COPIES returns it."""
        head = struct.pack(
            "<IBBBBB3xII40sI",
            self.vid,
            self.nr_copies,
            self.snapshot,
            self.deleted,
            self.copy_policy,
            self.block_size_shift,
            self.parent_vid,
            self.lock_state,
            self.owner,
            len(self.participants),
        )
        states = b"".join(struct.pack("<I", s) for _, s in self.participants)
        nids = b"".join(nid for nid, _ in self.participants)
        out = head + states.ljust(4 * SD_MAX_COPIES, b"\0") + nids
        return out.ljust(VDI_STATE_SIZE, b"\0")


@dataclass
class VdiTable:
    inuse: set[int] = field(default_factory=set)
    deleted: set[int] = field(default_factory=set)
    entries: dict[int, VdiStateEntry] = field(default_factory=dict)
    family_parent: dict[int, int] = field(default_factory=dict)  # -R clusters only

    @staticmethod
    def bitmap(vids: set[int]) -> bytes:
        """An x86-64 ``unsigned long`` bitmap: bit v = ``byte[v >> 3] >> (v & 7) & 1``."""
        out = bytearray(BITMAP_SIZE)
        for v in vids:
            out[v >> 3] |= 1 << (v & 7)
        return bytes(out)

    def find_next_zero(self, start: int) -> int:
        """``find_next_zero_bit(sys->vdi_inuse, SD_NR_VDIS, start)``."""
        v = start
        while v < SD_NR_VDIS and v in self.inuse:
            v += 1
        return v

    def is_set(self, vid: int) -> bool:
        return vid in self.inuse or vid in self.deleted

    def set_vids_desc(self, left: int, right: int) -> list[int]:
        """Vids in [left, right) set in either bitmap, highest first."""
        if right - left <= 4096:
            return [i for i in range(right - 1, left - 1, -1) if self.is_set(i)]
        return sorted((v for v in self.inuse | self.deleted if left <= v < right), reverse=True)

    def add_state(
        self,
        vid: int,
        nr_copies: int,
        snapshot: bool,
        policy: int,
        shift: int,
        parent: int,
        recycle: bool,
    ) -> None:
        """``do_add_vdi_state``: a new entry, or an update of an existing one."""
        old = self.entries.get(vid)
        if old is None:
            self.entries[vid] = VdiStateEntry(vid, nr_copies, snapshot, policy, shift, parent)
            if recycle:
                self.family_parent[vid] = parent
            return
        old.nr_copies, old.snapshot = nr_copies, snapshot
        old.copy_policy, old.block_size_shift = policy, shift
        if parent:
            if not snapshot:
                log.warning("caution, updating parent VID of VID: %x", vid)
            old.parent_vid = parent

    # -- locks (sheep/vdi.c:vdi_lock, vdi_unlock) ------------------------------------------

    def lock(self, vid: int, owner: bytes, lock_type: int) -> bool:
        e = self.entries.get(vid)
        if e is None or lock_type not in (LOCK_TYPE_NORMAL, LOCK_TYPE_SHARED):
            return False
        if lock_type == LOCK_TYPE_NORMAL:
            if e.lock_state != LOCK_STATE_UNLOCKED:
                return False
            e.lock_state, e.owner = LOCK_STATE_LOCKED, owner
            return True
        if e.lock_state == LOCK_STATE_LOCKED:
            return False
        return self._add_participant(e, owner)

    @staticmethod
    def _add_participant(e: VdiStateEntry, owner: bytes) -> bool:
        if e.lock_state == LOCK_STATE_UNLOCKED:
            e.participants = [(owner, SHARED_MODIFIED)]
            e.lock_state = LOCK_STATE_SHARED
            return True
        if len(e.participants) == SD_MAX_COPIES or any(n == owner for n, _ in e.participants):
            return False
        modified = any(s == SHARED_MODIFIED for _, s in e.participants)
        e.participants.append((owner, SHARED_INVALIDATED if modified else SHARED_SHARED))
        return True

    def unlock(self, vid: int, owner: bytes, lock_type: int) -> bool:
        e = self.entries.get(vid)
        if e is None:
            return False
        if lock_type == LOCK_TYPE_NORMAL:
            if e.lock_state != LOCK_STATE_LOCKED:
                return False
            e.lock_state, e.owner = LOCK_STATE_UNLOCKED, bytes(40)
            return True
        if e.lock_state != LOCK_STATE_SHARED:
            return False
        e.participants = [(n, s) for n, s in e.participants if n != owner]
        if not e.participants:
            e.lock_state = LOCK_STATE_UNLOCKED
        return True

    def drop_participant(self, owner: bytes) -> None:
        """``remove_node_from_participants``: a node left; its normal locks stay."""
        for e in self.entries.values():
            if e.lock_state == LOCK_STATE_SHARED:
                self.unlock(e.vid, owner, LOCK_TYPE_SHARED)

    # -- vid recycling (-R) -----------------------------------------------------------------

    def family_root(self, vid: int) -> int:
        seen: set[int] = set()
        while self.family_parent.get(vid) and vid not in seen:
            seen.add(vid)
            vid = self.family_parent[vid]
        return vid

    def family_members(self, root: int) -> list[int]:
        members, todo = [], [root]
        while todo:
            v = todo.pop()
            members.append(v)
            todo += [c for c, p in self.family_parent.items() if p == v and c != v]
        return members

    def gc_family(self, vid: int) -> list[int]:
        """``run_vid_gc``: if every member of vid's family is deleted, forget them all and
        return their vids (the caller removes their objects); else return []."""
        if vid not in self.entries:
            return []
        members = self.family_members(self.family_root(vid))
        if not all(m in self.entries and self.entries[m].deleted for m in members):
            return []
        for m in members:
            self.entries.pop(m, None)
            self.family_parent.pop(m, None)
            self.inuse.discard(m)
            self.deleted.discard(m)
        return members
