"""Request dispatch in the server's order (``sheep/request.c:queue_request``): proto_ver,
opcode, cluster status, then the op itself. Handlers are plain functions returning a Reply,
or generators that yield seconds to wait and return the Reply."""

from __future__ import annotations

import logging
from collections.abc import Callable, Generator
from dataclasses import dataclass

from . import gateway, ops_node, ops_vdi, rules
from .ops_vdi import Ctx
from .proto import (
    SD_PROTO_VER,
    SD_SHEEP_PROTO_VER,
    ClusterFlag,
    Flag,
    Op,
    Reply,
    Request,
    Res,
    Status,
    data_oid_to_idx,
    data_vid_offset,
    oid_to_vid,
    op_name,
    vid_to_vdi_oid,
)
from .state import ClusterState

log = logging.getLogger(__name__)
Handler = Callable[[Ctx, Request, bytes], "Reply | Generator[float, None, Reply]"]


@dataclass(frozen=True)
class OpInfo:
    name: str
    kind: str  # "gateway", "local", "cluster", "peer"
    force: bool
    handler: Handler | None  # None: known to sheep, not emulated here


def _obj_result(fn: Callable[[ClusterState, int, Request, bytes], int]) -> Handler:
    def handler(ctx: Ctx, req: Request, data: bytes) -> Reply:
        return Reply(fn(ctx.st, ctx.node.index, req, data))

    return handler


def op_read_obj(ctx: Ctx, req: Request, data: bytes) -> Reply:
    ret, out = gateway.read_obj(ctx.st, ctx.node.index, req)
    return Reply(ret, data=out)


def op_remove_obj(ctx: Ctx, req: Request, data: bytes) -> Reply:
    return Reply(ctx.st.store.remove(req.oid))


def op_discard_obj(ctx: Ctx, req: Request, data: bytes) -> Reply:
    """``local_discard_obj``: zero the entry through the gateway, then remove the object."""
    st, oid = ctx.st, req.oid
    ctx.st.record("discard-obj", ctx.node.index, "DISCARD_OBJ", f"{oid:016x} (rule 17)", False)
    vid, idx = oid_to_vid(oid), data_oid_to_idx(oid)
    img = st.store.get(vid_to_vdi_oid(vid))
    if img is None:
        return Reply(Res.NO_OBJ)
    if int.from_bytes(img.read(data_vid_offset(idx), 4), "little"):
        fwd = Request(0, Op.WRITE_OBJ, Flag.WRITE, 0, 0, 4, req.body)
        fwd.body = vid_to_vdi_oid(vid).to_bytes(8, "little") + bytes(16)
        fwd.body += data_vid_offset(idx).to_bytes(4, "little") + bytes(4)
        ret = gateway.write_obj(st, ctx.node.index, fwd, bytes(4))
        if ret != Res.SUCCESS:
            return Reply(ret)
        st.store.remove(oid)
    return Reply(Res.SUCCESS)


def op_flush_vdi(ctx: Ctx, req: Request, data: bytes) -> Reply:
    return Reply(Res.INVALID_PARMS)


_G, _L, _C = "gateway", "local", "cluster"
_EMULATED: dict[int, OpInfo] = {
    Op.CREATE_AND_WRITE_OBJ: OpInfo(
        "CREATE_AND_WRITE_OBJ", _G, False, _obj_result(gateway.create_and_write_obj)
    ),
    Op.READ_OBJ: OpInfo("READ_OBJ", _G, False, op_read_obj),
    Op.WRITE_OBJ: OpInfo("WRITE_OBJ", _G, False, _obj_result(gateway.write_obj)),
    Op.REMOVE_OBJ: OpInfo("REMOVE_OBJ", _G, False, op_remove_obj),
    Op.DISCARD_OBJ: OpInfo("DISCARD_OBJ", _L, False, op_discard_obj),
    Op.NEW_VDI: OpInfo("NEW_VDI", _C, False, ops_vdi.op_new_vdi),
    Op.LOCK_VDI: OpInfo("LOCK_VDI", _C, False, ops_vdi.op_lock_vdi),
    Op.RELEASE_VDI: OpInfo("RELEASE_VDI", _C, False, ops_vdi.op_release_vdi),
    Op.GET_VDI_INFO: OpInfo("GET_VDI_INFO", _C, False, ops_vdi.op_get_vdi_info),
    Op.READ_VDIS: OpInfo("READ_VDIS", _L, True, ops_vdi.op_read_vdis),
    Op.FLUSH_VDI: OpInfo("FLUSH_VDI", _L, False, op_flush_vdi),
    Op.DEL_VDI: OpInfo("DEL_VDI", _C, False, ops_vdi.op_del_vdi),
    Op.GET_CLUSTER_DEFAULT: OpInfo(
        "GET_CLUSTER_DEFAULT", _L, True, ops_node.op_get_cluster_default
    ),
    Op.GET_NODE_LIST: OpInfo("GET_NODE_LIST", _L, True, ops_node.op_get_node_list),
    Op.MAKE_FS: OpInfo("MAKE_FS", _C, True, ops_node.op_make_fs),
    Op.SHUTDOWN: OpInfo("SHUTDOWN", _C, True, ops_node.op_shutdown),
    Op.STAT_SHEEP: OpInfo("STAT_SHEEP", _L, False, ops_node.op_stat_sheep),
    Op.STAT_CLUSTER: OpInfo("STAT_CLUSTER", _L, True, ops_node.op_stat_cluster),
    Op.STAT_RECOVERY: OpInfo("STAT_RECOVERY", _L, False, ops_node.op_stat_recovery),
    Op.GET_VDI_ATTR: OpInfo("GET_VDI_ATTR", _C, False, ops_vdi.op_get_vdi_attr),
    Op.GET_VDI_COPIES: OpInfo("GET_VDI_COPIES", _L, True, ops_node.op_get_vdi_copies),
    Op.CLUSTER_INFO: OpInfo("CLUSTER_INFO", _L, True, ops_node.op_cluster_info),
    Op.READ_DEL_VDIS: OpInfo("READ_DEL_VDIS", _L, True, ops_vdi.op_read_del_vdis),
}

