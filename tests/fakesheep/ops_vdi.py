"""Handlers of the VDI ops (``sheep/ops.c``: ``cluster_new_vdi``, ``cluster_get_vdi_info``,
``cluster_del_vdi``, ``cluster_lock_vdi_*``, ``cluster_release_vdi_main``,
``cluster_get_vdi_attr``, ``local_read_vdis``): request checks, then ``vdiops``."""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass

from .lookup import VdiInfo, VdiIocb, vdi_lookup
from .proto import (
    ATTR_OBJ_SIZE,
    BITMAP_SIZE,
    MAX_TAG_LEN,
    MAX_VDI_LEN,
    ClusterFlag,
    Flag,
    Reply,
    Request,
    Res,
    rsp_vdi,
    sd_hash_vdi,
)
from .state import ClusterState, NodeInfo, WouldCrash, now_ctime
from .vdiops import get_vdi_attr, vdi_create, vdi_delete, vdi_snapshot


@dataclass
class Ctx:
    """Who runs a request: the shared state and the node it arrived at."""

    st: ClusterState
    node: NodeInfo


def _tag_of(data: bytes, length: int) -> tuple[bool, bytes | None]:
    """``vdi_init_tag``: 512 bytes carry a tag, 256 none (NULL), anything else is refused."""
    if length == MAX_VDI_LEN + MAX_TAG_LEN:
        return True, data[MAX_VDI_LEN : MAX_VDI_LEN + MAX_TAG_LEN]
    if length == MAX_VDI_LEN:
        return True, None
    return False, None


def check_name(ctx: Ctx, op: str, raw: bytes, what: str = "name") -> None:
    """Rule 10: names and tags are 1-255 bytes, then NUL padding (sheep runs strlen and
    %s on them; an empty name matches deleted inodes). An empty tag is no tag."""
    end = raw.find(b"\0")
    if what == "name" and raw[:1] in (b"", b"\0"):
        kind, detail = "empty-name", "an empty name matches deleted inodes"
    elif end < 0:
        kind, detail = f"{what}-not-terminated", f"{len(raw)} {what} bytes, no NUL"
    elif raw[end:].strip(b"\0"):
        kind, detail = f"{what}-padding", f"bytes after the NUL that ends the {what}"
    else:
        return
    ctx.st.record(kind, ctx.node.index, op, detail, False)


def _name_iocb(ctx: Ctx, req: Request, data: bytes, op: str) -> VdiIocb | None:
    ok, tag = _tag_of(data, req.data_length)
    if not ok:
        return None
    check_name(ctx, op, data[:MAX_VDI_LEN])
    if tag is not None:
        check_name(ctx, op, tag, "tag")
    return VdiIocb(name=data[:MAX_VDI_LEN].ljust(MAX_VDI_LEN, b"\0"), tag=tag, snapid=req.snapid)


def ec_policy_to_dp(policy: int) -> int:
    if not policy & 0x0F:
        raise WouldCrash("copy-policy", f"copy_policy 0x{policy:02x} has p = 0 (ec_policy_to_dp)")
    return (policy >> 4) * 2 + (policy & 0x0F)


def op_new_vdi(ctx: Ctx, req: Request, data: bytes) -> Generator[float, None, Reply]:
    st, ci = ctx.st, ctx.st.cinfo
    iocb = VdiIocb(
        name=data[:MAX_VDI_LEN].ljust(MAX_VDI_LEN, b"\0"),
        size=req.vdi_size,
        base_vid=req.base_vdi_id,
        create_snapshot=bool(req.snapid),
        copy_policy=req.copy_policy,
        store_policy=req.store_policy,
        nr_copies=req.copies,
        block_size_shift=req.block_size_shift,
        time=now_ctime(),
    )
    if not req.copies:  # the client names no redundancy: the cluster's
        iocb.nr_copies, iocb.copy_policy = ci.nr_copies, ci.copy_policy
    if iocb.copy_policy:
        iocb.nr_copies = ec_policy_to_dp(iocb.copy_policy)
    if not req.block_size_shift:
        iocb.block_size_shift = ci.block_size_shift
    if req.data_length != MAX_VDI_LEN:
        return Reply(Res.INVALID_PARMS, rsp_vdi(0, 0, iocb.nr_copies, iocb.block_size_shift))
    check_name(ctx, "NEW_VDI", data[:MAX_VDI_LEN])
    if req.copies and req.copy_policy and req.copy_policy >> 4 not in (1, 2, 4, 8):
        detail = f"copy_policy 0x{req.copy_policy:02x}: d is not 2, 4, 8 or 16 (rule 9)"
        st.record("vdi-copy-policy", ctx.node.index, "NEW_VDI", detail, False)
    if req.block_size_shift and not 20 <= req.block_size_shift <= 31:
        detail = f"block_size_shift {req.block_size_shift} (rule 11)"
        st.record("block-size-shift", ctx.node.index, "NEW_VDI", detail, False)
    if iocb.create_snapshot:
        ret, vid = yield from vdi_snapshot(st, iocb)
    else:
        ret, vid = vdi_create(st, iocb)
    if ret == Res.SUCCESS:  # post_cluster_new_vdi
        st.vdis.inuse.add(vid)
    else:
        vid = 0
    return Reply(ret, rsp_vdi(vid, 0, iocb.nr_copies, iocb.block_size_shift))


