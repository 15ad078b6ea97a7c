"""The fake sheep's own tests: the replay of a real wire transcript (0 differences), the vids
of the real allocator, and golden bytes for what the transcript does not cover.

The fake is only as useful as it is faithful: every test also checks that nothing the client
sent would have crashed (or been mishandled by) a real sheep, unless that is the point.
"""

from __future__ import annotations

import socket
import struct

import pytest
import trio

from tests import replay_wire
from tests.fakesheep import fake_cluster
from tests.fakesheep.client import SheepConn, name256, req
from tests.fakesheep.lookup import get_vdi_bitmap_range
from tests.fakesheep.process import free_port_base
from tests.fakesheep.proto import (
    Flag,
    Op,
    Res,
    obj_body,
    sd_hash_vdi,
    vid_to_data_oid,
    vid_to_vdi_oid,
)
from tests.fakesheep.sparse import poison
from tests.fakesheep.state import ClusterState

pytestmark = pytest.mark.timeout(120)
MiB = 1 << 20
RECORDED_PORTS = [17200, 17201, 17202]


def _ports_free(ports: list[int]) -> bool:
    for p in ports:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", p))
            except OSError:
                return False
    return True


def consecutive_ports(count: int = 3) -> list[int]:
    """Free ports in increasing order, so that node lists keep the recorded node order."""
    base = free_port_base(count)
    return list(range(base, base + count))


# -- the wire transcript -------------------------------------------------------------------


async def test_replay_of_the_wire_transcript_has_no_difference():
    """Every recorded request, byte for byte, on a fresh fake: every reply matches (times,
    free space and heap pointers masked; ports too unless the recorded ones are free)."""
    steps = replay_wire.load()
    exact_ports = _ports_free(RECORDED_PORTS)
    ports = RECORDED_PORTS if exact_ports else consecutive_ports()
    async with fake_cluster(ports=ports) as f:
        lines: list[str] = []
        total, matched, differ, skipped = await trio.to_thread.run_sync(
            lambda: replay_wire.replay(
                steps, "127.0.0.1", f.ports[0], 30.0, not exact_ports, lines.append
            )
        )
        assert f.events == []
    assert differ == 0, "\n".join(lines)
    assert (total, matched, skipped) == (188, 185, 3)


def test_replay_compare_reports_a_changed_reply():
    steps = replay_wire.load()
    ex = next(e for _, exs in steps for e in exs if e["req"]["op"] == "SD_OP_NEW_VDI")
    hdr = bytearray(bytes.fromhex(ex["rsp"]["hdr_hex"]))
    assert replay_wire.compare(ex["rsp"], bytes(hdr), b"") == []
    hdr[24] ^= 1
    assert replay_wire.compare(ex["rsp"], bytes(hdr), b"") == [
        "vdi_id: expected 0x46e93d, got 0x46e93c"
    ]


def test_vids_of_the_transcript_are_the_allocator_s():
    """Fresh names get their FNV-1a hash; a snapshot's working VDI the next clear bit."""
    recorded = {}
    for _, exs in replay_wire.load():
        for ex in exs:
            if ex["req"]["op"] == "SD_OP_NEW_VDI" and ex["rsp"]["res"] == "SD_RES_SUCCESS":
                name = replay_wire.request_bytes(ex["req"])[48:].rstrip(b"\0")
                snap = ex["req"]["fields"].get("snapid", 0)
                recorded.setdefault(name, []).append((snap, ex["rsp"]["fields"]["vdi_id"]))
    for name, vids in recorded.items():
        assert vids[0] == (0, sd_hash_vdi(name)), name
    assert recorded[b"wdata"] == [(0, 0x56CEF6), (1, 0x56CEF7)]
    assert sd_hash_vdi(b"probe45991") == 0x44AFDF  # protocol.md section 3.2


def test_vid_allocation_wraps_and_skips_zero(monkeypatch):
    st = ClusterState.new([0])
    top = (1 << 24) - 1
    monkeypatch.setattr("tests.fakesheep.lookup.sd_hash_vdi", lambda name: top - 1)
    st.vdis.inuse.update({top - 1, top, 1, 2})
    assert get_vdi_bitmap_range(st, b"x") == (Res.SUCCESS, top - 1, 3)  # wrapped to 3
    monkeypatch.setattr("tests.fakesheep.lookup.sd_hash_vdi", lambda name: 0)
    assert get_vdi_bitmap_range(st, b"y") == (Res.SUCCESS, 1, 3)  # 0 becomes 1


