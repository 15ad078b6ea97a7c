"""What the sheep keep in objects and bitmaps: the inode header, the index, the VDI
bitmaps and node entries, parsed from bytes (docs/PROTOCOL.md P2-P4, P9)."""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

from .proto import NODE_SIZE

_FNV_INIT = 0xCBF29CE484222325
_FNV_PRIME = 0x100000001B3
_U64 = (1 << 64) - 1


def fnv64a(data: bytes, hval: int = _FNV_INIT) -> int:
    """FNV-1a, 64 bits: the hash of names (``sd_hash_vdi``) and attribute keys."""
    for b in data:
        hval = ((hval ^ b) * _FNV_PRIME) & _U64
    return hval


# -- the inode header ----------------------------------------------------------------------

#: The inode header up to ``btree_counter``: what InodeHeader parses.
INODE_HEADER = struct.Struct("<256s256sQQQQQBBBBIIII")


@dataclass(frozen=True)
class InodeHeader:
    name: bytes
    tag: bytes
    create_time: int  # seconds << 32 | nanoseconds
    snap_ctime: int  # non-zero: a snapshot
    vdi_size: int
    copy_policy: int  # 0 replication, else (d/2) << 4 | p
    store_policy: int  # 0 flat, 1 hyper volume (B-tree index)
    nr_copies: int
    block_size_shift: int
    snap_id: int
    vdi_id: int
    parent_vdi_id: int

    @classmethod
    def parse(cls, data: bytes | bytearray | memoryview) -> InodeHeader:
        (name, tag, ctime, snap_ctime, _, size, _, policy, store, copies, shift, snap_id, vid,
         parent, _) = INODE_HEADER.unpack_from(data)  # fmt: skip
        return cls(
            name.split(b"\0", 1)[0],
            tag.split(b"\0", 1)[0],
            ctime,
            snap_ctime,
            size,
            policy,
            store,
            copies,
            shift,
            snap_id,
            vid,
            parent,
        )

    def like(self) -> dict[str, int]:
        """NEW_VDI fields that make a snapshot or clone keep this layout (rule 19)."""
        return {
            "vdi_size": self.vdi_size,
            "copies": self.nr_copies,
            "copy_policy": self.copy_policy,
            "store_policy": self.store_policy,
            "block_size_shift": self.block_size_shift,
        }

    @property
    def is_snapshot(self) -> bool:
        return self.snap_ctime != 0

    @property
    def is_clone(self) -> bool:
        return not self.is_snapshot and self.snap_id == 1 and self.parent_vdi_id != 0

    @property
    def hyper(self) -> bool:
        return self.store_policy == 1

    @property
    def object_size(self) -> int:
        return 1 << self.block_size_shift

    @property
    def objects(self) -> int:
        """Index entries that matter: ``ceil(vdi_size / object size)``."""
        return -(-self.vdi_size // self.object_size)

    @property
    def data_parity(self) -> tuple[int, int]:
        """``(d, p)`` of an erasure-coded VDI; ``(copies, 0)`` when replicated."""
        if not self.copy_policy:
            return self.nr_copies, 0
        return (self.copy_policy >> 4) * 2, self.copy_policy & 0x0F


def ec_policy(data: int, parity: int) -> int:
    """NEW_VDI's ``copy_policy`` for ``data:parity`` (d in 2, 4, 8, 16; 1 <= p <= 15)."""
    if data not in (2, 4, 8, 16) or not 1 <= parity <= 15:
        raise ValueError(f"erasure coding {data}:{parity} is not one Sheepdog has")
    return (data // 2) << 4 | parity


#: A run of zeros, then a byte that is not: the run is skipped at C speed (five times
#: faster than matching ``[^\0]`` alone, which tries every zero byte in turn). Searched
#: only up to the last byte that is not zero: past it every start would scan to the end.
_NONZERO = re.compile(rb"\0*([^\0])")


def bits(bitmap: bytes | bytearray | memoryview) -> list[int]:
    """The numbers of the set bits of a VDI bitmap (bit v = byte[v >> 3] >> (v & 7) & 1)."""
    data = bytes(bitmap)
    end = _last_nonzero(data) + 1  # past it the pattern would never match
    out = []
    for m in _NONZERO.finditer(data, 0, end):  # most of the 2 MiB is zeros
        i = m.start(1)
        byte = data[i]
        out.extend(i * 8 + b for b in range(8) if byte >> b & 1)
    return out


def _last_nonzero(data: bytes, block: int = 16 << 10) -> int:
    """The index of the last byte that is not zero, -1 if none: whole zero blocks are
    compared (memcmp) from the end, then only the last block is stripped."""
    zero = bytes(block)
    end = len(data)
    while end > 0:
        start = max(0, end - block)
        piece = data[start:end]
        if piece != zero[: end - start]:
            return start + len(piece.rstrip(b"\0")) - 1
        end = start
    return -1


def node_addresses(payload: bytes | bytearray | memoryview, nr_nodes: int) -> list[tuple[str, int]]:
    """The (address, port) of each node of a GET_NODE_LIST reply."""
    out = []
    stride = len(payload) // nr_nodes if nr_nodes else NODE_SIZE
    for n in range(nr_nodes):
        base = n * stride
        addr = bytes(payload[base + 24 : base + 40])
        (port,) = struct.unpack_from("<H", payload, base + 40)
        if addr[:12] == bytes(12):
            host = ".".join(str(b) for b in addr[12:])
        else:
            host = ":".join(f"{addr[i] << 8 | addr[i + 1]:x}" for i in range(0, 16, 2))
        out.append((host, port))
    return out
