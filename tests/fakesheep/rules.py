"""Rules of protocol.md §1 that a real sheep does not enforce, so that a client breaking
them shows in a test: each check records an event and lets the request run as sheep would.

``dog`` itself breaks some of them (it sends the VDI's copies in object ops, asks
CLUSTER_INFO and STAT_CLUSTER with its own lengths), so those run only with the
``strict_client`` knob on: :func:`check_strict`. Two writes at once to one object of an
erasure-coded VDI (:class:`EcWrites`, rule 13) are flagged for every client.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from .gateway import is_erasure_oid
from .proto import (
    ATTR_OBJ_SIZE,
    EPOCH_LOG_SIZE,
    MAX_NODES,
    MAX_TAG_LEN,
    MAX_VDI_LEN,
    NODE_SIZE,
    RECOVERY_STATE_SIZE,
    VDI_STATE_SIZE,
    Op,
    Request,
    op_name,
)
from .state import ClusterState

#: §5.2: the only internal ops a client may send; and STAT_RECOVERY with dog's 24-byte
#: buffer (docs/PROTOCOL.md: sheepfs asks it before deletes, docs/SHEEPDOG.md F25).
CLIENT_INTERNAL_OPS = frozenset(
    {
        Op.GET_NODE_LIST,
        Op.STAT_SHEEP,
        Op.STAT_CLUSTER,
        Op.GET_VDI_ATTR,
        Op.GET_VDI_COPIES,
        Op.READ_DEL_VDIS,
        Op.STAT_RECOVERY,
    }
)
_NAME_OPS = frozenset({Op.GET_VDI_INFO, Op.LOCK_VDI, Op.DEL_VDI})
_WRITES = frozenset({Op.CREATE_AND_WRITE_OBJ, Op.WRITE_OBJ})
#: Rule 6 and §5.2: the buffer each internal op must ask for (dog's sizes).
_BUFFERS: dict[int, Callable[[int], bool]] = {
    Op.GET_NODE_LIST: lambda n: n == MAX_NODES * NODE_SIZE,
    Op.STAT_CLUSTER: lambda n: n == EPOCH_LOG_SIZE,
    Op.GET_VDI_ATTR: lambda n: n == ATTR_OBJ_SIZE,
    Op.GET_VDI_COPIES: lambda n: n > 0 and n % VDI_STATE_SIZE == 0,
    # local_stat_recovery fills 24 bytes whatever the buffer (sheep/ops.c)
    Op.STAT_RECOVERY: lambda n: n == RECOVERY_STATE_SIZE,
}


def check_strict(st: ClusterState, node: int, req: Request) -> None:
    """With ``strict_client``: rule 5 (name ops carry name + tag, 512 bytes) and rule 6
    (only §5.2's internal ops, with dog's buffer sizes). Rules 9 and 27 (copies and
    copy_policy 0 in object ops) are checked by the gateway, strictly under this knob."""
    if not st.knobs.strict_client:
        return
    op, n = req.opcode, req.data_length
    if op in _NAME_OPS and n != MAX_VDI_LEN + MAX_TAG_LEN:
        detail = f"a {n}-byte name payload, not name + tag = 512 (rule 5)"
        st.record("name-payload", node, op_name(op), detail, False)
    elif op >= 0x80 and op not in CLIENT_INTERNAL_OPS:
        detail = f"internal op 0x{op:02x} is not one a client may send (rule 6, §5.2)"
        st.record("internal-op", node, op_name(op), detail, False)
    elif op in _BUFFERS and not _BUFFERS[op](n):
        detail = f"data_length {n} is not the buffer dog asks for (rule 6)"
        st.record("buffer-length", node, op_name(op), detail, False)


class EcWrites:
    """Rule 13: creates and writes in flight per object of an erasure-coded VDI. The
    gateway reads, merges and rewrites the 512-byte stripes at a write's ends, so two at
    once can lose one even when they do not overlap: a second one records "ec-overlap"."""

    def __init__(self) -> None:
        self._busy: Counter[int] = Counter()

    def begin(self, st: ClusterState, node: int, req: Request) -> int | None:
        """Count ``req`` in; the oid to pass to :meth:`end`, None if not counted."""
        if req.opcode not in _WRITES or not is_erasure_oid(st, req.oid):
            return None
        if self._busy[req.oid]:
            detail = f"{req.oid:016x}: another write to it is in flight (rule 13)"
            st.record("ec-overlap", node, op_name(req.opcode), detail, False)
        self._busy[req.oid] += 1
        return req.oid

    def end(self, oid: int | None) -> None:
        if oid is not None:
            self._busy[oid] -= 1
            if not self._busy[oid]:
                del self._busy[oid]
