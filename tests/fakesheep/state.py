"""The cluster state every fake node shares: configuration, nodes, epochs, objects, VDIs and
the record of requests that would have crashed (or been mishandled by) a real sheep."""

from __future__ import annotations

import pickle
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path

from .objects import ObjectStore
from .proto import NODE_SIZE, ClusterFlag, Status
from .vdis import VdiTable

SD_DEFAULT_COPIES = 3


class WouldCrash(Exception):
    """Raised where a real sheep would segfault or panic on this request."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


@dataclass
class Event:
    """A request a real sheep would not have survived (``crashed``) or would have mishandled."""

    kind: str
    node: int
    op: str
    detail: str
    crashed: bool

    def as_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


@dataclass
class NodeInfo:
    index: int
    port: int
    zone: int
    nr_vnodes: int = 128
    space: int = 74_258_554_880
    up: bool = True
    collecting_cinfo: bool = False

    def pack(self, pointers: bool = True) -> bytes:
        """``struct sd_node`` (80 bytes): rb pointers, addr, port, io_addr, io_port, pad,
        nr_vnodes, zone, space."""
        rb = struct.pack("<QQQ", 0x5600_0000_0000 + self.index * 0x30, 0, 0) if pointers else None
        addr = bytes(12) + bytes([127, 0, 0, 1])
        body = struct.pack(
            "<16sH16sH4xH2xIQ", addr, self.port, bytes(16), 0, self.nr_vnodes, self.zone, self.space
        )
        return (rb or bytes(24)) + body

    def node_id(self) -> bytes:
        """``struct node_id`` (40 bytes): what a lock owner is."""
        return struct.pack(
            "<16sH16sH4x", bytes(12) + bytes([127, 0, 0, 1]), self.port, bytes(16), 0
        )


assert len(NodeInfo(0, 0, 0).pack()) == NODE_SIZE


@dataclass
class EpochLog:
    epoch: int
    time: int
    nodes: list[int]


@dataclass
class ClusterInfo:
    """``sys->cinfo``: what ``dog cluster format`` set."""

    nr_copies: int = 2
    copy_policy: int = 0
    block_size_shift: int = 22
    flags: int = ClusterFlag.AUTO_VNODES
    ctime: int = 0
    status: int = Status.WAIT
    epoch: int = 0
    store: bytes = b"plain"
    disable_recovery: int = 0


@dataclass
class Knobs:
    """Behaviour switches that outlive a single request."""

    #: data requests with offset + length past the object: "crash" (emulate a dead node) or
    #: "serve" (answer as sheep does: poison for reads, a grown object for writes; recorded)
    past_end: str = "crash"
    #: seconds between reading the base inode and writing it back in a snapshot, so index
    #: writes landing meanwhile are lost as in sheep (protocol.md rule 15); 0 = atomic
    snapshot_race: float = 0.0
    #: also flag what ``dog`` itself sends but protocol.md §1 forbids a client: copies or
    #: copy_policy in object ops (rules 27, 9), a 256-byte name payload (rule 5), internal
    #: ops outside §5.2 or other buffer sizes than dog's (rule 6); see ``rules.py``
    strict_client: bool = False
    #: the next DEL_VDIs whose emptied inode is never written, as when that write fails on
    #: a real sheep while nodes go down: DEL_VDI still answers SUCCESS (delete_vdi_work does
    #: not check the write), and the VDI comes back at the next start (docs/SHEEPDOG.md F23)
    lost_inode_writes: int = 0
    #: the next NEW_VDIs whose gateway dies after ``notify_vdi_add`` gave the vid its state
    #: and before the inode is written (``sheep/vdi.c:vdi_create``): no inode; the vid is
    #: marked in use as by the next node to join, so lookups of its chain fail with NO_OBJ
    #: (docs/SHEEPDOG.md F24). Pair it with ``close_next_reply(node, "header", "NEW_VDI")``:
    #: a dead gateway sends no reply.
    inodeless_new_vdis: int = 0
    #: what such a NEW_VDI answers if its reply is not cut: "SUCCESS", or "VDI_WRITE" as a
    #: gateway that lived but could not write the inode (nodes going down)
    inodeless_result: str = "SUCCESS"
    #: every node answers STAT_RECOVERY with ``in_recovery`` 1 (a node came or went)
    recovering: bool = False


@dataclass
class ClusterState:
    cinfo: ClusterInfo
    nodes: list[NodeInfo]
    epochs: list[EpochLog] = field(default_factory=list)
    store: ObjectStore = field(default_factory=ObjectStore)
    vdis: VdiTable = field(default_factory=VdiTable)
    events: list[Event] = field(default_factory=list)
    knobs: Knobs = field(default_factory=Knobs)

    @classmethod
    def new(
        cls,
        ports: list[int],
        copies: int = 2,
        flags: int = ClusterFlag.AUTO_VNODES,
        block_size_shift: int = 22,
        formatted: bool = True,
    ) -> ClusterState:
        nodes = [NodeInfo(i, p, zone=i) for i, p in enumerate(ports)]
        st = cls(
            ClusterInfo(nr_copies=copies, flags=flags, block_size_shift=block_size_shift), nodes
        )
        if formatted:
            st.format(copies, 0, flags, block_size_shift)
        return st

    def format(self, copies: int, policy: int, flags: int, shift: int, ctime: int = 0) -> None:
        """``cluster_make_fs``: wipe objects and VDIs, epoch 1, status OK."""
        self.cinfo = ClusterInfo(
            copies or SD_DEFAULT_COPIES, policy, shift or 22, flags, ctime or now_ctime()
        )
        self.store = ObjectStore()
        self.vdis = VdiTable()
        self.epochs = []
        self.bump_epoch()
        self.cinfo.status = Status.OK

    def bump_epoch(self) -> None:
        self.cinfo.epoch += 1
        up = [n.index for n in self.nodes if n.up]
        self.epochs.append(EpochLog(self.cinfo.epoch, int(time.time()), up))

    @property
    def up_nodes(self) -> list[NodeInfo]:
        return [n for n in self.nodes if n.up]

    @property
    def nr_zones(self) -> int:
        return len({n.zone for n in self.up_nodes})

    @property
    def recycle_vid(self) -> bool:
        return bool(self.cinfo.flags & ClusterFlag.RECYCLE_VID)

    def object_size(self, vid: int) -> int:
        """``get_vdi_object_size``: from the VDI state, else the cluster default."""
        entry = self.vdis.entries.get(vid)
        return 1 << (entry.block_size_shift if entry else self.cinfo.block_size_shift)

    def copies_of(self, vid: int) -> int:
        entry = self.vdis.entries.get(vid)
        return entry.nr_copies if entry else self.cinfo.nr_copies

    def copy_policy_of(self, vid: int) -> int:
        entry = self.vdis.entries.get(vid)
        return entry.copy_policy if entry else self.cinfo.copy_policy

    def shift_of(self, vid: int) -> int:
        entry = self.vdis.entries.get(vid)
        return entry.block_size_shift if entry else self.cinfo.block_size_shift

    def record(self, kind: str, node: int, op: str, detail: str, crashed: bool) -> Event:
        ev = Event(kind, node, op, detail, crashed)
        self.events.append(ev)
        return ev

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_bytes(pickle.dumps(self, protocol=pickle.HIGHEST_PROTOCOL))
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> ClusterState:
        st = pickle.loads(path.read_bytes())
        if not isinstance(st, cls):
            raise ValueError(f"{path}: not a fake sheep state")
        return st


def now_ctime() -> int:
    """sheep's time encoding: ``tv_sec << 32 | tv_usec * 1000``."""
    t = time.time_ns()
    sec, nsec = divmod(t, 1_000_000_000)
    return sec << 32 | (nsec // 1000) * 1000
