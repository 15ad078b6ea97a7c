"""The fake sheep's crash emulation and fault switches (protocol.md §11.4, §11.13), its
reply ordering, locks and node changes, and the out-of-process mode with its control socket."""

from __future__ import annotations

import socket
import struct

import pytest
import trio

from tests.fakesheep import RemoteError, fake_cluster
from tests.fakesheep.client import SheepConn, name256, req
from tests.fakesheep.process import FakeSheepProcess
from tests.fakesheep.proto import (
    ClusterFlag,
    Flag,
    Op,
    Request,
    Res,
    obj_body,
    vid_to_data_oid,
    vid_to_vdi_oid,
)

pytestmark = pytest.mark.timeout(120)
MiB = 1 << 20
DEAD = (EOFError, trio.BrokenResourceError, trio.ClosedResourceError)


async def _vdi_with_object(conn: SheepConn, name: str = "v") -> int:
    vid = (await conn.new_vdi(name, 16 * MiB)).vdi_id
    await conn.create_obj(vid_to_data_oid(vid, 0), 0, b"old!")
    await conn.set_index(vid, 0, vid)
    return vid


# -- crash emulation -----------------------------------------------------------------------


async def _tagged_snapshot(c: SheepConn) -> tuple[Request, bytes]:
    vid = (await c.new_vdi("v", MiB)).vdi_id
    await c.write_obj(vid_to_vdi_oid(vid), 256, name256("t"))
    await c.new_vdi("v", MiB, base=vid, snapid=1)
    body = struct.pack("<QIBBBBII8x", 0, 0, 0, 0, 0, 0, 1, 0)  # snapid 1, 256-byte payload
    return req(Op.GET_VDI_INFO, 256, body, Flag.WRITE), name256("v")


async def _hyper_zeroed(c: SheepConn) -> tuple[Request, bytes]:
    vid = (await c.new_vdi("hv", 5 << 40, store=1)).vdi_id
    await c.write_obj(vid_to_vdi_oid(vid), 4664, bytes(64))  # dog's flat zeroing
    return req(Op.DEL_VDI, 512, flags=Flag.WRITE), name256("hv") + bytes(256)


async def _cow_past_end(c: SheepConn) -> tuple[Request, bytes]:
    vid = (await c.new_vdi("v", 16 * MiB)).vdi_id
    body = obj_body(vid_to_data_oid(vid, 1), 4 * MiB - 10, vid_to_data_oid(vid, 0))
    return req(Op.CREATE_AND_WRITE_OBJ, 20, body, Flag.WRITE | Flag.COW), bytes(20)


async def _write_past_end(c: SheepConn) -> tuple[Request, bytes]:
    vid = await _vdi_with_object(c)
    body = obj_body(vid_to_data_oid(vid, 0), 4 * MiB - 1)
    return req(Op.WRITE_OBJ, 2, body, Flag.WRITE), b"xy"


async def _simple(request: Request, payload: bytes = b"") -> tuple[Request, bytes]:
    return request, payload


CRASHES = {
    "lookup-null-tag": _tagged_snapshot,
    "node-list-buffer": lambda c: _simple(req(Op.GET_NODE_LIST, 80)),
    "cluster-info-buffer": lambda c: _simple(req(Op.CLUSTER_INFO, 4096)),
    "attr-short-payload": lambda c: _simple(
        req(Op.GET_VDI_ATTR, 512, flags=Flag.WRITE), bytes(512)
    ),
    "copy-policy": lambda c: _simple(
        req(Op.NEW_VDI, 256, struct.pack("<QIBBBBII8x", MiB, 0, 3, 0x20, 0, 0, 0, 0), Flag.WRITE),
        name256("ec"),
    ),
    "hyper-btree": _hyper_zeroed,
    "cow-past-end": _cow_past_end,
    "past-end": _write_past_end,
}


@pytest.mark.parametrize("kind", sorted(CRASHES))
async def test_requests_that_crash_a_sheep_take_the_node_down(fake, conn, kind):
    request, payload = await CRASHES[kind](conn)
    other = await SheepConn.open(fake.ports[0])
    await conn.send(request, payload)
    with pytest.raises(DEAD):
        await conn.recv()
    with pytest.raises(DEAD):  # every connection of that node
        await other.recv()
    with pytest.raises(OSError):
        await trio.open_tcp_stream("127.0.0.1", fake.ports[0])
    crashes = fake.control.crashes()
    assert [(e["kind"], e["node"], e["crashed"]) for e in crashes] == [(kind, 0, True)]
    alive = await SheepConn.open(fake.ports[1])
    assert (await alive.call(req(Op.GET_CLUSTER_DEFAULT))).epoch == 2
    assert (await alive.node_list()).nr_nodes == 2
    fake.control.node_up(0)
    assert (await (await SheepConn.open(fake.ports[0])).node_list()).nr_nodes == 3
    fake.control.clear_events()


# -- faults --------------------------------------------------------------------------------


