"""The gateway's object ops (``sheep/gateway.c``): READ_OBJ, WRITE_OBJ with the reference
counting of index writes, CREATE_AND_WRITE_OBJ with copy-on-write, and the read-only rule
for data objects of snapshots."""

from __future__ import annotations

import struct

from . import inode as ino
from .proto import (
    ATTR_OBJ_SIZE,
    BTREE_OBJ_SIZE,
    GREF_OFFSET,
    INODE_DATA_INDEX,
    INODE_SIZE,
    LEDGER_OBJ_SIZE,
    Flag,
    Request,
    Res,
    data_vid_offset,
    is_attr_obj,
    is_btree_obj,
    is_data_obj,
    is_ledger_obj,
    is_vdi_obj,
    oid_to_vid,
    op_name,
    vid_to_data_oid,
)
from .sparse import poison
from .state import ClusterState, WouldCrash


def get_objsize(st: ClusterState, oid: int) -> int:
    """``get_objsize`` with the VDI's object size for data (and vmstate) objects."""
    if is_vdi_obj(oid):
        return INODE_SIZE
    if is_attr_obj(oid):
        return ATTR_OBJ_SIZE
    if is_btree_obj(oid):
        return BTREE_OBJ_SIZE
    if is_ledger_obj(oid):
        return LEDGER_OBJ_SIZE
    return st.object_size(oid_to_vid(oid))


def oid_is_readonly(st: ClusterState, oid: int) -> bool:
    """Only data objects of a snapshot's vid; "we allow changing snapshot attributes"."""
    if not is_data_obj(oid):
        return False
    entry = st.vdis.entries.get(oid_to_vid(oid))
    return bool(entry and entry.snapshot)


def is_erasure_oid(st: ClusterState, oid: int) -> bool:
    if is_vdi_obj(oid) or is_btree_obj(oid) or is_ledger_obj(oid):
        return False
    return st.copy_policy_of(oid_to_vid(oid)) > 0


def is_data_vid_update(req: Request) -> bool:
    return (
        is_vdi_obj(req.oid)
        and data_vid_offset(0) <= req.offset
        and req.offset + req.data_length <= data_vid_offset(INODE_DATA_INDEX)
    )


def check_bounds(st: ClusterState, node: int, req: Request, cow: bool = False) -> None:
    """Rule 8: a data request must stay inside its object. A COW create past the end
    overflows a heap buffer in sheep; the rest misbehave (grow the file, read stale memory),
    which the "crash" knob also treats as fatal so that no test can miss it."""
    size = get_objsize(st, req.oid)
    end = req.offset + req.data_length
    if end <= size:
        return
    detail = (
        f"{op_name(req.opcode)} {req.oid:016x} offset {req.offset} + {req.data_length} > {size}"
    )
    if cow:
        raise WouldCrash("cow-past-end", detail + " (heap overflow in gateway_handle_cow)")
    if st.knobs.past_end == "crash":
        raise WouldCrash("past-end", detail + " (rule 8)")
    st.record("past-end", node, op_name(req.opcode), detail, crashed=False)


def check_policy(st: ClusterState, node: int, req: Request) -> None:
    """Rules 9 and 27: object ops send copy_policy 0 (p = 0 panics an erasure-coded
    request) and copies 0 (sheep uses a non-zero count as given). dog sends the VDI's own
    values, so only other values are recorded, unless the ``strict_client`` knob is on."""
    policy, copies, vid = req.obj_copy_policy, req.obj_copies, oid_to_vid(req.oid)
    if policy and not policy & 0x0F and is_erasure_oid(st, req.oid):
        raise WouldCrash("copy-policy", f"object op with copy_policy 0x{policy:02x}: p = 0")
    strict = st.knobs.strict_client
    if policy and (strict or policy != st.copy_policy_of(vid)):
        detail = f"{req.oid:016x} with copy_policy 0x{policy:02x} (rule 9)"
        st.record("object-copy-policy", node, op_name(req.opcode), detail, False)
    if copies and (strict or copies != st.copies_of(vid)):
        detail = f"{req.oid:016x} with copies {copies} (rule 27)"
        st.record("object-copies", node, op_name(req.opcode), detail, False)


