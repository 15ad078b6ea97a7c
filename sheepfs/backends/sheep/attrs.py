"""VDI attributes over the wire (docs/PROTOCOL.md P12): small values kept by a VDI's name.

A set is ``GET_VDI_ATTR`` with CREAT (never EXCL), a delete is ``GET_VDI_ATTR`` with DEL
sent until it answers NO_OBJ, each with the whole 66,320-byte ``sheepdog_vdi_attr`` payload
(a shorter one crashes a sheep). Those are cluster ops, serialized cluster-wide. A read
skips the cluster op: the attribute object's id follows from the name and the key alone
(``vid_to_attr_oid(hash(name), hash(name, tag, snap_id, key))``), so the attributes of a
whole listing are read with pipelined READ_OBJs, probing the next slot as the sheep does
when a slot holds another key or a deleted one. Such a read does not check that the VDI
exists (the object outlives it): the caller asks only for VDIs it has just listed, and
checks the creation time the sheep stamped into the object against the VDI's.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Sequence

from ...errors import BackendError, NotFound, Unavailable
from ..base import AttrValue, check_name
from . import proto
from .client import SheepClient
from .proto import NAME_SIZE, Op, Request, Res
from .structs import fnv64a

log = logging.getLogger(__name__)

#: ``sizeof(struct sheepdog_vdi_attr)``: the payload of every GET_VDI_ATTR, and the size of
#: an attribute object.
ATTR_SIZE = 66_320
#: Where the value starts in the payload and in the object.
VALUE_OFFSET = 784
#: The largest value Sheepdog keeps (SD_MAX_VDI_ATTR_VALUE_LEN).
MAX_VALUE = 65_536
#: Bytes of an attribute object read: its header and values up to this long (longer ones
#: are not ours and are skipped, rule 36).
READ_VALUE = 256
#: Slots probed past the hash slot before a key counts as missing.
MAX_PROBES = 8
FLAG_EXCL = 0x0200

_FNV_PRIME = 0x100000001B3
_U64 = (1 << 64) - 1
_ATTR_HEADER = struct.Struct("<256s256sQII256s")


def _zeros(hval: int, count: int) -> int:
    """FNV-1a over ``count`` NUL bytes: each step only multiplies by the prime."""
    return hval * pow(_FNV_PRIME, count, 1 << 64) & _U64


def attr_oid(name: bytes, key: bytes, slot: int = 0) -> int:
    """The object of attribute ``key`` of the working VDI ``name``, ``slot`` places past
    the hash slot: ``sd_hash_vdi(name) << 32 | VDI_ATTR_BIT | hash_vdi_attr(...)``."""
    named = fnv64a(name)
    vid = named & 0xFFFFFF  # sd_hash_vdi, without the 0 -> 1 step of vid allocation
    hval = _zeros(named, NAME_SIZE - len(name))  # the rest of the 256-byte name
    hval = _zeros(hval, NAME_SIZE + 4)  # the empty tag and snap_id 0
    hval = _zeros(fnv64a(key, hval), NAME_SIZE - len(key))
    attr_id = (hval + slot) & 0xFFFFFFFF
    return vid << 32 | proto.VDI_ATTR_BIT | attr_id


def payload(name: bytes, key: bytes, value: bytes = b"") -> bytes:
    """``struct sheepdog_vdi_attr``: name, empty tag, ctime 0 (the sheep sets it), snap_id
    0, value_len, key, value, all NUL-padded to 66,320 bytes (rules 6 and 36)."""
    if len(value) > MAX_VALUE:
        raise ValueError(f"an attribute value is at most {MAX_VALUE} bytes")
    head = proto.pad(name) + bytes(NAME_SIZE) + struct.pack("<QII", 0, 0, len(value))
    return (head + proto.pad(key) + value).ljust(ATTR_SIZE, b"\0")


def _request(name: bytes, key: bytes, flags: int, value: bytes = b"") -> Request:
    """GET_VDI_ATTR, proto 0x0a, WRITE plus ``flags``, snapid 0 (the working VDI)."""
    return Request(Op.GET_VDI_ATTR, proto.FLAG_WRITE | flags, ATTR_SIZE, bytes(32),
                   payload(name, key, value))  # fmt: skip


async def set_attr(client: SheepClient, name: bytes, key: bytes, value: bytes) -> None:
    """Store ``value`` at the hash slot (CREAT without EXCL writes there, no probe). The
    same payload again does the same: safe to resend."""
    reply = await client.call(_request(name, key, proto.FLAG_CREAT, value))
    if reply.result == Res.NO_VDI:
        raise NotFound("set attribute", name, "no such VDI (NO_VDI)")
    proto.checked("set attribute", name, reply)


async def drop_attr(client: SheepClient, name: bytes, key: bytes) -> None:
    """DEL until NO_OBJ: each DEL zeroes the first slot holding the key, and an EXCL set of
    someone else's may have put it in a later slot too (rule 36)."""
    for _ in range(MAX_PROBES + 1):
        reply = await client.call(_request(name, key, proto.FLAG_DEL))
        if reply.result == Res.NO_OBJ:
            return
        if reply.result == Res.NO_VDI:
            raise NotFound("drop attribute", name, "no such VDI (NO_VDI)")
        proto.checked("drop attribute", name, reply)
    raise BackendError("drop attribute", name, f"still set after {MAX_PROBES + 1} deletes")


