"""The object store: one logical copy of every object, with the plain store's semantics
(``sheep/store/plain_store.c``) and the reference-count ledgers (``sheep/ops.c``)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from .proto import U32, Res, oid_to_vid
from .sparse import SparseImage

log = logging.getLogger(__name__)


@dataclass
class ObjectStore:
    objects: dict[int, SparseImage] = field(default_factory=dict)
    #: ``ledger[generation]`` per data oid (u32 counts, wrapped as in C); absent = no ledger
    ledgers: dict[int, dict[int, int]] = field(default_factory=dict)
    removed: list[int] = field(default_factory=list)  # oids removed, newest last (for tests)

    def exists(self, oid: int) -> bool:
        return oid in self.objects

    def get(self, oid: int) -> SparseImage | None:
        return self.objects.get(oid)

    def read(self, oid: int, offset: int, length: int) -> tuple[int, bytes]:
        """``default_read``: NO_OBJ if missing; bytes past the end are poison (stale memory)."""
        img = self.objects.get(oid)
        if img is None:
            return Res.NO_OBJ, b""
        return Res.SUCCESS, img.read(offset, length)

    def write(self, oid: int, offset: int, data: bytes) -> int:
        """``default_write``: in place, NO_OBJ if missing (a write past the end grows it)."""
        img = self.objects.get(oid)
        if img is None:
            return Res.NO_OBJ
        img.write(offset, data)
        return Res.SUCCESS

    def create_and_write(self, oid: int, offset: int, data: bytes, obj_size: int) -> int:
        """``default_create_and_write``: a new zero-filled object of ``obj_size`` with ``data``
        at ``offset``, replacing any existing one (the rename over it)."""
        img = SparseImage(obj_size)
        img.write(offset, data)
        self.objects[oid] = img
        return Res.SUCCESS

    def put(self, oid: int, img: SparseImage) -> None:
        self.objects[oid] = img

    def remove(self, oid: int) -> int:
        if self.objects.pop(oid, None) is None:
            return Res.NO_OBJ
        self.removed.append(oid)
        log.debug("removed object %016x", oid)
        return Res.SUCCESS

    def remove_vid(self, vid: int) -> None:
        """Every object of ``vid`` (``run_vid_gc``'s ``clean_matched_obj``)."""
        for oid in [o for o in self.objects if oid_to_vid(o) == vid]:
            self.remove(oid)

    def dec_refcnt(self, data_oid: int, generation: int, count: int) -> None:
        """``sd_dec_object_refcnt`` + ``peer_decref_object``: (0, 0) removes the object at
        once; otherwise its ledger moves one reference to ``count`` in the next generation
        and the object goes when every generation is back to zero."""
        if generation == 0 and count == 0:
            self.remove(data_oid)
            return
        ledger = self.ledgers.get(data_oid)
        if ledger is None:
            ledger = {0: 1}
        ledger[generation] = (ledger.get(generation, 0) - 1) & U32
        ledger[generation + 1] = (ledger.get(generation + 1, 0) + count) & U32
        if any(ledger.values()):
            self.ledgers[data_oid] = ledger
            return
        self.ledgers.pop(data_oid, None)
        self.remove(data_oid)

    def stored_bytes(self) -> int:
        return sum(img.size for img in self.objects.values())