async def test_first_clear_bit_after_a_taken_hash(conn):
    first = await conn.new_vdi("alpha", 4 * MiB)
    assert first.vdi_id == sd_hash_vdi(b"alpha")
    snap = await conn.new_vdi("alpha", 4 * MiB, base=first.vdi_id, snapid=1)
    assert snap.vdi_id == first.vdi_id + 1
    again = await conn.new_vdi("alpha", 4 * MiB, base=snap.vdi_id, snapid=1)
    assert again.vdi_id == first.vdi_id + 2


# -- framing and checks --------------------------------------------------------------------


async def test_golden_get_cluster_default(conn):
    rsp = await conn.call(req(Op.GET_CLUSTER_DEFAULT, id=7))
    assert rsp.hdr == struct.pack("<BBHIIII", 0, 0x18, 0, 1, 7, 0, 0) + bytes([2, 0, 22]) + bytes(
        25
    )
    assert rsp.data == b""


async def test_golden_stat_sheep(fake, conn):
    rsp = await conn.call(req(Op.STAT_SHEEP, id=3))
    size = fake.state.nodes[0].space
    expect = struct.pack("<BBHIIIII8xQQ", 0, 0x86, 0, 1, 3, 0, 0, 0, size, size)
    assert rsp.hdr == expect


async def test_golden_node_list_entries(fake, conn):
    rsp = await conn.node_list()
    assert (rsp.result, rsp.nr_nodes, rsp.data_length) == (0, 3, 240)
    by_port = sorted(fake.state.nodes, key=lambda n: n.port)  # sheep's node_cmp order
    for k, node in enumerate(by_port):
        entry = rsp.data[80 * k : 80 * k + 80]
        assert entry[24:40] == bytes(12) + bytes([127, 0, 0, 1])
        fields = struct.unpack_from("<H16xH4xH2xIQ", entry, 40)
        assert fields == (node.port, 0, 128, node.zone, node.space)


@pytest.mark.parametrize(
    ("opcode", "proto_ver", "result"),
    [
        (Op.READ_VDIS, 3, Res.VER_MISMATCH),  # public ops accept 0..2
        (Op.READ_VDIS, 0, Res.INVALID_PARMS),  # accepted; data_length 0 is wrong
        (Op.STAT_SHEEP, 0x09, Res.VER_MISMATCH),  # internal ops need exactly 0x0a
        (Op.STAT_SHEEP, 0x01, Res.VER_MISMATCH),
        (0xF0, 0x01, Res.VER_MISMATCH),  # the version is checked before the opcode
        (0xF0, 0x0A, Res.INVALID_PARMS),
        (0x30, 0x01, Res.INVALID_PARMS),
        (Op.FLUSH_VDI, 0x01, Res.INVALID_PARMS),
    ],
)
async def test_checks_in_the_server_s_order(conn, opcode, proto_ver, result):
    rsp = await conn.call(req(opcode, proto_ver=proto_ver, id=42))
    got = (rsp.result, rsp.opcode, rsp.id, rsp.proto_ver, rsp.data_length)
    assert got == (result, opcode, 42, 0, 0)


@pytest.mark.parametrize("length", [0, 255, 257, 511, 513])
async def test_name_ops_refuse_other_lengths(fake, conn, length):
    payload = name256("x").ljust(max(length, 256), b"\0")[:length]
    flags = Flag.WRITE if length else 0
    for op in (Op.GET_VDI_INFO, Op.DEL_VDI, Op.LOCK_VDI):
        rsp = await conn.call(req(op, length, flags=flags), payload)
        assert rsp.result == Res.INVALID_PARMS
    rsp = await conn.call(req(Op.NEW_VDI, length, flags=flags), payload)
    assert rsp.result == Res.INVALID_PARMS
    fake.control.clear_events()  # length 0 carried no payload: recorded, not fatal


