"""``struct sd_inode`` as bytes: the header is always parsed from the stored image, so a
client's resize, tag or index write behaves as it does against sheep."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .proto import GREF_OFFSET, INODE_HEADER_SIZE, INODE_SIZE, U32, cstr
from .sparse import SparseImage

_HDR = struct.Struct("<256s256sQQQQQBBBBIIII")
INODE_BTREE_MAGIC = 0x6274


@dataclass
class InodeHeader:
    name: bytes
    tag: bytes
    create_time: int
    snap_ctime: int
    vm_clock_nsec: int
    vdi_size: int
    vm_state_size: int
    copy_policy: int
    store_policy: int
    nr_copies: int
    block_size_shift: int
    snap_id: int
    vdi_id: int
    parent_vdi_id: int
    btree_counter: int

    @classmethod
    def parse(cls, raw: bytes) -> InodeHeader:
        return cls(*_HDR.unpack_from(raw))

    def pack(self) -> bytes:
        fields = (
            self.name,
            self.tag,
            self.create_time,
            self.snap_ctime,
            self.vm_clock_nsec,
            self.vdi_size,
            self.vm_state_size,
            self.copy_policy,
            self.store_policy,
            self.nr_copies,
            self.block_size_shift,
            self.snap_id,
            self.vdi_id,
            self.parent_vdi_id,
            self.btree_counter,
        )
        return _HDR.pack(*fields).ljust(INODE_HEADER_SIZE, b"\0")

    @property
    def is_snapshot(self) -> bool:
        return self.snap_ctime != 0

    @property
    def is_deleted(self) -> bool:
        return self.name[:1] == b"\0"

    @property
    def cname(self) -> bytes:
        return cstr(self.name)

    def count_data_objs(self) -> int:
        shift = self.block_size_shift
        return -(-self.vdi_size // (1 << shift)) if shift < 64 else 0


def new_inode_image() -> SparseImage:
    return SparseImage(INODE_SIZE)


def header(img: SparseImage) -> InodeHeader:
    return InodeHeader.parse(img.read(0, _HDR.size))


def set_header(img: SparseImage, hdr: InodeHeader) -> None:
    img.write(0, hdr.pack())


def get_vids(img: SparseImage, start: int, count: int) -> list[int]:
    raw = img.read(INODE_HEADER_SIZE + 4 * start, 4 * count)
    return list(struct.unpack(f"<{count}I", raw))


def nonzero_entries(img: SparseImage, count: int) -> dict[int, int]:
    """The non-zero ``data_vdi_id`` entries among the first ``count``: {index: vid}."""
    out: dict[int, int] = {}
    for i, vid in enumerate(get_vids(img, 0, count)):
        if vid:
            out[i] = vid
    return out


def get_grefs(img: SparseImage, start: int, count: int) -> list[tuple[int, int]]:
    raw = img.read(GREF_OFFSET + 8 * start, 8 * count)
    flat = struct.unpack(f"<{2 * count}I", raw)
    return list(zip(flat[0::2], flat[1::2], strict=True))


def set_gref(img: SparseImage, idx: int, generation: int, count: int) -> None:
    img.write(GREF_OFFSET + 8 * idx, struct.pack("<II", generation & U32, count & U32))


def btree_root(img: SparseImage) -> tuple[int, int, int]:
    """The hyper volume's ``sd_index_header`` at 4,664: (magic, depth, entries)."""
    return struct.unpack("<HHI", img.read(INODE_HEADER_SIZE, 8))


def btree_entries(raw: bytes, depth: int, entries: int) -> list[tuple[int, int]]:
    """(idx, vdi_id) of a depth-1 node, or (idx, node oid) of a depth-2 root."""
    if depth == 1:
        flat = struct.unpack_from(f"<{2 * entries}I", raw, 8)
        return list(zip(flat[0::2], flat[1::2], strict=True))
    flat = struct.unpack_from("<" + "IIQ" * entries, raw, 8)
    return list(zip(flat[0::3], flat[2::3], strict=True))


def init_btree_root(img: SparseImage) -> None:
    img.write(INODE_HEADER_SIZE, struct.pack("<HHI", INODE_BTREE_MAGIC, 1, 0))
