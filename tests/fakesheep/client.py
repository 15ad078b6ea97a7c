"""A minimal raw trio client for poking a (fake or real) sheep in tests: build a request,
send it, read one reply exactly. No retries, no id matching beyond what the test asks for."""

from __future__ import annotations

import struct
from dataclasses import dataclass

import trio

from .proto import (
    ATTR_OBJ_SIZE,
    BITMAP_SIZE,
    CLUSTER_INFO_SIZE,
    HDR_SIZE,
    NODE_SIZE,
    SD_SHEEP_PROTO_VER,
    Flag,
    Op,
    Request,
    obj_body,
    vdi_body,
    vid_to_vdi_oid,
)

PUBLIC = 0x01


@dataclass
class Rsp:
    hdr: bytes
    data: bytes

    proto_ver = property(lambda self: self.hdr[0])
    opcode = property(lambda self: self.hdr[1])
    epoch = property(lambda self: struct.unpack_from("<I", self.hdr, 4)[0])
    id = property(lambda self: struct.unpack_from("<I", self.hdr, 8)[0])
    data_length = property(lambda self: struct.unpack_from("<I", self.hdr, 12)[0])
    result = property(lambda self: struct.unpack_from("<I", self.hdr, 16)[0])
    vdi_id = property(lambda self: struct.unpack_from("<I", self.hdr, 24)[0])
    attr_id = property(lambda self: struct.unpack_from("<I", self.hdr, 28)[0])
    copies = property(lambda self: self.hdr[32])
    block_size_shift = property(lambda self: self.hdr[33])
    nr_nodes = property(lambda self: struct.unpack_from("<I", self.hdr, 20)[0])


def name256(name: str | bytes) -> bytes:
    raw = name.encode() if isinstance(name, str) else name
    return raw.ljust(256, b"\0")


def req(
    opcode: int,
    data_length: int = 0,
    body: bytes = bytes(32),
    flags: int = 0,
    proto_ver: int | None = None,
    id: int = 0,
) -> Request:
    if proto_ver is None:
        proto_ver = SD_SHEEP_PROTO_VER if opcode >= 0x80 else PUBLIC
    return Request(proto_ver, opcode, flags, 0, id, data_length, body)


class SheepConn:
    """One TCP connection to a node."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream

    @classmethod
    async def open(cls, port: int, host: str = "127.0.0.1") -> SheepConn:
        return cls(await trio.open_tcp_stream(host, port))

    async def aclose(self) -> None:
        await self.stream.aclose()

    async def send(self, r: Request, payload: bytes = b"") -> None:
        await self.stream.send_all(r.pack() + payload)

    async def _exactly(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = await self.stream.receive_some(n - len(buf))
            if not chunk:
                raise EOFError(f"connection closed after {len(buf)} of {n} bytes")
            buf += chunk
        return bytes(buf)

    async def recv(self) -> Rsp:
        hdr = await self._exactly(HDR_SIZE)
        n = struct.unpack_from("<I", hdr, 12)[0]
        return Rsp(hdr, await self._exactly(n))

    async def call(self, r: Request, payload: bytes = b"") -> Rsp:
        await self.send(r, payload)
        return await self.recv()

    # -- the common requests -----------------------------------------------------------------

    async def new_vdi(
        self,
        name: str,
        size: int,
        base: int = 0,
        snapid: int = 0,
        copies: int = 0,
        policy: int = 0,
        store: int = 0,
        shift: int = 0,
    ) -> Rsp:
        body = vdi_body(size, base, copies, policy, store, shift, snapid)
        return await self.call(req(Op.NEW_VDI, 256, body, Flag.WRITE), name256(name))

    async def lookup(
        self,
        name: str,
        tag: str = "",
        snapid: int = 0,
        op: int = Op.GET_VDI_INFO,
        lock_type: int = 0,
    ) -> Rsp:
        body = vdi_body(snapid=snapid, lock_type=lock_type)
        return await self.call(req(op, 512, body, Flag.WRITE), name256(name) + name256(tag))

    async def del_vdi(self, name: str, tag: str = "", snapid: int = 0) -> Rsp:
        return await self.lookup(name, tag, snapid, op=Op.DEL_VDI)

    async def read_obj(self, oid: int, offset: int, length: int) -> Rsp:
        return await self.call(req(Op.READ_OBJ, length, obj_body(oid, offset)))

    async def write_obj(self, oid: int, offset: int, data: bytes) -> Rsp:
        return await self.call(
            req(Op.WRITE_OBJ, len(data), obj_body(oid, offset), Flag.WRITE), data
        )

    async def create_obj(self, oid: int, offset: int, data: bytes, cow_oid: int = 0) -> Rsp:
        flags = Flag.WRITE | (Flag.COW if cow_oid else 0)
        body = obj_body(oid, offset, cow_oid)
        return await self.call(req(Op.CREATE_AND_WRITE_OBJ, len(data), body, flags), data)

    async def set_index(self, vid: int, idx: int, value: int) -> Rsp:
        return await self.write_obj(vid_to_vdi_oid(vid), 4664 + 4 * idx, struct.pack("<I", value))

    async def header(self, vid: int) -> bytes:
        rsp = await self.read_obj(vid_to_vdi_oid(vid), 0, 4664)
        return rsp.data

    async def read_vdis(self, deleted: bool = False) -> Rsp:
        return await self.call(req(Op.READ_DEL_VDIS if deleted else Op.READ_VDIS, BITMAP_SIZE))

    async def node_list(self, length: int = 6144 * NODE_SIZE) -> Rsp:
        return await self.call(req(Op.GET_NODE_LIST, length))

    async def cluster_info(self, length: int = CLUSTER_INFO_SIZE) -> Rsp:
        return await self.call(req(Op.CLUSTER_INFO, length))

    async def attr(
        self,
        name: str,
        key: str,
        value: bytes = b"",
        flags: int = Flag.WRITE,
        length: int = ATTR_OBJ_SIZE,
    ) -> Rsp:
        payload = name256(name) + bytes(256) + struct.pack("<QII", 0, 0, len(value))
        payload += name256(key) + value
        payload = payload.ljust(length, b"\0")[:length]
        return await self.call(req(Op.GET_VDI_ATTR, length, bytes(32), flags), payload)


def bit(bitmap: bytes, vid: int) -> bool:
    return bool(bitmap[vid >> 3] >> (vid & 7) & 1)
