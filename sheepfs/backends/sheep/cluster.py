"""What a client learns of the cluster when it connects: whether it serves, its defaults
(GET_CLUSTER_DEFAULT) and its latest epoch (STAT_CLUSTER), protocol.md §5.4."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .proto import Reply, Res, result_name

_EPOCH_LOG = struct.Struct("<QQIIBBB3xH16s")


@dataclass(frozen=True)
class ClusterInfo:
    """What :meth:`SheepClient.probe` learned: the cluster defaults (GET_CLUSTER_DEFAULT)
    and the latest epoch log of STAT_CLUSTER."""

    copies: int
    copy_policy: int
    block_size_shift: int
    flags: int  # 0x01 strict, 0x08 locking, 0x10 vid recycling (protocol.md §5.4)
    epoch: int = 0
    nr_nodes: int = 0
    ctime: int = 0

    @property
    def object_size(self) -> int:
        return 1 << self.block_size_shift

    @property
    def use_lock(self) -> bool:
        """LOCK_VDI works only on clusters formatted with locking (rule 33)."""
        return bool(self.flags & 0x08)


_NOT_SERVING = {
    Res.WAIT_FOR_FORMAT: "the cluster is not formatted (dog cluster format)",
    Res.WAIT_FOR_JOIN: "the cluster waits for its nodes to join",
    Res.SHUTDOWN: "the cluster is shutting down",
    Res.VER_MISMATCH: "not a Sheepdog 1.0 sheep (protocol version refused): use --backend dog",
}


def not_serving(result: int) -> str:
    """Why a cluster answering STAT_CLUSTER with ``result`` cannot be used."""
    return _NOT_SERVING.get(result, f"STAT_CLUSTER answered {result_name(result)}")


def cluster_info(stat: Reply, dflt: Reply) -> ClusterInfo:
    """The cluster as STAT_CLUSTER and GET_CLUSTER_DEFAULT replies describe it."""
    ctime = epoch = nodes = flags = 0
    if len(stat.payload) >= _EPOCH_LOG.size:
        ctime, _, epoch, nodes, _, _, _, flags, _ = _EPOCH_LOG.unpack_from(stat.payload)
    defaults = dflt.default_copies, dflt.default_copy_policy, dflt.default_block_size_shift
    return ClusterInfo(*defaults, flags, epoch, nodes, ctime)