#: Every other opcode in sheep 1.0's ``sd_ops[]`` (kind, force): sheep accepts them, the fake
#: answers NO_SUPPORT and records the request, since no client should send them (rule 6).
_KNOWN: dict[int, tuple[str, bool]] = {
    0x8A: (_C, True),
    0x90: (_L, True),
    0x94: (_C, True),
    0x95: (_L, True),
    0x96: (_L, True),
    0x97: (_L, False),
    0x98: (_L, False),
    0x99: (_C, True),
    0x9A: (_L, True),
    0x9B: (_L, True),
    0x9C: (_L, True),
    0xA1: (_L, False),
    0xA2: (_L, False),
    0xA3: ("peer", False),
    0xA4: ("peer", False),
    0xA5: ("peer", False),
    0xA6: ("peer", False),
    0xA8: (_C, False),
    0xA9: (_C, False),
    0xAC: (_C, True),
    0xAF: (_C, True),
    0xB0: (_C, False),
    0xB1: (_L, False),
    0xB2: (_L, False),
    0xB3: (_L, False),
    0xB4: (_L, False),
    0xB5: (_C, False),
    0xB8: (_L, False),
    0xB9: (_L, True),
    0xBA: (_L, True),
    0xBB: (_L, False),
    0xBC: (_L, False),
    0xBD: (_L, True),
    0xBF: (_C, False),
    0xC0: (_C, False),
    0xC1: (_G, False),
    0xC2: ("peer", False),
    0xC5: (_L, False),
    0xC6: (_L, True),
    0xC7: (_L, False),
    0xC8: (_C, False),
    0xCA: (_L, True),
    0xCB: (_L, True),
    0xCC: (_L, False),
    0xCD: (_L, False),
}


def get_op(opcode: int) -> OpInfo | None:
    info = _EMULATED.get(opcode)
    if info is not None:
        return info
    known = _KNOWN.get(opcode)
    return OpInfo(f"0x{opcode:02x}", known[0], known[1], None) if known else None


def precheck(st: ClusterState, req: Request) -> int | None:
    """The checks before an op runs, in sheep's order; a result code ends the request."""
    if req.opcode >= 0x80:
        if req.proto_ver != SD_SHEEP_PROTO_VER:
            return Res.VER_MISMATCH
    elif req.proto_ver > SD_PROTO_VER:
        return Res.VER_MISMATCH
    op = get_op(req.opcode)
    if op is None:
        return Res.INVALID_PARMS
    status = st.cinfo.status
    if status == Status.KILLED:
        return Res.KILLED
    if status == Status.SHUTDOWN:
        return Res.SHUTDOWN
    if status == Status.WAIT and not op.force:
        return Res.WAIT_FOR_FORMAT if st.cinfo.ctime == 0 else Res.WAIT_FOR_JOIN
    if op.kind == _G:
        return _gateway_check(st, req)
    return None


def _gateway_check(st: ClusterState, req: Request) -> int | None:
    """``queue_gateway_request``: HALT with no living node, or on a strict cluster while
    there are fewer zones than copies."""
    if not st.up_nodes:
        return Res.HALT
    writes = req.opcode in (Op.CREATE_AND_WRITE_OBJ, Op.WRITE_OBJ)
    if writes and st.cinfo.flags & ClusterFlag.STRICT:
        if st.nr_zones < st.copies_of(oid_to_vid(req.oid)):
            return Res.HALT
    return None


def run(ctx: Ctx, req: Request, data: bytes) -> Generator[float, None, Reply]:
    """One request, start to end: yields seconds to wait, returns the reply. May raise
    ``WouldCrash``."""
    rules.check_strict(ctx.st, ctx.node.index, req)
    early = precheck(ctx.st, req)
    if early is not None:
        return Reply(early)
    op = get_op(req.opcode)
    assert op is not None
    if req.data_length and not req.flags & Flag.WRITE and req.opcode in _PAYLOAD_OPS:
        ctx.st.record(
            "no-write-flag",
            ctx.node.index,
            op.name,
            f"data_length {req.data_length} without SD_FLAG_CMD_WRITE (rule 1)",
            False,
        )
    if op.handler is None:
        ctx.st.record("unemulated-op", ctx.node.index, op.name, "not emulated", False)
        return Reply(Res.NO_SUPPORT)
    if req.opcode in _PAYLOAD_OPS:
        data = data.ljust(req.data_length, b"\0")
    out = op.handler(ctx, req, data)
    if isinstance(out, Generator):
        out = yield from out
    log.debug("node %d %s -> %s", ctx.node.index, op_name(req.opcode), out.result)
    return out


_PAYLOAD_OPS = frozenset(
    {
        Op.CREATE_AND_WRITE_OBJ,
        Op.WRITE_OBJ,
        Op.NEW_VDI,
        Op.LOCK_VDI,
        Op.GET_VDI_INFO,
        Op.DEL_VDI,
        Op.GET_VDI_ATTR,
        Op.MAKE_FS,
    }
)
