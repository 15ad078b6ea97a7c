"""The fake sheep's VDI semantics, ported from ``sheep/vdi.c``: lookups by name, tag and
snapid, snapshot, clone and rollback, delete (flat and hyper volumes), attributes,
erasure-coded VDIs and vid recycling on ``-R`` clusters."""

from __future__ import annotations

import struct

import pytest

from tests.fakesheep import fake_cluster
from tests.fakesheep.client import SheepConn, bit, name256, req
from tests.fakesheep.proto import (
    ClusterFlag,
    Flag,
    Op,
    Res,
    obj_body,
    sd_hash_vdi,
    vid_to_data_oid,
    vid_to_vdi_oid,
)
from tests.fakesheep.sparse import poison

pytestmark = pytest.mark.timeout(120)
MiB = 1 << 20


async def _vdi(conn: SheepConn, name: str = "v", size: int = 16 * MiB) -> int:
    rsp = await conn.new_vdi(name, size)
    assert rsp.result == Res.SUCCESS
    return rsp.vdi_id


# -- VDIs ----------------------------------------------------------------------------------


async def test_lookups_by_tag_and_snapid(conn):
    vid = await _vdi(conn, "wdata")
    await conn.write_obj(vid_to_vdi_oid(vid), 256, name256("snap1"))
    new = (await conn.new_vdi("wdata", 16 * MiB, base=vid, snapid=1)).vdi_id
    assert (await conn.lookup("wdata")).vdi_id == new
    assert (await conn.lookup("wdata", "snap1")).vdi_id == vid
    assert (await conn.lookup("wdata", snapid=1)).vdi_id == vid
    assert (await conn.lookup("wdata", snapid=7)).result == Res.NO_TAG
    assert (await conn.lookup("wdata", "nope")).result == Res.NO_TAG
    assert (await conn.lookup("nosuch")).result == Res.NO_VDI
    hdr = await conn.header(new)
    assert struct.unpack_from("<III", hdr, 556) == (2, new, vid)  # snap_id, vdi_id, parent
    assert hdr[256] == 0  # the new working VDI has no tag


async def test_delete_with_entries_left_keeps_the_inode(fake, conn):
    vid = await _vdi(conn)
    await conn.create_obj(vid_to_data_oid(vid, 3), 0, b"x")
    await conn.set_index(vid, 3, vid)
    rsp = await conn.del_vdi("v")
    assert (rsp.result, rsp.vdi_id) == (Res.SUCCESS, vid)
    assert bit((await conn.read_vdis(deleted=True)).data, vid)
    assert (await conn.header(vid))[:2] == b"v\0"
    assert (await conn.lookup("v")).vdi_id == vid
    assert (await conn.new_vdi("v", MiB)).result == Res.VDI_EXIST
    await conn.set_index(vid, 3, 0)
    assert (await conn.del_vdi("v")).result == Res.SUCCESS
    hdr = await conn.header(vid)
    assert hdr[:256] == bytes(256) and hdr[536:544] == bytes(8)
    assert (await conn.lookup("v")).result == Res.NO_VDI
    assert fake.events == []


async def test_deleted_working_vdi_leaves_its_snapshots(conn):
    vid = await _vdi(conn)
    new = (await conn.new_vdi("v", 16 * MiB, base=vid, snapid=1)).vdi_id
    assert (await conn.del_vdi("v")).vdi_id == new
    assert (await conn.lookup("v")).result == Res.NO_VDI
    assert (await conn.lookup("v", snapid=1)).vdi_id == vid
    again = await conn.new_vdi("v", MiB)
    assert again.vdi_id == new + 1
    assert struct.unpack_from("<I", await conn.header(again.vdi_id), 556)[0] == 2


