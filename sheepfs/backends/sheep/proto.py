"""The sheep wire protocol (Sheepdog 1.0): headers, op codes, result codes, object ids and
the inode header, as bytes. No I/O here; see docs/PROTOCOL.md for the rules behind them.

Every integer is little-endian; a request is a 48-byte header (`sd_req`) followed by
exactly ``data_length`` payload bytes if and only if ``FLAG_WRITE`` is set; a reply is a
48-byte header (`sd_rsp`) followed by exactly its ``data_length`` bytes.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from ...errors import (
    BackendError,
    Exists,
    InvalidArgument,
    NoSpace,
    NotFound,
    ReadOnly,
    Unavailable,
)

HEADER_SIZE = 48
#: Public ops go with this ``proto_ver``, internal ones (opcode >= 0x80) with ``INTERNAL``.
PUBLIC_PROTO = 0x01
INTERNAL_PROTO = 0x0A

FLAG_WRITE = 0x0001
FLAG_COW = 0x0002
FLAG_CREAT = 0x0100
FLAG_DEL = 0x0400

INODE_HEADER_SIZE = 4664
INDEX_OFFSET = INODE_HEADER_SIZE
MAX_INDEX = 1 << 20
#: Vids are 24 bits (SD_NR_VDIS); vid 0 is never used.
NR_VDIS = 1 << 24
#: READ_VDIS / READ_DEL_VDIS carry exactly this many bytes (a bit per vid).
VDI_BITMAP_SIZE = NR_VDIS // 8
#: GET_NODE_LIST wants a buffer of 6,144 nodes x 80 bytes, whatever the cluster holds.
NODE_LIST_SIZE = 6144 * 80
NODE_SIZE = 80
NAME_SIZE = 256

VDI_BIT = 1 << 63
VDI_ATTR_BIT = 1 << 61


class Op(enum.IntEnum):
    CREATE_AND_WRITE_OBJ = 0x01
    READ_OBJ = 0x02
    WRITE_OBJ = 0x03
    NEW_VDI = 0x11
    LOCK_VDI = 0x12
    RELEASE_VDI = 0x13
    GET_VDI_INFO = 0x14
    READ_VDIS = 0x15
    DEL_VDI = 0x17
    GET_CLUSTER_DEFAULT = 0x18
    GET_NODE_LIST = 0x82
    STAT_SHEEP = 0x86
    STAT_CLUSTER = 0x87
    GET_VDI_ATTR = 0x89
    STAT_RECOVERY = 0x97
    READ_DEL_VDIS = 0xC9


class Res(enum.IntEnum):
    SUCCESS = 0x00
    UNKNOWN = 0x01
    NO_OBJ = 0x02
    EIO = 0x03
    VDI_EXIST = 0x04
    INVALID_PARMS = 0x05
    SYSTEM_ERROR = 0x06
    VDI_LOCKED = 0x07
    NO_VDI = 0x08
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
    OLD_NODE_VER = 0x81
    NEW_NODE_VER = 0x82
    NETWORK_ERROR = 0x86
    BUFFER_SMALL = 0x88
    KILLED = 0x8D
    AGAIN = 0x8F
    CLUSTER_ERROR = 0x91
    COLLECTING_CINFO = 0x95


#: Results worth a retry on another connection or node, within the request's deadline.
RETRYABLE = frozenset(
    {
        Res.SHUTDOWN,
        Res.NO_MEM,
        Res.WAIT_FOR_JOIN,
        Res.HALT,
        Res.OLD_NODE_VER,
        Res.NEW_NODE_VER,
        Res.NETWORK_ERROR,
        Res.KILLED,
        Res.AGAIN,
    }
)


def result_name(result: int) -> str:
    try:
        return Res(result).name
    except ValueError:
        return f"0x{result:02x}"


_ERRORS: dict[int, type[BackendError]] = {
    Res.NO_VDI: NotFound,
    Res.NO_TAG: NotFound,
    Res.VDI_EXIST: Exists,
    Res.NO_SPACE: NoSpace,
    Res.FULL_VDI: NoSpace,
    Res.INVALID_PARMS: InvalidArgument,
    Res.READONLY: ReadOnly,
    Res.WAIT_FOR_FORMAT: Unavailable,
    Res.WAIT_FOR_JOIN: Unavailable,
    Res.SHUTDOWN: Unavailable,
    Res.HALT: Unavailable,
    Res.VER_MISMATCH: Unavailable,
}

_WHY = {
    Res.NO_VDI: "no such VDI",
    Res.NO_TAG: "no snapshot with that tag",
    Res.VDI_EXIST: "VDI exists already",
    Res.NO_SPACE: "the cluster has no space for new objects",
    Res.FULL_VDI: "no free VDI id left",
    Res.READONLY: "the VDI is a snapshot now (read-only)",
    Res.WAIT_FOR_FORMAT: "the cluster is not formatted (dog cluster format)",
    Res.WAIT_FOR_JOIN: "the cluster waits for its nodes to join",
    Res.SHUTDOWN: "the cluster is shutting down",
    Res.HALT: "the cluster has halted (too few nodes for its copies)",
    Res.VER_MISMATCH: "the sheep speaks another protocol version (not Sheepdog 1.0?)",
}


def error_for(op: str, name: bytes | None, result: int) -> BackendError:
    """The exception for a failed reply: the one place sheep results are classified."""
    cls = _ERRORS.get(result, BackendError)
    why = _WHY.get(result, "sheep answered")
    return cls(op, name, f"{why} ({result_name(result)})")


def checked(op: str, name: bytes | None, reply: Reply) -> Reply:
    """``reply`` if it succeeded; else its result as the exception :func:`error_for` gives."""
    if not reply.ok:
        raise error_for(op, name, reply.result)
    return reply


def ioid(vid: int) -> int:
    """The inode object of VDI ``vid``."""
    return VDI_BIT | vid << 32


def doid(vid: int, index: int) -> int:
    """Data object ``index`` of VDI ``vid``."""
    return vid << 32 | index


def pad(name: bytes, size: int = NAME_SIZE) -> bytes:
    """A name, tag or key NUL-padded to ``size`` bytes (1..size-1 bytes of name)."""
    if not 0 < len(name) < size or b"\0" in name:
        raise ValueError(f"a name of 1..{size - 1} bytes without NUL, not {name!r}")
    return name.ljust(size, b"\0")


# -- requests ------------------------------------------------------------------------------

_REQ = struct.Struct("<BBHIII")
_OBJ = struct.Struct("<QQBBBBIII")
_VDI = struct.Struct("<QIBBBBII8x")


@dataclass
class Request:
    """One request; ``payload`` goes out after the header when ``flags`` has FLAG_WRITE."""

    opcode: int
    flags: int = 0
    data_length: int = 0
    body: bytes = bytes(32)
    payload: bytes | bytearray | memoryview = b""
    id: int = 0

    @property
    def proto_ver(self) -> int:
        return INTERNAL_PROTO if self.opcode >= 0x80 else PUBLIC_PROTO

    def header(self, id_: int | None = None) -> bytes:
        """The 48 header bytes, under ``id_`` when given (the connection's, not ``id``)."""
        rid = self.id if id_ is None else id_
        return (
            _REQ.pack(self.proto_ver, self.opcode, self.flags, 0, rid, self.data_length) + self.body
        )


def obj_read(oid: int, offset: int, length: int) -> Request:
    return Request(Op.READ_OBJ, 0, length, _OBJ.pack(oid, 0, 0, 0, 0, 0, 0, offset, 0))


def obj_write(oid: int, offset: int, data: bytes | bytearray | memoryview) -> Request:
    return Request(
        Op.WRITE_OBJ, FLAG_WRITE, len(data), _OBJ.pack(oid, 0, 0, 0, 0, 0, 0, offset, 0), data
    )


def obj_create(
    oid: int, offset: int, data: bytes | bytearray | memoryview, cow_oid: int = 0
) -> Request:
    """CREATE_AND_WRITE_OBJ: a whole new object, zeros (or ``cow_oid``'s bytes) under
    ``data`` at ``offset``."""
    flags = FLAG_WRITE | (FLAG_COW if cow_oid else 0)
    body = _OBJ.pack(oid, cow_oid, 0, 0, 0, 0, 0, offset, 0)
    return Request(Op.CREATE_AND_WRITE_OBJ, flags, len(data), body, data)


def vdi_request(
    op: Op,
    name: bytes,
    tag: bytes = b"",
    snapid: int = 0,
    *,
    vdi_size: int = 0,
    base_vdi_id: int = 0,
    copies: int = 0,
    copy_policy: int = 0,
    store_policy: int = 0,
    block_size_shift: int = 0,
) -> Request:
    """GET_VDI_INFO, DEL_VDI (name + tag: always 512 bytes) or NEW_VDI (name: 256 bytes)."""
    payload = pad(name) if op == Op.NEW_VDI else pad(name) + (pad(tag) if tag else bytes(256))
    body = _VDI.pack(
        vdi_size, base_vdi_id, copies, copy_policy, store_policy, block_size_shift, snapid, 0
    )
    return Request(op, FLAG_WRITE, len(payload), body, payload)


def plain(op: Op, data_length: int = 0) -> Request:
    """A request with no payload and no body: READ_VDIS, GET_NODE_LIST, STAT_SHEEP..."""
    return Request(op, 0, data_length)


#: ``struct recovery_state``: in_recovery u8 @0, state u32 @4, nr_finished and nr_total u64.
RECOVERY_STATE_SIZE = 24


def stat_cluster() -> Request:
    return Request(Op.STAT_CLUSTER, 0, 48)


# -- replies -------------------------------------------------------------------------------

_RSP = struct.Struct("<BBHIIII")


@dataclass
class Reply:
    opcode: int
    id: int
    data_length: int
    result: int
    body: bytes  # bytes 20..47 of the header
    payload: bytes | bytearray | memoryview = b""

    @classmethod
    def parse(cls, header: bytes | bytearray | memoryview) -> Reply:
        _, opcode, _, _, id_, length, result = _RSP.unpack_from(header)
        return cls(opcode, id_, length, result, bytes(header[20:48]))

    def _u(self, fmt: str, offset: int) -> int:
        return struct.unpack_from(fmt, self.body, offset - 20)[0]

    @property
    def ok(self) -> bool:
        return self.result == Res.SUCCESS

    @property
    def vdi_id(self) -> int:
        return self._u("<I", 24)

    @property
    def nr_nodes(self) -> int:
        return self._u("<I", 20)

    @property
    def store_size(self) -> int:
        return self._u("<Q", 32)

    @property
    def store_free(self) -> int:
        return self._u("<Q", 40)

    @property
    def default_copies(self) -> int:
        return self._u("<B", 20)

    @property
    def default_copy_policy(self) -> int:
        return self._u("<B", 21)

    @property
    def default_block_size_shift(self) -> int:
        return self._u("<B", 22)