def _get_vdi_info(ctx: Ctx, req: Request, data: bytes) -> tuple[int, bytes]:
    iocb = _name_iocb(ctx, req, data, "GET_VDI_INFO")
    if iocb is None:
        return Res.INVALID_PARMS, bytes(28)
    info = VdiInfo()
    ret = vdi_lookup(ctx.st, iocb, info)
    if ret != Res.SUCCESS:
        return ret, bytes(28)
    return ret, rsp_vdi(info.vid, 0, ctx.st.copies_of(info.vid), ctx.st.shift_of(info.vid))


def op_get_vdi_info(ctx: Ctx, req: Request, data: bytes) -> Reply:
    return Reply(*_get_vdi_info(ctx, req, data))


def op_lock_vdi(ctx: Ctx, req: Request, data: bytes) -> Reply:
    st = ctx.st
    if not st.cinfo.flags & ClusterFlag.USE_LOCK:
        return op_get_vdi_info(ctx, req, data)
    if ctx.node.collecting_cinfo:
        return Reply(Res.COLLECTING_CINFO)
    ret, body = _get_vdi_info(ctx, req, data)
    if ret != Res.SUCCESS:
        return Reply(ret, body)
    vid = int.from_bytes(body[4:8], "little")
    if not st.vdis.lock(vid, ctx.node.node_id(), req.lock_type):
        return Reply(Res.VDI_LOCKED, body)
    return Reply(Res.SUCCESS, body)


def op_release_vdi(ctx: Ctx, req: Request, data: bytes) -> Reply:
    st = ctx.st
    if st.cinfo.flags & ClusterFlag.USE_LOCK and not ctx.node.collecting_cinfo:
        st.vdis.unlock(req.base_vdi_id, ctx.node.node_id(), req.lock_type)
    return Reply(Res.SUCCESS)


def op_del_vdi(ctx: Ctx, req: Request, data: bytes) -> Reply:
    st = ctx.st
    iocb = _name_iocb(ctx, req, data, "DEL_VDI")
    if iocb is None:
        return Reply(Res.INVALID_PARMS)
    ret, vid = vdi_delete(st, iocb)
    if ret != Res.SUCCESS:
        return Reply(ret)
    st.vdis.deleted.add(vid)  # post_cluster_del_vdi
    entry = st.vdis.entries.get(vid)
    if entry is not None:
        entry.deleted = True
    if st.recycle_vid:
        for gone in st.vdis.gc_family(vid):
            st.store.remove_vid(gone)
    return Reply(Res.SUCCESS, rsp_vdi(vid))


def op_read_vdis(ctx: Ctx, req: Request, data: bytes) -> Reply:
    if req.data_length != BITMAP_SIZE:
        return Reply(Res.INVALID_PARMS)
    return Reply(Res.SUCCESS, data=ctx.st.vdis.bitmap(ctx.st.vdis.inuse))


def op_read_del_vdis(ctx: Ctx, req: Request, data: bytes) -> Reply:
    if req.data_length != BITMAP_SIZE:
        return Reply(Res.INVALID_PARMS)
    return Reply(Res.SUCCESS, data=ctx.st.vdis.bitmap(ctx.st.vdis.deleted))


def op_get_vdi_attr(ctx: Ctx, req: Request, data: bytes) -> Reply:
    st = ctx.st
    if not req.flags & Flag.WRITE or req.data_length < ATTR_OBJ_SIZE:
        raise WouldCrash(
            "attr-short-payload",
            f"GET_VDI_ATTR with data_length {req.data_length}, flags 0x{req.flags:x}: "
            "the handler reads 66,320 bytes of its buffer (rule 6)",
        )
    vattr = bytearray(data)
    iocb = VdiIocb(name=bytes(vattr[0:256]), tag=bytes(vattr[256:512]), snapid=req.snapid)
    info = VdiInfo()
    ret = vdi_lookup(st, iocb, info)
    if ret != Res.SUCCESS:
        return Reply(ret)
    vid = sd_hash_vdi(bytes(vattr[0:256]))
    ret, attr_id = get_vdi_attr(
        st,
        vattr,
        req.data_length,
        vid,
        info.create_time,
        wr=bool(req.flags & Flag.CREAT),
        excl=bool(req.flags & Flag.EXCL),
        delete=bool(req.flags & Flag.DEL),
    )
    return Reply(ret, rsp_vdi(vid, attr_id, st.copies_of(vid)))