async def test_clone_copies_the_index_and_marks_its_base_read_only(conn):
    vid = await _vdi(conn)
    await conn.create_obj(vid_to_data_oid(vid, 0), 0, b"base")
    await conn.set_index(vid, 0, vid)
    snap = (await conn.new_vdi("v", 16 * MiB, base=vid, snapid=1)).vdi_id
    clone = await conn.new_vdi("c", 16 * MiB, base=vid)
    assert clone.result == Res.SUCCESS and clone.vdi_id == sd_hash_vdi(b"c")
    idx = (await conn.read_obj(vid_to_vdi_oid(clone.vdi_id), 4664, 4)).data
    assert struct.unpack("<I", idx)[0] == vid
    assert (await conn.write_obj(vid_to_data_oid(vid, 0), 0, b"x")).result == Res.READONLY
    assert snap == vid + 1


async def test_hyper_volume_create_and_delete(fake, conn):
    rsp = await conn.new_vdi("hv", 5 << 40, store=1)
    vid = rsp.vdi_id
    root = (await conn.read_obj(vid_to_vdi_oid(vid), 4664, 8)).data
    assert struct.unpack("<HHI", root) == (0x6274, 1, 0)
    await conn.create_obj(vid_to_data_oid(vid, 5), 0, b"x")
    await conn.write_obj(vid_to_vdi_oid(vid), 4664, struct.pack("<HHIII", 0x6274, 1, 1, 5, vid))
    assert (await conn.del_vdi("hv")).result == Res.SUCCESS  # DEL_VDI alone (rule 7)
    assert (await conn.read_obj(vid_to_data_oid(vid, 5), 0, 1)).result == Res.NO_OBJ
    assert (await conn.lookup("hv")).result == Res.NO_VDI
    assert fake.events == []


async def test_attributes_probe_and_slots(conn):
    await _vdi(conn, "wdata")
    s = await conn.attr("wdata", "k", b"one", Flag.WRITE | Flag.CREAT)
    assert (s.result, s.vdi_id) == (Res.SUCCESS, 0x56CEF6)
    slot = s.attr_id
    assert (await conn.attr("wdata", "k")).attr_id == slot
    assert (await conn.attr("wdata", "none")).result == Res.NO_OBJ
    assert (await conn.attr("wdata", "k", b"", Flag.WRITE | Flag.DEL)).result == Res.SUCCESS
    assert (await conn.attr("wdata", "k")).result == Res.NO_OBJ
    x = await conn.attr("wdata", "k", b"two", Flag.WRITE | Flag.CREAT | Flag.EXCL)
    assert (x.result, x.attr_id) == (Res.SUCCESS, slot + 1)
    dup = await conn.attr("wdata", "k", b"3", Flag.WRITE | Flag.CREAT | Flag.EXCL)
    assert dup.result == Res.VDI_EXIST
    await conn.attr("wdata", "k", b"three", Flag.WRITE | Flag.CREAT)  # plain set: slot + 0
    await conn.attr("wdata", "k", b"", Flag.WRITE | Flag.DEL)
    got = await conn.attr("wdata", "k")
    assert got.attr_id == slot + 1
    oid = 0x56CEF6 << 32 | 1 << 61 | got.attr_id
    value = (await conn.read_obj(oid, 0, 66320)).data
    assert value[524:528] == struct.pack("<I", 3) and value[784:787] == b"two"
    assert (await conn.attr("nosuch", "k")).result == Res.NO_VDI


async def test_recycled_vids_on_a_dash_r_cluster():
    async with fake_cluster(flags=ClusterFlag.AUTO_VNODES | ClusterFlag.RECYCLE_VID) as f:
        c = await SheepConn.open(f.ports[0])
        assert (await c.new_vdi("a", MiB)).vdi_id == 1
        assert (await c.new_vdi("b", MiB)).vdi_id == 2
        assert (await c.del_vdi("a")).result == Res.SUCCESS
        assert not bit((await c.read_vdis()).data, 1)
        assert (await c.new_vdi("c", MiB)).vdi_id == 1
        assert (await c.lookup("b")).vdi_id == 2
        await c.aclose()
        assert f.events == []


