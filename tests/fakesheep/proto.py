"""Wire constants and header layouts of the sheep protocol (Sheepdog 1.0), server side.

Kept apart from the client under test on purpose: the fake must not share a bug with it.
Names follow ``include/sheepdog_proto.h`` and ``include/internal_proto.h``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

HDR_SIZE = 48
SD_PROTO_VER = 0x02  # highest public proto_ver accepted
SD_SHEEP_PROTO_VER = 0x0A  # the only internal proto_ver accepted

SD_NR_VDIS = 1 << 24
#: ``struct recovery_state`` (STAT_RECOVERY's answer): in_recovery, state, finished, total.
RECOVERY_STATE_SIZE = 24
BITMAP_SIZE = SD_NR_VDIS // 8  # 2,097,152
MAX_VDI_LEN = 256
MAX_TAG_LEN = 256
INODE_HEADER_SIZE = 4664
INODE_DATA_INDEX = 1 << 20
GREF_OFFSET = INODE_HEADER_SIZE + 4 * INODE_DATA_INDEX  # 4,198,968
INODE_SIZE = GREF_OFFSET + 8 * INODE_DATA_INDEX  # 12,587,576
ATTR_OBJ_SIZE = 66320
ATTR_VALUE_OFFSET = 784
BTREE_OBJ_SIZE = 4 * INODE_DATA_INDEX
LEDGER_OBJ_SIZE = 1 << 22
NODE_SIZE = 80
MAX_NODES = 6144
CLUSTER_INFO_SIZE = 48 + MAX_NODES * NODE_SIZE  # 491,568
EPOCH_LOG_SIZE = 48
VDI_STATE_SIZE = 1428
EC_STRIPE = 512

VDI_BIT = 1 << 63
VMSTATE_BIT = 1 << 62
VDI_ATTR_BIT = 1 << 61
VDI_BTREE_BIT = 1 << 60
LEDGER_BIT = 1 << 59
VDI_MASK = 0x00FFFFFF00000000

FNV1A_64_INIT = 0xCBF29CE484222325
FNV_64_PRIME = 0x100000001B3
U64 = (1 << 64) - 1
U32 = (1 << 32) - 1


class Op(IntEnum):
    CREATE_AND_WRITE_OBJ = 0x01
    READ_OBJ = 0x02
    WRITE_OBJ = 0x03
    REMOVE_OBJ = 0x04
    DISCARD_OBJ = 0x05
    NEW_VDI = 0x11
    LOCK_VDI = 0x12
    RELEASE_VDI = 0x13
    GET_VDI_INFO = 0x14
    READ_VDIS = 0x15
    FLUSH_VDI = 0x16
    DEL_VDI = 0x17
    GET_CLUSTER_DEFAULT = 0x18
    GET_NODE_LIST = 0x82
    MAKE_FS = 0x84
    SHUTDOWN = 0x85
    STAT_SHEEP = 0x86
    STAT_CLUSTER = 0x87
    GET_VDI_ATTR = 0x89
    STAT_RECOVERY = 0x97
    GET_VDI_COPIES = 0xAB
    CLUSTER_INFO = 0xBE
    READ_DEL_VDIS = 0xC9


class Res(IntEnum):
    SUCCESS = 0x00
    UNKNOWN = 0x01
    NO_OBJ = 0x02
    EIO = 0x03
    VDI_EXIST = 0x04
    INVALID_PARMS = 0x05
    SYSTEM_ERROR = 0x06
    VDI_LOCKED = 0x07
    NO_VDI = 0x08
    NO_BASE_VDI = 0x09
    VDI_READ = 0x0A
    VDI_WRITE = 0x0B
    BASE_VDI_READ = 0x0C
    BASE_VDI_WRITE = 0x0D
    NO_TAG = 0x0E
    SHUTDOWN = 0x11
    NO_MEM = 0x12
    FULL_VDI = 0x13
    VER_MISMATCH = 0x14
    NO_SPACE = 0x15
    WAIT_FOR_FORMAT = 0x16
    WAIT_FOR_JOIN = 0x17
    HALT = 0x19
    READONLY = 0x1A
    INODE_INVALIDATED = 0x1D
    OLD_NODE_VER = 0x81
    NEW_NODE_VER = 0x82
    NETWORK_ERROR = 0x86
    BUFFER_SMALL = 0x88
    NO_SUPPORT = 0x8B
    KILLED = 0x8D
    AGAIN = 0x8F
    CLUSTER_ERROR = 0x91
    COLLECTING_CINFO = 0x95


class Flag:
    WRITE = 0x0001
    COW = 0x0002
    CACHE = 0x0004
    DIRECT = 0x0008
    PIGGYBACK = 0x0010
    TGT = 0x0020
    FWD = 0x0040
    CREAT = 0x0100
    EXCL = 0x0200
    DEL = 0x0400


class ClusterFlag:
    STRICT = 0x0001
    DISKMODE = 0x0002
    AUTO_VNODES = 0x0004
    USE_LOCK = 0x0008
    RECYCLE_VID = 0x0010
    AVOID_DISKFULL = 0x0020


class Status(IntEnum):
    OK = 1
    WAIT = 2
    SHUTDOWN = 3
    KILLED = 4


def res_name(code: int) -> str:
    try:
        return Res(code).name
    except ValueError:
        return f"0x{code:02x}"


def op_name(code: int) -> str:
    try:
        return Op(code).name
    except ValueError:
        return f"0x{code:02x}"


# -- object ids --------------------------------------------------------------------------


def vid_to_vdi_oid(vid: int) -> int:
    return VDI_BIT | vid << 32


def vid_to_data_oid(vid: int, idx: int) -> int:
    return vid << 32 | idx


def vid_to_attr_oid(vid: int, attr_id: int) -> int:
    return vid << 32 | VDI_ATTR_BIT | attr_id


def oid_to_vid(oid: int) -> int:
    return (oid & VDI_MASK) >> 32


def data_oid_to_idx(oid: int) -> int:
    return oid & (INODE_DATA_INDEX - 1)


def is_vdi_obj(oid: int) -> bool:
    return bool(oid & VDI_BIT)


def is_attr_obj(oid: int) -> bool:
    return bool(oid & VDI_ATTR_BIT)


def is_btree_obj(oid: int) -> bool:
    return bool(oid & VDI_BTREE_BIT)


def is_ledger_obj(oid: int) -> bool:
    return bool(oid & LEDGER_BIT)


def is_data_obj(oid: int) -> bool:
    return not oid & (VDI_BIT | VMSTATE_BIT | VDI_ATTR_BIT | VDI_BTREE_BIT | LEDGER_BIT)


def data_vid_offset(idx: int) -> int:
    return INODE_HEADER_SIZE + 4 * idx


# -- hashes --------------------------------------------------------------------------------


def fnv_64a(data: bytes, hval: int = FNV1A_64_INIT) -> int:
    for b in data:
        hval = ((hval ^ b) * FNV_64_PRIME) & U64
    return hval


def cstr(raw: bytes) -> bytes:
    """A C string: the bytes before the first NUL."""
    end = raw.find(b"\0")
    return raw if end < 0 else raw[:end]


def sd_hash_vdi(name: bytes) -> int:
    """``sd_hash_vdi``: FNV-1a over strlen(name) bytes, masked to 24 bits (no 0 -> 1 step)."""
    return fnv_64a(cstr(name)) & (SD_NR_VDIS - 1)


def hash_vdi_attr(attr: bytes) -> int:
    """``hash_vdi_attr``: over the padded name, tag, snap_id and key of a vdi_attr payload."""
    hval = fnv_64a(attr[0:512])
    hval = fnv_64a(attr[520:524], hval)
    hval = fnv_64a(attr[528:784], hval)
    return hval & U32


# -- headers -------------------------------------------------------------------------------

_REQ = struct.Struct("<BBHIII32s")
_OBJ = struct.Struct("<QQBBBBIII")
_VDI = struct.Struct("<QIBBBBII8x")
_RSP = struct.Struct("<BBHIIII28s")


@dataclass
class Request:
    """A 48-byte request header as received (fields by name, the 32-byte union raw)."""

    proto_ver: int
    opcode: int
    flags: int
    epoch: int
    id: int
    data_length: int
    body: bytes

    @classmethod
    def parse(cls, raw: bytes) -> Request:
        return cls(*_REQ.unpack(raw))

    def pack(self) -> bytes:
        return _REQ.pack(
            self.proto_ver,
            self.opcode,
            self.flags,
            self.epoch,
            self.id,
            self.data_length,
            self.body,
        )

    def u8(self, off: int) -> int:
        return self.body[off - 16]

    def u32(self, off: int) -> int:
        return struct.unpack_from("<I", self.body, off - 16)[0]

    def u64(self, off: int) -> int:
        return struct.unpack_from("<Q", self.body, off - 16)[0]

    # obj union (object ops)
    oid = property(lambda self: self.u64(16))
    cow_oid = property(lambda self: self.u64(24))
    obj_copies = property(lambda self: self.u8(32))
    obj_copy_policy = property(lambda self: self.u8(33))
    offset = property(lambda self: self.u32(40))
    # vdi union (vdi ops)
    vdi_size = property(lambda self: self.u64(16))
    base_vdi_id = property(lambda self: self.u32(24))
    copies = property(lambda self: self.u8(28))
    copy_policy = property(lambda self: self.u8(29))
    store_policy = property(lambda self: self.u8(30))
    block_size_shift = property(lambda self: self.u8(31))
    snapid = property(lambda self: self.u32(32))
    lock_type = property(lambda self: self.u32(36))
    # cluster union (STAT_CLUSTER)
    nodes_nr = property(lambda self: self.u32(40))

    @property
    def has_payload(self) -> bool:
        return bool(self.flags & Flag.WRITE) and self.data_length > 0


def obj_body(
    oid: int, offset: int = 0, cow_oid: int = 0, copies: int = 0, policy: int = 0
) -> bytes:
    return _OBJ.pack(oid, cow_oid, copies, policy, 0, 0, 0, offset, 0)


def vdi_body(
    size: int = 0,
    base: int = 0,
    copies: int = 0,
    policy: int = 0,
    store: int = 0,
    shift: int = 0,
    snapid: int = 0,
    lock_type: int = 0,
) -> bytes:
    return _VDI.pack(size, base, copies, policy, store, shift, snapid, lock_type)


@dataclass
class Reply:
    """What an op answers: result, the 28-byte union at 20..47 and the payload."""

    result: int
    body: bytes = bytes(28)
    data: bytes = b""

    def pack_header(self, opcode: int, epoch: int, req_id: int) -> bytes:
        return _RSP.pack(0, opcode, 0, epoch, req_id, len(self.data), self.result, self.body)


def rsp_vdi(vid: int = 0, attr_id: int = 0, copies: int = 0, shift: int = 0) -> bytes:
    """The ``vdi`` reply union: vdi_id @24, attr_id @28, copies @32, block_size_shift @33."""
    return struct.pack("<IIIBB14x", 0, vid, attr_id, copies, shift)


def rsp_node(nr_nodes: int = 0, store_size: int = 0, store_free: int = 0) -> bytes:
    """The ``node`` reply union: nr_nodes @20, store_size @32, store_free @40."""
    return struct.pack("<I8xQQ", nr_nodes, store_size, store_free)


def rsp_cluster_default(copies: int, policy: int, shift: int) -> bytes:
    return struct.pack("<BBB25x", copies, policy, shift)