def _parse(name: bytes, key: bytes, data: bytes | bytearray | memoryview) -> AttrValue | None:
    """The value in an attribute object if it is ``key`` of ``name`` (the sheep's match:
    name, empty tag, snap_id 0, key), else None (another key, or a deleted slot)."""
    a_name, tag, ctime, snap_id, length, a_key = _ATTR_HEADER.unpack_from(data)
    if a_name.split(b"\0", 1)[0] != name or tag[0] or snap_id:
        return None
    if a_key.split(b"\0", 1)[0] != key:
        return None
    if length > READ_VALUE or VALUE_OFFSET + length > len(data):
        log.debug("attribute %r of %r: %d bytes, not a value of ours", key, name, length)
        return AttrValue(b"", 0)  # present, and nothing we can use
    seconds, nanoseconds = ctime >> 32, ctime & 0xFFFFFFFF
    value = bytes(data[VALUE_OFFSET : VALUE_OFFSET + length])
    return AttrValue(value, seconds * 1_000_000_000 + nanoseconds)


async def get_attrs(
    client: SheepClient, names: Sequence[bytes], key: bytes
) -> dict[bytes, AttrValue]:
    """Attribute ``key`` of each of ``names``, read straight from the attribute objects,
    all pipelined; a name whose slot holds something else is probed at the next slot."""
    found: dict[bytes, AttrValue] = {}
    todo = list(dict.fromkeys(names))
    for slot in range(MAX_PROBES):
        if not todo:
            break
        length = VALUE_OFFSET + READ_VALUE
        reads = [proto.obj_read(attr_oid(n, key, slot), 0, length) for n in todo]
        again = []
        for name, reply in zip(todo, await client.call_many(reads), strict=True):
            if reply.result == Res.NO_OBJ:
                continue  # the probe ends at the first missing object: no such key
            if not reply.ok:  # not "none kept": unknown, which the caller must not cache
                why = f"attribute {key!r}: {proto.result_name(reply.result)}"
                raise Unavailable("get attributes", name, why)
            got = _parse(name, key, reply.payload)
            if got is None:
                again.append(name)
            elif got.value:
                found[name] = got
        todo = again
    return found


class AttributeOps:
    """The Backend's attribute calls, for a backend that has a :class:`SheepClient`."""

    client: SheepClient

    async def get_attrs(self, key: bytes, names: Sequence[bytes]) -> dict[bytes, AttrValue]:
        for name in names:
            check_name("get attributes", name)
        return await get_attrs(self.client, names, key)

    async def set_attr(self, name: bytes, key: bytes, value: bytes) -> None:
        check_name("set attribute", name)
        await set_attr(self.client, name, key, value)

    async def drop_attr(self, name: bytes, key: bytes) -> None:
        check_name("drop attribute", name)
        await drop_attr(self.client, name, key)