async def test_rollback_makes_the_working_vdi_a_snapshot(fake, conn):
    vid = await _vdi(conn)
    await conn.create_obj(vid_to_data_oid(vid, 0), 0, b"one")
    await conn.set_index(vid, 0, vid)
    work = (await conn.new_vdi("v", 16 * MiB, base=vid, snapid=1)).vdi_id
    await conn.create_obj(vid_to_data_oid(work, 0), 0, b"two")
    await conn.set_index(work, 0, work)
    back = await conn.new_vdi("v", 16 * MiB, base=vid, snapid=1)  # base is not the working vid
    assert back.vdi_id == work + 1
    assert struct.unpack_from("<Q", await conn.header(work), 520)[0] != 0  # now a snapshot
    idx = (await conn.read_obj(vid_to_vdi_oid(back.vdi_id), 4664, 4)).data
    assert struct.unpack("<I", idx)[0] == vid  # the new working VDI starts from the base
    assert fake.control.read_vdi("v", 0, 3) == b"one"
    assert fake.events == []


async def test_erasure_coded_vdis(fake, conn):
    wide = await conn.new_vdi("wide", 16 * MiB, copies=1, policy=0x21)  # 4 data + 1 parity
    assert (wide.result, wide.copies) == (Res.SUCCESS, 5)
    oid = vid_to_data_oid(wide.vdi_id, 0)
    assert (await conn.create_obj(oid, 0, b"x")).result == Res.SYSTEM_ERROR  # 3 zones < 4
    ec = await conn.new_vdi("ec", 16 * MiB, copies=1, policy=0x11)  # 2 data + 1 parity
    assert ec.copies == 3
    oid = vid_to_data_oid(ec.vdi_id, 0)
    missing = await conn.read_obj(oid, 0, 8192)
    assert (missing.result, missing.data) == (Res.NO_OBJ, poison(8192))  # a full payload
    assert (await conn.create_obj(oid, 0, b"ec data")).result == Res.SUCCESS
    assert (await conn.read_obj(oid, 0, 7)).data == b"ec data"
    assert fake.events == []


async def test_golden_get_vdi_copies(fake, conn):
    vid = await _vdi(conn, "a")
    too_small = await conn.call(req(Op.GET_VDI_COPIES, 100))
    assert (too_small.result, too_small.data_length) == (Res.BUFFER_SMALL, 0)
    rsp = await conn.call(req(Op.GET_VDI_COPIES, 512 * 1428))
    assert rsp.data_length == 1428
    head = struct.unpack_from("<IBBBBB3xII", rsp.data)
    assert head == (vid, 2, 0, 0, 0, 22, 0, 1)  # vid, copies, snapshot, deleted, policy,
    assert rsp.data[20:1428] == bytes(1408)  # shift, parent, unlocked; no owner


async def test_make_fs_formats_the_cluster():
    async with fake_cluster(formatted=False) as f:
        c = await SheepConn.open(f.ports[2])
        body = struct.pack(
            "<QQBBHIIB3x", 0, 7 << 32, 3, 0, 0x0C, 0, 0, 20
        )  # ctime @24 ... shift @44
        assert (await c.call(req(Op.MAKE_FS, 6, body, Flag.WRITE), b"plain\0")).result == 0
        stat = await c.call(req(Op.STAT_CLUSTER, 48))
        assert stat.result == Res.SUCCESS and stat.epoch == 1
        assert struct.unpack_from("<QQIIBB", stat.data) == (7 << 32, 0, 1, 0, 0, 3)
        assert struct.unpack_from("<H", stat.data, 30)[0] == 0x0C
        new = await c.new_vdi("x", MiB)
        assert (new.copies, new.block_size_shift) == (3, 20)
        await c.aclose()
        assert f.events == []


async def test_discard_obj_trims_and_removes(fake, conn):
    vid = await _vdi(conn)
    oid = vid_to_data_oid(vid, 1)
    await conn.create_obj(oid, 0, b"x")
    await conn.set_index(vid, 1, vid)
    assert (await conn.call(req(Op.DISCARD_OBJ, body=obj_body(oid)))).result == Res.SUCCESS
    assert (await conn.read_obj(oid, 0, 1)).result == Res.NO_OBJ
    assert (await conn.read_obj(vid_to_vdi_oid(vid), 4668, 4)).data == bytes(4)
    assert [e["kind"] for e in fake.events] == ["discard-obj"]  # rule 17
    fake.control.clear_events()
