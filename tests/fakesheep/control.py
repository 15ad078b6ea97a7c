"""The control API of a running fake: inspection, fault switches, node up/down, external
snapshots. The same methods are served over the control socket (``remote.py``) for tests
that drive a fake running in another process; results are JSON-friendly."""

from __future__ import annotations

import logging
import random
import struct
from pathlib import Path

from . import inode as ino
from . import vdiops
from .faults import CLOSE_WHERE, CloseSpec, parse_op, parse_res
from .lookup import VdiInfo, VdiIocb, vdi_lookup
from .proto import (
    SD_PROTO_VER,
    Flag,
    Op,
    Request,
    Res,
    Status,
    cstr,
    obj_body,
    res_name,
    vdi_body,
    vid_to_data_oid,
    vid_to_vdi_oid,
)
from .server import FakeCluster
from .state import ClusterState

log = logging.getLogger(__name__)

_STATUS = {
    "ok": Status.OK,
    "wait_join": Status.WAIT,
    "shutdown": Status.SHUTDOWN,
    "killed": Status.KILLED,
}
#: Control methods callable over the control socket.
REMOTE_METHODS = frozenset(
    "ping ports epoch events crashes clear_events op_counts requests vdis nodes read_vdi "
    "hang close_next_reply reset delay inject unknown_id_reply shuffle node_down node_up "
    "set_status set_knob collecting_cinfo snapshot clear_faults save".split()
)


def _name256(name: str | bytes) -> bytes:
    raw = name.encode() if isinstance(name, str) else name
    return raw[:255].ljust(256, b"\0")