async def test_hang_accepts_and_never_answers(fake):
    fake.control.hang(1)
    hung = await SheepConn.open(fake.ports[1])
    with trio.move_on_after(0.3) as timeout:
        await hung.call(req(Op.GET_CLUSTER_DEFAULT))
    assert timeout.cancelled_caught
    ok = await SheepConn.open(fake.ports[0])
    assert (await ok.call(req(Op.GET_CLUSTER_DEFAULT))).result == Res.SUCCESS
    fake.control.hang(1, on=False)
    assert (await hung.call(req(Op.GET_CLUSTER_DEFAULT))).result == Res.SUCCESS


@pytest.mark.parametrize(("where", "got"), [("header", 24), ("payload", 48 + 2048)])
async def test_close_in_the_middle_of_a_reply(fake, conn, where, got):
    vid = await _vdi_with_object(conn)
    fake.control.close_next_reply(0, where, op="READ_OBJ")
    await conn.send(req(Op.READ_OBJ, 4096, obj_body(vid_to_data_oid(vid, 0), 0)))
    received = bytearray()
    while chunk := await conn.stream.receive_some():
        received += chunk
    assert len(received) == got
    again = await SheepConn.open(fake.ports[0])
    assert (await again.read_obj(vid_to_data_oid(vid, 0), 0, 4)).data == b"old!"


async def test_reset_drops_the_node_s_connections(fake, conn):
    fake.control.delay(5.0, op="GET_CLUSTER_DEFAULT")
    await conn.send(req(Op.GET_CLUSTER_DEFAULT))
    await trio.sleep(0.05)
    fake.control.reset(0)
    with pytest.raises(DEAD):
        await conn.recv()
    fake.control.delay(0, op="GET_CLUSTER_DEFAULT")
    fresh = await SheepConn.open(fake.ports[0])
    assert (await fresh.call(req(Op.GET_CLUSTER_DEFAULT))).result == Res.SUCCESS


async def test_replies_come_in_completion_order(fake, conn):
    fake.control.delay(0.3, op="GET_CLUSTER_DEFAULT")
    await conn.send(req(Op.GET_CLUSTER_DEFAULT, id=1))
    await conn.send(req(Op.STAT_SHEEP, id=2))
    assert [(await conn.recv()).id for _ in range(2)] == [2, 1]


async def test_shuffle_reorders_replies(fake, conn):
    vid = await _vdi_with_object(conn)
    fake.control.shuffle(True, seed=1, window=0.05)
    for k in range(8):
        await conn.send(req(Op.READ_OBJ, 512, obj_body(vid_to_data_oid(vid, 0), 0), id=100 + k))
    ids = [(await conn.recv()).id for _ in range(8)]
    assert sorted(ids) == list(range(100, 108))
    assert ids != sorted(ids)


@pytest.mark.parametrize(
    "result", ["EIO", "NO_SPACE", "HALT", "WAIT_FOR_JOIN", "NETWORK_ERROR", "CLUSTER_ERROR"]
)
async def test_injected_results_replace_the_next_requests(fake, conn, result):
    vid = await _vdi_with_object(conn)
    fake.control.inject(result, op="WRITE_OBJ", count=2)
    oid = vid_to_data_oid(vid, 0)
    for _ in range(2):
        assert (await conn.write_obj(oid, 0, b"new!")).result == Res[result]
    assert (await conn.read_obj(oid, 0, 4)).data == b"old!"  # never ran
    assert (await conn.write_obj(oid, 0, b"new!")).result == Res.SUCCESS


async def test_a_reply_with_an_unknown_id(fake, conn):
    fake.control.unknown_id_reply(0, payload_len=16)
    await conn.send(req(Op.GET_CLUSTER_DEFAULT, id=5))
    bogus = await conn.recv()
    assert bogus.id != 5 and bogus.data_length == 16
    assert (await conn.recv()).id == 5


async def test_external_snapshot_makes_the_next_write_readonly(fake, conn):
    vid = await _vdi_with_object(conn)
    new = await fake.control.snapshot("v", "ext")
    assert new == vid + 1
    assert (await conn.write_obj(vid_to_data_oid(vid, 0), 0, b"new!")).result == Res.READONLY
    assert (await conn.lookup("v")).vdi_id == new
    assert (await conn.lookup("v", "ext")).vdi_id == vid
    assert fake.control.read_vdi("v", 0, 4) == b"old!"


async def test_snapshot_race_loses_an_index_write(fake, conn):
    vid = (await conn.new_vdi("v", 16 * MiB)).vdi_id
    await conn.create_obj(vid_to_data_oid(vid, 2), 0, b"lost")
    fake.control.set_knob("snapshot_race", 0.2)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(fake.control.snapshot, "v", "s")
        await trio.sleep(0.05)  # the base inode has been read: the index write lands after
        assert (await conn.set_index(vid, 2, vid)).result == Res.SUCCESS
    for v in (vid, vid + 1):  # in neither inode (rule 15)
        assert (await conn.read_obj(vid_to_vdi_oid(v), 4664 + 8, 4)).data == bytes(4)


