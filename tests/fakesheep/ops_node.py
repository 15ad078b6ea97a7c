"""Handlers of the node and cluster ops: GET_NODE_LIST, STAT_SHEEP, STAT_CLUSTER,
CLUSTER_INFO, GET_CLUSTER_DEFAULT, GET_VDI_COPIES and MAKE_FS (``sheep/ops.c``,
``sheep/group.c``)."""

from __future__ import annotations

import struct

from .ops_vdi import Ctx
from .proto import (
    CLUSTER_INFO_SIZE,
    EPOCH_LOG_SIZE,
    NODE_SIZE,
    SD_SHEEP_PROTO_VER,
    VDI_STATE_SIZE,
    Reply,
    Request,
    Res,
    Status,
    cstr,
    rsp_cluster_default,
    rsp_node,
)
from .state import ClusterState, WouldCrash

STORE_DRIVERS = (b"plain", b"tree")


def _nodes_bytes(st: ClusterState, indexes: list[int], pointers: bool) -> bytes:
    """Nodes in ``node_cmp`` order (address, then port), as sheep's rb-tree holds them."""
    nodes = sorted((st.nodes[i] for i in indexes), key=lambda n: n.port)
    return b"".join(n.pack(pointers) for n in nodes)


def op_get_node_list(ctx: Ctx, req: Request, data: bytes) -> Reply:
    st = ctx.st
    up = [n.index for n in st.up_nodes]
    if req.data_length < len(up) * NODE_SIZE:
        raise WouldCrash(
            "node-list-buffer",
            f"GET_NODE_LIST data_length {req.data_length} < {len(up)} nodes x 80 (rule 6)",
        )
    return Reply(Res.SUCCESS, rsp_node(len(up)), _nodes_bytes(st, up, pointers=True))


def op_stat_sheep(ctx: Ctx, req: Request, data: bytes) -> Reply:
    st = ctx.st
    size = ctx.node.space
    used = st.store.stored_bytes() * st.cinfo.nr_copies // max(1, len(st.up_nodes))
    return Reply(Res.SUCCESS, rsp_node(0, size, max(0, size - used)))


def op_stat_recovery(ctx: Ctx, req: Request, data: bytes) -> Reply:
    """``struct recovery_state`` (24 bytes): in_recovery, state, nr_finished, nr_total."""
    busy = ctx.st.knobs.recovering
    return Reply(Res.SUCCESS, data=struct.pack("<BxxxIQQ", busy, 1 if busy else 0, 10, 356))


def status_result(st: ClusterState) -> int:
    status = st.cinfo.status
    if status == Status.OK:
        return Res.SUCCESS
    if status == Status.WAIT:
        return Res.WAIT_FOR_FORMAT if st.cinfo.ctime == 0 else Res.WAIT_FOR_JOIN
    if status == Status.SHUTDOWN:
        return Res.SHUTDOWN
    return Res.SYSTEM_ERROR


def _epoch_log(st: ClusterState, k: int, first: bool, nodes_nr: int) -> tuple[int, bytes]:
    """One ``epoch_log`` of epoch ``k`` with room for ``nodes_nr`` nodes."""
    ci, log = st.cinfo, st.epochs[k - 1]
    if nodes_nr and nodes_nr < len(log.nodes):
        return Res.BUFFER_SMALL, b""
    nodes = _nodes_bytes(st, log.nodes, pointers=False) if nodes_nr else b""
    head = struct.pack(
        "<QQIIBBB3xH16s",
        ci.ctime if first else 0,
        log.time if nodes_nr else 0,
        k,
        len(log.nodes) if nodes_nr else 0,
        ci.disable_recovery if first else 0,
        ci.nr_copies if first else 0,
        ci.copy_policy if first else 0,
        ci.flags if first else 0,
        ci.store if first else b"",
    )
    return Res.SUCCESS, head + nodes.ljust(nodes_nr * NODE_SIZE, b"\0")


def op_stat_cluster(ctx: Ctx, req: Request, data: bytes) -> Reply:
    """``local_stat_cluster``: newest epoch first, as many as fit; result = cluster status."""
    st, nodes_nr = ctx.st, req.nodes_nr
    out = b""
    max_elogs = req.data_length // (EPOCH_LOG_SIZE + nodes_nr * NODE_SIZE)
    epoch = len(st.epochs)
    for i in range(max_elogs):
        if epoch <= 0:
            break
        ret, elog = _epoch_log(st, epoch, i == 0, nodes_nr)
        if ret != Res.SUCCESS:
            return Reply(ret, data=out)
        out += elog
        epoch -= 1
    return Reply(status_result(st), data=out)


def cluster_info_bytes(st: ClusterState) -> bytes:
    ci = st.cinfo
    up = [n.index for n in st.up_nodes]
    head = struct.pack(
        "<BBhIQHBBBB3x16s7x",
        SD_SHEEP_PROTO_VER,
        ci.disable_recovery,
        len(up),
        ci.epoch,
        ci.ctime,
        ci.flags,
        ci.nr_copies,
        ci.copy_policy,
        ci.status,
        ci.block_size_shift,
        ci.store,
    )
    return (head + _nodes_bytes(st, up, pointers=True)).ljust(CLUSTER_INFO_SIZE, b"\0")


def op_cluster_info(ctx: Ctx, req: Request, data: bytes) -> Reply:
    if req.data_length < CLUSTER_INFO_SIZE:
        raise WouldCrash(
            "cluster-info-buffer",
            f"CLUSTER_INFO data_length {req.data_length} < 491,568: memcpy of sys->cinfo "
            "overruns the buffer (rule 6)",
        )
    return Reply(Res.SUCCESS, data=cluster_info_bytes(ctx.st))


def op_get_cluster_default(ctx: Ctx, req: Request, data: bytes) -> Reply:
    ci = ctx.st.cinfo
    return Reply(
        Res.SUCCESS, rsp_cluster_default(ci.nr_copies, ci.copy_policy, ci.block_size_shift)
    )


def op_get_vdi_copies(ctx: Ctx, req: Request, data: bytes) -> Reply:
    entries = [ctx.st.vdis.entries[v] for v in sorted(ctx.st.vdis.entries)]
    if req.data_length < len(entries) * VDI_STATE_SIZE:
        return Reply(Res.BUFFER_SMALL)
    return Reply(Res.SUCCESS, data=b"".join(e.pack() for e in entries))


def op_make_fs(ctx: Ctx, req: Request, data: bytes) -> Reply:
    """``cluster_make_fs``: ctime @24, copies @32, copy_policy @33, flags @34, shift @44."""
    store = cstr(data[:16])
    if store not in STORE_DRIVERS:
        return Reply(0x8A)  # SD_RES_NO_STORE
    flags = struct.unpack_from("<H", req.body, 34 - 16)[0]
    ctx.st.format(req.u8(32), req.u8(33), flags, req.u8(44), ctime=req.u64(24))
    ctx.st.cinfo.store = store
    return Reply(Res.SUCCESS)


def op_shutdown(ctx: Ctx, req: Request, data: bytes) -> Reply:
    ctx.st.cinfo.status = Status.SHUTDOWN
    return Reply(Res.SUCCESS)