class Control:
    def __init__(self, cluster: FakeCluster) -> None:
        self.cluster = cluster

    @property
    def _st(self) -> ClusterState:
        return self.cluster.state

    # -- inspection -------------------------------------------------------------------------

    def ping(self) -> str:
        return "pong"

    def ports(self) -> list[int]:
        return self.cluster.ports

    def epoch(self) -> int:
        return self._st.cinfo.epoch

    def events(self) -> list[dict[str, object]]:
        """Every recorded event; a test passes only with ``[]``."""
        return self.cluster.events

    def crashes(self) -> list[dict[str, object]]:
        """The events where a real sheep would have crashed."""
        return [e for e in self.cluster.events if e["crashed"]]

    def clear_events(self) -> None:
        self._st.events.clear()

    def op_counts(self) -> dict[str, int]:
        return dict(self.cluster.op_counts)

    def requests(self, clear: bool = False) -> list[dict[str, object]]:
        """The last requests served (node, op, id, flags, oid, offset, data_length, result;
        copies and copy_policy of object ops, None for other ops)."""
        out = list(self.cluster.requests)
        if clear:
            self.cluster.requests.clear()
            self.cluster.op_counts.clear()
        return out

    def nodes(self) -> list[dict[str, object]]:
        return [
            {"index": n.index, "port": n.port, "zone": n.zone, "up": n.up} for n in self._st.nodes
        ]

    def vdis(self) -> list[dict[str, object]]:
        """Every allocated vid's inode header, as the server holds it."""
        st, out = self._st, []
        for vid in sorted(st.vdis.inuse):
            img = st.store.get(vid_to_vdi_oid(vid))
            if img is None:
                continue
            h = ino.header(img)
            out.append(
                {
                    "vid": vid,
                    "name": h.cname.decode(errors="replace"),
                    "tag": cstr(h.tag).decode(errors="replace"),
                    "snap_id": h.snap_id,
                    "snapshot": h.is_snapshot,
                    "size": h.vdi_size,
                    "parent": h.parent_vdi_id,
                    "copies": h.nr_copies,
                    "block_size_shift": h.block_size_shift,
                    "store_policy": h.store_policy,
                    "deleted": vid in st.vdis.deleted,
                }
            )
        return out

    def read_vdi(
        self, name: str, offset: int, length: int, tag: str = "", snapid: int = 0
    ) -> bytes:
        """Bytes of a flat VDI read through its index, independent of any client."""
        st = self._st
        info = VdiInfo()
        iocb = VdiIocb(_name256(name), tag=_name256(tag), snapid=snapid)
        ret = vdi_lookup(st, iocb, info)
        if ret != Res.SUCCESS:
            raise LookupError(f"{name}: {res_name(ret)}")
        img = st.store.get(vid_to_vdi_oid(info.vid))
        assert img is not None
        size = 1 << ino.header(img).block_size_shift
        out = bytearray()
        pos, end = offset, offset + length
        while pos < end:
            idx, off = divmod(pos, size)
            n = min(end - pos, size - off)
            owner = ino.get_vids(img, idx, 1)[0]
            obj = st.store.get(vid_to_data_oid(owner, idx)) if owner else None
            out += obj.read(off, n) if obj is not None else bytes(n)
            pos += n
        return bytes(out)

    # -- faults -----------------------------------------------------------------------------

    def hang(self, node: int, on: bool = True) -> None:
        """Accept and read, never answer (new and pending replies of that node)."""
        (self.cluster.faults.hung.add if on else self.cluster.faults.hung.discard)(node)

    def close_next_reply(
        self, node: int, where: str = "header", op: int | str | None = None, count: int = 1
    ) -> None:
        """Close the connection halfway through the next reply's header or payload."""
        if where not in CLOSE_WHERE:
            raise ValueError(f"where must be one of {CLOSE_WHERE}")
        queue = self.cluster.faults.closes.setdefault(node, [])
        queue += [CloseSpec(where, parse_op(op)) for _ in range(count)]

    def reset(self, node: int) -> None:
        """RST every open connection of the node; it keeps accepting new ones."""
        self.cluster.reset(node)

    def delay(self, seconds: float, op: int | str | None = None, node: int | None = None) -> None:
        """Delay every request of ``op`` (all ops if None) on ``node`` (all if None); 0 clears."""
        self.cluster.faults.set_delay(parse_op(op), seconds, node)

    def inject(
        self,
        result: int | str,
        op: int | str | None = None,
        count: int = 1,
        node: int | None = None,
    ) -> None:
        """Answer the next ``count`` requests of ``op`` with ``result``, without running them."""
        self.cluster.faults.add_injection(parse_op(op), parse_res(result), count, node)

    def unknown_id_reply(self, node: int, count: int = 1, payload_len: int = 0) -> None:
        """Before each of the node's next ``count`` replies, send one with an unknown id."""
        self.cluster.faults.unknown_ids.setdefault(node, []).extend([payload_len] * count)

    def shuffle(self, on: bool = True, seed: int | None = None, window: float = 0.01) -> None:
        """Reorder replies completing within ``window`` seconds of each other."""
        f = self.cluster.faults
        f.shuffle, f.shuffle_window = on, window
        if seed is not None:
            f.rng = random.Random(seed)

    def clear_faults(self) -> None:
        self.cluster.faults.clear()

    def collecting_cinfo(self, node: int, on: bool = True) -> None:
        self._st.nodes[node].collecting_cinfo = on

    # -- cluster ----------------------------------------------------------------------------

    def node_down(self, node: int) -> None:
        """The node leaves (connections reset, port refused); the epoch increments."""
        self.cluster.node_down(node)

    def node_up(self, node: int) -> None:
        self.cluster.node_up(node)

    def set_status(self, status: str) -> None:
        """``ok``, ``wait_join``, ``shutdown`` or ``killed`` for the whole cluster."""
        self._st.cinfo.status = _STATUS[status]

    def set_knob(self, name: str, value: object) -> None:
        """``past_end`` ("crash" or "serve"), ``snapshot_race`` (seconds), ``strict_client``
        (bool: also flag what dog breaks, ``rules.py``)."""
        knobs = self._st.knobs
        if not hasattr(knobs, name):
            raise AttributeError(f"no knob {name!r}")
        setattr(knobs, name, type(getattr(knobs, name))(value))

    def restart(self) -> None:
        """Stop and start the whole cluster: what is deleted is read again from the inodes."""
        vdiops.restart(self._st)
        self.cluster.state.bump_epoch()

    async def snapshot(self, name: str, tag: str = "", node: int = 0) -> int:
        """What ``dog vdi snapshot -s TAG NAME`` does, from outside the client under test:
        tag the working inode, then NEW_VDI with snapid 1. Returns the new working vid."""
        c = self.cluster
        look = Request(SD_PROTO_VER, Op.GET_VDI_INFO, Flag.WRITE, 0, 0, 512, vdi_body())
        rsp = await c.execute(node, look, _name256(name) + bytes(256))
        if rsp.result != Res.SUCCESS:
            raise LookupError(f"{name}: {res_name(rsp.result)}")
        vid = struct.unpack_from("<I", rsp.body, 4)[0]
        img = c.state.store.get(vid_to_vdi_oid(vid))
        assert img is not None
        h = ino.header(img)
        body = obj_body(vid_to_vdi_oid(vid), offset=256)
        tag_write = Request(SD_PROTO_VER, Op.WRITE_OBJ, Flag.WRITE, 0, 0, 256, body)
        await c.execute(node, tag_write, _name256(tag))
        body = vdi_body(
            h.vdi_size,
            vid,
            h.nr_copies,
            h.copy_policy,
            h.store_policy,
            h.block_size_shift,
            snapid=1,
        )
        new = Request(SD_PROTO_VER, Op.NEW_VDI, Flag.WRITE, 0, 0, 256, body)
        rsp = await c.execute(node, new, _name256(name))
        if rsp.result != Res.SUCCESS:
            raise RuntimeError(f"snapshot of {name}: {res_name(rsp.result)}")
        return struct.unpack_from("<I", rsp.body, 4)[0]

    def save(self, path: str) -> None:
        self._st.save(Path(path))