def check_inode_write(st: ClusterState, node: int, req: Request) -> None:
    """Rule 14: no write into ``gref``, no header and index in one request."""
    end = req.offset + req.data_length
    where = f"{req.oid:016x} [{req.offset}, {end})"
    if end > GREF_OFFSET:
        st.record("gref-write", node, "WRITE_OBJ", where + " reaches gref (rule 14)", False)
    if req.offset < data_vid_offset(0) < end:
        st.record("header-and-index", node, "WRITE_OBJ", where + " (rule 14)", False)


def ec_short_of_zones(st: ClusterState, req: Request) -> bool:
    """``gateway_forward_request``: an erasure-coded request needs at least d of the
    ``min(copies, zones)`` targets, else SYSTEM_ERROR."""
    if not is_erasure_oid(st, req.oid):
        return False
    vid = oid_to_vid(req.oid)
    copies = min(req.obj_copies, st.nr_zones) or min(st.copies_of(vid), st.nr_zones)
    policy = req.obj_copy_policy or st.copy_policy_of(vid)
    d, p = (policy >> 4) * 2, policy & 0x0F
    return d + p > copies and copies < d


def read_obj(st: ClusterState, node: int, req: Request) -> tuple[int, bytes]:
    check_policy(st, node, req)
    check_bounds(st, node, req)
    if ec_short_of_zones(st, req):
        return Res.SYSTEM_ERROR, poison(req.data_length)
    ret, data = st.store.read(req.oid, req.offset, req.data_length)
    if ret != Res.SUCCESS and is_erasure_oid(st, req.oid):
        return ret, poison(req.data_length)  # EC errors carry the whole buffer (rule 2)
    return ret, data


def write_obj(st: ClusterState, node: int, req: Request, data: bytes) -> int:
    check_policy(st, node, req)
    check_bounds(st, node, req)
    if oid_is_readonly(st, req.oid):
        return Res.READONLY
    if ec_short_of_zones(st, req):
        return Res.SYSTEM_ERROR
    if is_vdi_obj(req.oid):
        check_inode_write(st, node, req)
    if not is_data_vid_update(req):
        return st.store.write(req.oid, req.offset, data)
    img = st.store.get(req.oid)
    if img is None:
        return Res.NO_OBJ
    start = (req.offset - data_vid_offset(0)) // 4
    nr = req.data_length // 4
    old_vids = ino.get_vids(img, start, nr)
    refs = ino.get_grefs(img, start, nr)
    img.write(req.offset, data)
    img.write(GREF_OFFSET + 8 * start, bytes(8 * nr))  # zeroed_refs over the written range
    new_vids = list(struct.unpack_from(f"<{nr}I", data.ljust(4 * nr, b"\0")))
    for i in range(nr):  # update_obj_refcnt (asynchronous in sheep, immediate here)
        if old_vids[i] == 0 or old_vids[i] == new_vids[i]:
            continue
        gen, count = refs[i]
        st.store.dec_refcnt(vid_to_data_oid(old_vids[i], i + start), gen, count)
    return Res.SUCCESS


def create_and_write_obj(st: ClusterState, node: int, req: Request, data: bytes) -> int:
    check_policy(st, node, req)
    cow = bool(req.flags & Flag.COW)
    check_bounds(st, node, req, cow=cow)
    if oid_is_readonly(st, req.oid):
        return Res.READONLY
    if ec_short_of_zones(st, req):
        return Res.SYSTEM_ERROR
    size = get_objsize(st, req.oid)
    if not cow:
        return st.store.create_and_write(req.oid, req.offset, data, size)
    base = bytearray(size)
    if req.data_length != size:  # partial write: read the copy first
        ret, parent = st.store.read(req.cow_oid, 0, size)
        if ret != Res.SUCCESS:
            return ret
        base[:] = parent
    base[req.offset : req.offset + len(data)] = data
    return st.store.create_and_write(req.oid, 0, bytes(base), size)