async def test_bitmaps_need_their_exact_length(conn):
    for op in (Op.READ_VDIS, Op.READ_DEL_VDIS):
        assert (await conn.call(req(op, 1 << 20))).result == Res.INVALID_PARMS
        rsp = await conn.call(req(op, 1 << 21))
        assert (rsp.result, rsp.data_length, rsp.data) == (0, 1 << 21, bytes(1 << 21))


async def test_unformatted_cluster_answers_wait_except_force_ops():
    async with fake_cluster(formatted=False) as f:
        c = await SheepConn.open(f.ports[0])
        assert (await c.lookup("x")).result == Res.WAIT_FOR_FORMAT
        assert (await c.read_obj(vid_to_vdi_oid(1), 0, 8)).result == Res.WAIT_FOR_FORMAT
        assert (await c.read_vdis()).result == Res.SUCCESS
        assert (await c.node_list()).result == Res.SUCCESS
        assert (await c.call(req(0x30))).result == Res.INVALID_PARMS
        stat = await c.call(req(Op.STAT_CLUSTER, 48))
        assert (stat.result, stat.data_length) == (Res.WAIT_FOR_FORMAT, 0)
        f.control.set_status("wait_join")
        f.state.cinfo.ctime = 1
        assert (await c.lookup("x")).result == Res.WAIT_FOR_JOIN
        await c.aclose()


async def test_payload_without_write_flag_is_recorded(fake, conn):
    rsp = await conn.call(req(Op.GET_VDI_INFO, 512))  # no WRITE: sheep reads no payload
    assert rsp.result == Res.NO_VDI
    assert [e["kind"] for e in fake.events] == ["no-write-flag", "empty-name"]
    fake.control.clear_events()


# -- objects -------------------------------------------------------------------------------


async def _vdi(conn: SheepConn, name: str = "v", size: int = 16 * MiB) -> int:
    rsp = await conn.new_vdi(name, size)
    assert rsp.result == Res.SUCCESS
    return rsp.vdi_id


async def test_objects_create_write_read(fake, conn):
    vid = await _vdi(conn)
    oid = vid_to_data_oid(vid, 0)
    missing = await conn.read_obj(oid, 0, 4096)
    assert (missing.result, missing.data_length) == (Res.NO_OBJ, 0)
    assert (await conn.write_obj(oid, 0, b"x")).result == Res.NO_OBJ
    assert (await conn.create_obj(oid, 10, b"A" * 5)).result == Res.SUCCESS
    assert (await conn.create_obj(oid, 100, b"B" * 5)).result == Res.SUCCESS  # replaces
    assert (await conn.write_obj(oid, 102, b"W")).result == Res.SUCCESS
    got = await conn.read_obj(oid, 0, 4 * MiB)
    assert got.data == bytes(100) + b"BBWBB" + bytes(4 * MiB - 105)
    assert fake.events == []


async def test_copy_on_write_and_the_read_only_snapshot(fake, conn):
    vid = await _vdi(conn)
    await conn.create_obj(vid_to_data_oid(vid, 0), 0, b"P" * 4096)
    await conn.set_index(vid, 0, vid)
    snap = await conn.new_vdi("v", 16 * MiB, base=vid, snapid=1)
    new = snap.vdi_id
    assert (await conn.write_obj(vid_to_data_oid(vid, 0), 0, b"x")).result == Res.READONLY
    assert (await conn.create_obj(vid_to_data_oid(vid, 1), 0, b"x")).result == Res.READONLY
    assert (await conn.write_obj(vid_to_vdi_oid(vid), 256, name256("t"))).result == Res.SUCCESS
    cow = await conn.create_obj(vid_to_data_oid(new, 0), 8, b"CC", cow_oid=vid_to_data_oid(vid, 0))
    assert cow.result == Res.SUCCESS
    data = (await conn.read_obj(vid_to_data_oid(new, 0), 0, 16)).data
    assert data == b"P" * 8 + b"CC" + b"P" * 6
    whole = await conn.create_obj(vid_to_data_oid(new, 1), 0, b"Z" * (4 * MiB), cow_oid=1)
    assert whole.result == Res.SUCCESS  # a whole-object COW never reads the source
    assert fake.events == []