async def test_node_down_and_up_change_the_epoch(fake, conn):
    fake.control.node_down(1)
    with pytest.raises(OSError):
        await trio.open_tcp_stream("127.0.0.1", fake.ports[1])
    assert (await conn.call(req(Op.STAT_SHEEP))).epoch == 2
    fake.control.node_up(1)
    back = await SheepConn.open(fake.ports[1])
    assert (await back.call(req(Op.STAT_SHEEP))).epoch == 3
    assert fake.control.nodes()[1]["up"] is True


# -- locks and nodes --------------------------------------------------------------------


async def test_locks_on_a_use_lock_cluster():
    async with fake_cluster(flags=ClusterFlag.AUTO_VNODES | ClusterFlag.USE_LOCK) as f:
        c0, c1 = await SheepConn.open(f.ports[0]), await SheepConn.open(f.ports[1])
        vid = (await c0.new_vdi("v", 16 * MiB)).vdi_id
        assert (await c0.lookup("v", op=Op.LOCK_VDI)).vdi_id == vid
        assert (await c0.lookup("v", op=Op.LOCK_VDI)).result == Res.VDI_LOCKED
        assert (await c1.lookup("v", op=Op.LOCK_VDI)).result == Res.VDI_LOCKED
        release = req(Op.RELEASE_VDI, body=struct.pack("<QI20x", 0, vid))
        assert (await c1.call(release)).result == Res.SUCCESS  # no owner check
        assert (await c1.call(release)).result == Res.SUCCESS  # unlocked: still SUCCESS
        assert (await c1.lookup("v", op=Op.LOCK_VDI)).result == Res.SUCCESS
        f.control.collecting_cinfo(0)
        assert (await c0.lookup("v", op=Op.LOCK_VDI)).result == Res.COLLECTING_CINFO
        stat = await c0.call(req(Op.STAT_CLUSTER, 48))
        assert struct.unpack_from("<H", stat.data, 30)[0] == 0x0C
        await c0.aclose()
        await c1.aclose()


async def test_locks_are_lookups_without_use_lock(conn):
    vid = (await conn.new_vdi("v", 16 * MiB)).vdi_id
    for _ in range(2):
        assert (await conn.lookup("v", op=Op.LOCK_VDI)).vdi_id == vid
    assert (await conn.call(req(Op.RELEASE_VDI))).result == Res.SUCCESS


async def test_epoch_and_epoch_logs_follow_nodes(fake, conn):
    fake.control.node_down(2)
    fake.control.node_up(2)
    body = bytes(24) + struct.pack("<I", 3) + bytes(4)  # cluster.nodes_nr @40 = 3
    rsp = await conn.call(req(Op.STAT_CLUSTER, 2 * (48 + 3 * 80), body=body))
    assert rsp.epoch == 3
    logs = [struct.unpack_from("<II", rsp.data, k * 288 + 16) for k in range(2)]
    assert logs == [(3, 3), (2, 2)]  # (epoch, nr_nodes), newest first
    assert (await conn.node_list()).nr_nodes == 3


# -- out of process ------------------------------------------------------------------------


def _raw_call(port: int, request: Request, payload: bytes = b"") -> tuple[bytes, bytes]:
    with socket.create_connection(("127.0.0.1", port), 10) as s:
        s.sendall(request.pack() + payload)
        hdr = b""
        while len(hdr) < 48:
            hdr += s.recv(48 - len(hdr))
        n, data = struct.unpack_from("<I", hdr, 12)[0], b""
        while len(data) < n:
            data += s.recv(n - len(data))
    return hdr, data


def test_process_mode_with_control_socket_and_state(tmp_path):
    state = tmp_path / "cluster.state"
    with FakeSheepProcess(nodes=2, state=state) as proc:
        assert proc.control.ports() == proc.ports
        new = req(Op.NEW_VDI, 256, struct.pack("<QI20x", MiB, 0), Flag.WRITE)
        hdr, _ = _raw_call(proc.ports[1], new, name256("kept"))
        vid = struct.unpack_from("<I", hdr, 24)[0]
        proc.control.inject("EIO", op="GET_VDI_INFO")
        look = req(Op.GET_VDI_INFO, 512, flags=Flag.WRITE)
        hdr, _ = _raw_call(proc.ports[0], look, name256("kept") + bytes(256))
        assert struct.unpack_from("<I", hdr, 16)[0] == Res.EIO
        assert proc.control.events() == []
        assert proc.control.read_vdi("kept", 0, 4) == bytes(4)
        with pytest.raises(RemoteError, match="no control method"):
            proc.control.call("format_disk")
    assert state.exists()
    with FakeSheepProcess(nodes=2, state=state) as proc:
        hdr, _ = _raw_call(proc.ports[0], look, name256("kept") + bytes(256))
        assert struct.unpack_from("<I", hdr, 16)[0] == Res.SUCCESS
        assert struct.unpack_from("<I", hdr, 24)[0] == vid
        assert [v["name"] for v in proc.control.vdis()] == ["kept"]