async def test_reads_past_the_end_serve_poison_when_asked(fake, conn):
    fake.control.set_knob("past_end", "serve")
    vid = await _vdi(conn)
    oid = vid_to_data_oid(vid, 0)
    await conn.create_obj(oid, 0, b"D" * 16)
    rsp = await conn.read_obj(oid, 4 * MiB - 100, 200)
    assert (rsp.result, rsp.data) == (Res.SUCCESS, bytes(100) + poison(100))
    assert [(e["kind"], e["crashed"]) for e in fake.events] == [("past-end", False)]
    fake.control.clear_events()


async def test_index_writes_zero_gref_and_drop_unshared_objects(fake, conn):
    vid = await _vdi(conn)
    for i in range(2):
        await conn.create_obj(vid_to_data_oid(vid, i), 0, b"x")
        await conn.set_index(vid, i, vid)
    snap = (await conn.new_vdi("v", 16 * MiB, base=vid, snapid=1)).vdi_id
    inode = (await conn.read_obj(vid_to_vdi_oid(snap), 4198968, 16)).data
    assert struct.unpack("<4I", inode) == (1, 0, 1, 0)  # generation 1, count 0
    base = (await conn.read_obj(vid_to_vdi_oid(vid), 4198968, 16)).data
    assert struct.unpack("<4I", base) == (0, 1, 0, 1)  # count 1: one child reference
    await conn.set_index(snap, 0, 0)  # the snapshot still holds object 0
    assert (await conn.read_obj(vid_to_vdi_oid(snap), 4198968, 8)).data == bytes(8)
    assert (await conn.read_obj(vid_to_data_oid(vid, 0), 0, 1)).result == Res.SUCCESS
    await conn.set_index(vid, 0, 0)  # last reference gone
    assert (await conn.read_obj(vid_to_data_oid(vid, 0), 0, 1)).result == Res.NO_OBJ
    fresh = await _vdi(conn, "w")
    await conn.create_obj(vid_to_data_oid(fresh, 0), 0, b"x")
    await conn.set_index(fresh, 0, fresh)
    await conn.set_index(fresh, 0, 0)  # gref (0, 0): removed at once
    assert (await conn.read_obj(vid_to_data_oid(fresh, 0), 0, 1)).result == Res.NO_OBJ
    assert fake.events == []


async def test_concurrent_creates_of_one_object_lose_a_write(fake, conn):
    """Rule 12: the second create finds the O_EXCL temp file, answers SUCCESS and writes
    nothing; a WRITE_OBJ pipelined behind a create overtakes it and fails NO_OBJ."""
    vid = await _vdi(conn)
    oid = vid_to_data_oid(vid, 0)
    fake.control.delay(0.2, op="CREATE_AND_WRITE_OBJ")
    other = await SheepConn.open(fake.ports[1])
    await conn.send(req(Op.CREATE_AND_WRITE_OBJ, 5, obj_body(oid), Flag.WRITE, id=1), b"first")
    await trio.sleep(0.02)
    assert (await other.create_obj(oid, 0, b"again")).result == Res.SUCCESS  # answered first
    assert (await other.write_obj(oid, 0, b"W")).result == Res.NO_OBJ
    assert (await conn.recv()).result == Res.SUCCESS
    assert (await other.read_obj(oid, 0, 5)).data == b"first"
    kinds = [e["kind"] for e in fake.events]
    assert kinds == ["concurrent-create", "write-behind-create"]
    fake.control.clear_events()
    await other.aclose()


async def test_rule_breaking_requests_are_recorded(fake, conn):
    assert (await conn.new_vdi("", MiB)).result == Res.SUCCESS
    vid = await _vdi(conn)
    await conn.write_obj(vid_to_vdi_oid(vid), 4660, bytes(8))  # header and index at once
    await conn.write_obj(vid_to_vdi_oid(vid), 4198968 - 4, bytes(8))  # into gref
    await conn.new_vdi("odd", MiB, shift=12)
    kinds = [e["kind"] for e in fake.events]
    assert kinds == ["empty-name", "header-and-index", "gref-write", "block-size-shift"]
    assert not fake.control.crashes()
    fake.control.clear_events()
