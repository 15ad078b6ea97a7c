"""Protocol rules 7, 11, 16-21, 28 and 30-33 (protocol.md section 1) in the sheep backend:
each test fails if the backend breaks the rule it names. On the fake cluster (a raw
connection to node 1 is another client; no broken rule recorded at the end), or on a
scripted sheep for answers the fake cannot give."""

from __future__ import annotations

import ast
import os
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from sheepfs.backends.base import Layout
from sheepfs.backends.sheep import SheepBackend, proto
from sheepfs.backends.sheep.inode import INDEX_TTL
from sheepfs.backends.sheep.proto import Op, Res
from sheepfs.backends.sheep.structs import InodeHeader
from sheepfs.core.filesystem import CoreConfig, Filesystem
from sheepfs.errors import Exists, InvalidArgument, NotFound
from sheepfs.spool import Spool
from tests.fakesheep import RunningFake, fake_cluster
from tests.fakesheep.client import SheepConn
from tests.fakesheep.proto import ClusterFlag
from tests.sheep_script import Got, Peer, start

pytestmark = pytest.mark.timeout(60)
MiB = 1 << 20
LOCKING = ClusterFlag.AUTO_VNODES | ClusterFlag.USE_LOCK
RECYCLING = ClusterFlag.AUTO_VNODES | ClusterFlag.RECYCLE_VID
LAYOUTS = [(Layout(23, 2, 1), 3, 0x11), (Layout(21, 3), 3, 0)]  # (layout, copies, policy)
SHEEP_PACKAGE = Path(__file__).resolve().parent.parent / "sheepfs" / "backends" / "sheep"


@asynccontextmanager
async def cluster(**fake: int) -> AsyncIterator[tuple[RunningFake, SheepBackend, SheepConn]]:
    """The fake, the backend on node 0 and a raw connection to node 1: another client."""
    async with fake_cluster(nodes=3, **fake) as running:
        other = await SheepConn.open(running.ports[1])
        async with SheepBackend([running.address(0)], timeout=10) as backend:
            yield running, backend, other
        await other.aclose()
        assert running.events == []  # nothing a real sheep would crash on or mishandle


def working(fake: RunningFake, name: str) -> dict:
    (found,) = [v for v in fake.control.vdis() if v["name"] == name and not v["snapshot"]]
    return found


def snap(fake: RunningFake, name: str, tag: str) -> dict:
    (found,) = [v for v in fake.control.vdis() if (v["name"], v["tag"]) == (name, tag)]
    assert found["snapshot"]
    return found


def inode_writes(fake: RunningFake, vid: int) -> list[tuple[int, int]]:
    """(offset, length) of every WRITE_OBJ to vid's inode the backend (node 0) sent."""
    mine = ("WRITE_OBJ", proto.ioid(vid), 0)
    reqs = fake.control.requests()
    return [(r["offset"], r["data_length"]) for r in reqs if (r["op"], r["oid"], r["node"]) == mine]


async def put(other: SheepConn, vid: int, index: int, data: bytes) -> None:
    """Another client writes a new object of vid and publishes it."""
    assert (await other.create_obj(proto.doid(vid, index), 0, data)).result == Res.SUCCESS
    assert (await other.set_index(vid, index, vid)).result == Res.SUCCESS


async def test_rule_7_a_hyper_volume_is_deleted_by_del_vdi_alone():
    async with cluster() as (fake, backend, other):
        vid = (await other.new_vdi("hyp", 64 * MiB, store=1)).vdi_id
        assert (await other.create_obj(proto.doid(vid, 3), 0, b"hyper")).result == Res.SUCCESS
        root = struct.pack("<HHIII", 0x6274, 1, 1, 3, vid)  # a depth-1 B-tree: object 3
        assert (await other.write_obj(proto.ioid(vid), proto.INDEX_OFFSET, root)).result == 0
        assert await backend.read(b"hyp", 12 * MiB, 5) == b"hyper"
        fake.control.requests(clear=True)
        await backend.delete(b"hyp")
        assert inode_writes(fake, vid) == []  # the root is not zeroed: DEL_VDI alone
        assert not fake.state.store.exists(proto.doid(vid, 3))  # the sheep removed it
        assert await backend.lookup(b"hyp") is None


@pytest.mark.parametrize("shift", [1, 12, 19, 32, 255])
async def test_rule_11_an_object_size_sheep_cannot_have_is_refused_before_new_vdi(shift):
    async with cluster() as (fake, backend, _):
        with pytest.raises(InvalidArgument):
            await backend.create(b"x", MiB, Layout(shift))
        assert "NEW_VDI" not in fake.control.op_counts()
        await backend.create(b"x", MiB, Layout(20))  # the two ends of what sheep takes
        await backend.create(b"y", MiB, Layout(31))
        shifts = {v["name"]: v["block_size_shift"] for v in fake.control.vdis()}
        assert shifts == {"x": 20, "y": 31}


async def test_rule_16_resize_and_delete_act_on_the_vid_looked_up_just_then():
    """The cached vid became someone else's snapshot: resizing or deleting it would
    resize the snapshot, zero its index and keep the working VDI."""
    old = os.urandom(MiB)
    async with cluster() as (fake, backend, _):
        await backend.create(b"v", 8 * MiB)
        await backend.write(b"v", 4 * MiB, old)
        assert await backend.read(b"v", 4 * MiB, MiB) == old  # the vid is cached now
        await fake.control.snapshot("v", "theirs")
        await backend.resize(b"v", 16 * MiB)
        assert snap(fake, "v", "theirs")["size"] == 8 * MiB
        assert working(fake, "v")["size"] == 16 * MiB
        await backend.delete(b"v")
        assert await backend.lookup(b"v") is None
        assert fake.control.read_vdi("v", 4 * MiB, MiB, tag="theirs") == old


async def test_rule_18_a_snapshot_is_based_on_the_working_vid_never_a_rollback():
    async with cluster() as (fake, backend, other):
        await backend.create(b"v", 8 * MiB)
        await backend.write(b"v", 0, b"before")
        assert await backend.read(b"v", 0, 6) == b"before"  # the vid is cached now
        await fake.control.snapshot("v", "theirs")
        latest = working(fake, "v")["vid"]
        await put(other, latest, 1, b"latest")  # written after their snapshot
        await backend.snapshot(b"v", "mine")
        assert snap(fake, "v", "mine")["vid"] == latest
        assert working(fake, "v")["parent"] == latest
        assert snap(fake, "v", "theirs")["vid"] != latest  # kept its tag
        assert fake.control.read_vdi("v", 4 * MiB, 6) == b"latest"  # nothing rolled back
        assert fake.control.read_vdi("v", 0, 6) == b"before"


async def test_rule_17_truncating_replacing_and_deleting_send_no_discard_obj(tmp_path):
    async with fake_cluster(nodes=3) as fake:
        backend = SheepBackend([fake.address(0)], timeout=10)
        fs = Filesystem(backend, Spool(tmp_path / "spool"), CoreConfig(cache_size=16 * MiB))
        async with fs.running():
            opened, _ = await fs.create(b"t")
            for at in range(0, 12 * MiB, MiB):
                await fs.write(opened.fh, at, os.urandom(MiB))
            await fs.release(opened.fh)
            ino = (await fs.lookup(b"t")).ino
            await fs.truncate(ino, 5 * MiB)  # shorter: a new VDI replaces it
            opened = await fs.open(ino, writing=True, truncate=True)
            await fs.write(opened.fh, 0, b"again")
            await fs.release(opened.fh)
            await backend.snapshot(b"t", "s")
            await backend.delete_snapshot(b"t", "s")
            await fs.unlink(b"t")
        counts = fake.control.op_counts()
        assert "DISCARD_OBJ" not in counts and counts["DEL_VDI"] >= 3
        assert fake.events == []


def test_rule_17_no_sheep_module_can_send_discard_obj():
    """Opcode 0x05 is not an Op, and no request is built from a literal 5 or a DISCARD name."""
    assert 0x05 not in {int(op) for op in Op}
    found = []
    for path in sorted(SHEEP_PACKAGE.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and "DISCARD" in node.attr.upper():
                found.append(f"{path.name}:{node.lineno}")
            if isinstance(node, ast.Call) and ast.unparse(node.func).endswith("Request"):
                first = node.args[:1]
                if first and isinstance(first[0], ast.Constant) and first[0].value == 0x05:
                    found.append(f"{path.name}:{node.lineno}")
    assert found == []


@pytest.mark.parametrize("layout, copies, policy", LAYOUTS)
async def test_rule_19_snapshots_and_clones_keep_the_base_layout(layout, copies, policy):
    """The cluster default (22, 2 copies, replicated) differs in every field."""
    data = os.urandom(9 * MiB)
    async with cluster() as (fake, backend, _):
        await backend.create(b"fam", 24 * MiB, layout)
        await backend.write(b"fam", 0, data)
        await backend.snapshot(b"fam", "s1")
        await backend.clone(b"fam", "s1", b"kid")
        await backend.write(b"fam", 8 * MiB + 5, b"cow")  # copy-on-write after the snapshot
        await backend.write(b"kid", 5, b"kid")
        family = [v for v in fake.control.vdis() if v["name"] in ("fam", "kid")]
        assert len(family) == 3
        for v in family:
            got = fake.state.vdis.entries[v["vid"]].copy_policy, v["store_policy"], v["size"]
            assert (v["block_size_shift"], v["copies"]) == (layout.block_size_shift, copies)
            assert got == (policy, 0, 24 * MiB)
        assert await backend.read(b"kid", 0, len(data)) == data[:5] + b"kid" + data[8:]
        cow = data[: 8 * MiB + 5] + b"cow" + data[8 * MiB + 8 :]
        assert await backend.read(b"fam", 0, len(data)) == cow
        assert fake.control.read_vdi("fam", 0, len(data), tag="s1") == data


async def test_rule_20_a_flat_delete_zeroes_every_entry_and_frees_the_name():
    used = [*range(130), 200, 300]  # a run longer than one index write, and lone objects
    async with cluster() as (fake, backend, other):
        await backend.create(b"d", 400 * MiB, Layout(20))
        for i in used:
            await backend.write(b"d", i * MiB + 7, b"x")
        vid = working(fake, "d")["vid"]
        await backend.delete(b"d")
        assert await backend.lookup(b"d") is None
        assert not any(fake.state.store.exists(proto.doid(vid, i)) for i in used)
        assert (await other.new_vdi("d", MiB)).result == Res.SUCCESS  # not VDI_EXIST


async def test_rule_21_a_resize_writes_the_size_alone_and_only_grows():
    async with cluster() as (fake, backend, other):
        await backend.create(b"r", 8 * MiB)
        vid = working(fake, "r")["vid"]
        fake.control.requests(clear=True)
        fake.control.delay(0.3, op="WRITE_OBJ", node=0)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(backend.resize, b"r", 16 * MiB)
            while not fake.control.op_counts().get("WRITE_OBJ"):
                await trio.sleep(0.01)
            # its header is read and its write on the way: someone tags the VDI meanwhile
            tag = await other.write_obj(proto.ioid(vid), 256, proto.pad(b"theirs"))
            assert tag.result == Res.SUCCESS
        header = InodeHeader.parse(await other.header(vid))
        assert (header.vdi_size, header.tag) == (16 * MiB, b"theirs")
        assert inode_writes(fake, vid) == [(536, 8)]
        fake.control.requests(clear=True)
        with pytest.raises(InvalidArgument):
            await backend.resize(b"r", 4 * MiB)
        with pytest.raises(InvalidArgument):
            await backend.write(b"r", 16 * MiB - 2, b"past")  # nothing past vdi_size
        sent = {r["op"] for r in fake.control.requests()}
        assert not sent & {"WRITE_OBJ", "CREATE_AND_WRITE_OBJ"}
        assert working(fake, "r")["size"] == 16 * MiB


# -- a scripted sheep, for answers the fake cannot give --------------------------------------

_HEADER = struct.Struct("<256s256sQQQQQBBBBIIII")
_OBJ = struct.Struct("<QQBBBBIII")
_ELOG = struct.pack("<QQIIBBB3xH16s", 1 << 32, 0, 1, 3, 0, 2, 0, 0x04, b"plain")
_FIXED = {Op.STAT_CLUSTER: {"payload": _ELOG}, Op.GET_CLUSTER_DEFAULT: {"body": bytes([2, 0, 22])}}


def inode(name: bytes, vid: int, snap_ctime: int) -> bytes:
    """A 4 MiB VDI's header (its index all holes), a snapshot if ``snap_ctime``."""
    fields = (name, b"", 1 << 32, snap_ctime, 0, 4 * MiB, 0, 0, 0, 2, 22, 1, vid, 0, 0)
    return _HEADER.pack(*fields).ljust(proto.INODE_HEADER_SIZE, b"\0")


class Scripted:
    """Lookups of (name, tag), inode reads, every NEW_VDI answered ``new_vdi``; a record."""

    def __init__(self, vids: dict, inodes: dict, new_vdi: tuple[int, int]) -> None:
        self.vids, self.inodes, self.new_vdi = vids, inodes, new_vdi
        self.got: list[Got] = []

    @property
    def opcodes(self) -> list[int]:
        return [g.opcode for g in self.got]

    def object_vids(self) -> set[int]:
        ops = (Op.READ_OBJ, Op.WRITE_OBJ, Op.CREATE_AND_WRITE_OBJ)
        return {_OBJ.unpack_from(g.body)[0] >> 32 & 0xFFFFFF for g in self.got if g.opcode in ops}

    async def serve(self, peer: Peer) -> None:
        while (got := await peer.request()) is not None:
            self.got.append(got)
            await peer.reply(got, **{"payload": b"", **self.answer(got)})

    def answer(self, got: Got) -> dict:
        """What ``Peer.reply`` sends back to ``got``, past the defaults (SUCCESS, nothing)."""
        if got.opcode in (Op.GET_VDI_INFO, Op.NEW_VDI):
            name, tag = got.payload[:256].rstrip(b"\0"), got.payload[256:].rstrip(b"\0")
            vid = self.vids.get((name, tag), 0)
            result = Res.SUCCESS if vid else Res.NO_VDI
            if got.opcode == Op.NEW_VDI:
                result, vid = self.new_vdi
            return {"result": result, "body": struct.pack("<4xI", vid)}
        if got.opcode == Op.READ_OBJ:
            oid, *_, offset, _ = _OBJ.unpack_from(got.body)
            if (image := self.inodes.get(oid)) is None:
                return {"result": Res.NO_OBJ}
            data = image[offset : offset + got.data_length]
            return {"payload": data.ljust(got.data_length, b"\0")}
        return _FIXED.get(got.opcode, {})


async def test_rule_28_only_a_snapshot_is_cloned(nursery):
    """A lookup by tag that answers a working VDI (snap_ctime 0): no NEW_VDI from it."""
    base = proto.ioid(0x42)
    script = Scripted({(b"base", b"t"): 0x42}, {base: inode(b"base", 0x42, 0)}, (0, 0x43))
    sheep = await start(nursery, script.serve)
    async with SheepBackend([sheep.address], timeout=5) as backend:
        with pytest.raises(InvalidArgument):
            await backend.clone(b"base", "t", b"kid")
        assert Op.NEW_VDI not in script.opcodes
        script.inodes[base] = inode(b"base", 0x42, 7 << 32)  # the same, as a snapshot
        await backend.clone(b"base", "t", b"kid")
        assert script.opcodes.count(Op.NEW_VDI) == 1


async def test_rule_31_the_vdi_id_of_a_failed_new_vdi_is_never_used(nursery):
    vids = {(b"x", b""): 0x77, (b"base", b"t"): 0x42}
    known = [(b"x", 0x77, 0), (b"base", 0x42, 9), (b"another", 0xBAD, 0)]  # 0xBAD is one too
    inodes = {proto.ioid(v): inode(n, v, c) for n, v, c in known}
    script = Scripted(vids, inodes, (Res.VDI_EXIST, 0xBAD))
    sheep = await start(nursery, script.serve)
    async with SheepBackend([sheep.address], timeout=5) as backend:
        with pytest.raises(Exists):
            await backend.create(b"x", MiB)
        with pytest.raises(Exists):
            await backend.clone(b"base", "t", b"x")
        assert await backend.read(b"x", 0, 4) == bytes(4)  # x as its lookup names it
    assert script.opcodes.count(Op.NEW_VDI) == 2
    assert 0x77 in script.object_vids() and 0xBAD not in script.object_vids()


async def test_rule_31_a_deleted_working_vdi_is_gone_while_its_snapshots_stay():
    """NO_VDI once the working VDI is deleted; a tag picks its own snapshot (tag OR
    snapid: a snapid sent with it would match the newer snapshot first)."""
    data = os.urandom(MiB)
    async with cluster() as (fake, backend, _):
        await backend.create(b"v", 8 * MiB)
        await backend.write(b"v", 0, data)
        await fake.control.snapshot("v", "a")  # snap_id 1
        await fake.control.snapshot("v", "b")  # snap_id 2
        await backend.delete_snapshot(b"v", "a")
        with pytest.raises(LookupError):
            fake.control.read_vdi("v", 0, 1, tag="a")
        await backend.delete(b"v")
        assert await backend.lookup(b"v") is None
        assert b"v" not in await backend.list()
        await backend.create(b"v", 4 * MiB)
        assert await backend.read(b"v", 0, 4) == bytes(4)
        assert fake.control.read_vdi("v", 0, MiB, tag="b") == data


async def test_rule_30_a_listing_skips_deleted_vids_and_zero_named_inodes():
    async with cluster() as (fake, backend, other):
        await backend.create(b"keep", 4 * MiB)
        ghost = (await other.new_vdi("ghost", 4 * MiB)).vdi_id
        await put(other, ghost, 0, b"x")
        assert (await other.del_vdi("ghost")).result == Res.SUCCESS  # kept: an entry is left
        assert any(v["name"] == "ghost" and v["deleted"] for v in fake.control.vdis())
        blank = (await other.new_vdi("blank", 4 * MiB)).vdi_id
        assert (await other.write_obj(proto.ioid(blank), 0, bytes(256))).result == 0
        await backend.create(b"gone", 4 * MiB)
        await backend.write(b"gone", 0, b"y")
        await backend.delete(b"gone")
        assert set(await backend.list()) == {b"keep"}


async def recycled(fake: RunningFake, backend: SheepBackend, other: SheepConn) -> None:
    """The backend has A cached; another client deletes A and makes B, with A's vid."""
    await backend.create(b"A", 8 * MiB)
    await backend.write(b"A", 0, b"A-bytes")  # loads A into the cache
    vid = working(fake, "A")["vid"]
    assert (await other.set_index(vid, 0, 0)).result == Res.SUCCESS
    assert (await other.del_vdi("A")).result == Res.SUCCESS
    assert (await other.new_vdi("B", 8 * MiB)).vdi_id == vid  # -R reuses it
    await put(other, vid, 0, b"B-bytes")
    await put(other, vid, 1, b"B-hole")  # where A has a hole


@pytest.mark.parametrize("reopen", ["lookup", "list"])
async def test_rule_32_a_reused_vid_is_never_read_as_the_deleted_vdi(reopen):
    async with cluster(flags=RECYCLING) as (fake, backend, other):
        await recycled(fake, backend, other)
        if reopen == "lookup":
            assert await backend.lookup(b"A") is None
        else:
            assert set(await backend.list()) == {b"B"}
        with pytest.raises(NotFound):
            await backend.read(b"A", 0, 7)
        assert await backend.read(b"B", 0, 7) == b"B-bytes"


async def test_rule_32_an_index_read_again_under_a_reused_vid_is_refused():
    """A hole read after INDEX_TTL reads the index again: under a reused vid that is B's."""
    async with cluster(flags=RECYCLING) as (fake, backend, other):
        await recycled(fake, backend, other)
        await trio.sleep(INDEX_TTL + 0.1)
        with pytest.raises(NotFound):
            await backend.read(b"A", 4 * MiB, 6)
        with pytest.raises(NotFound):  # and the cached A is dropped
            await backend.read(b"A", 0, 7)


async def test_rule_33_another_nodes_lock_keeps_nobody_out():
    """Locks are advisory: with another node holding one, the backend reads and writes,
    sees the other writer's data on the next open, and takes or releases no lock."""
    async with cluster(flags=LOCKING) as (fake, backend, other):
        await backend.create(b"L", 8 * MiB)
        assert (await other.lookup("L", op=Op.LOCK_VDI)).result == Res.SUCCESS
        await backend.write(b"L", 0, b"mine")
        await put(other, working(fake, "L")["vid"], 1, b"theirs")
        await backend.write(b"L", 4, b"-and-more")
        assert await backend.lookup(b"L") is not None  # what an open does
        assert await backend.read(b"L", 0, 13) == b"mine-and-more"
        assert await backend.read(b"L", 4 * MiB, 6) == b"theirs"
        counts = fake.control.op_counts()
        assert counts["LOCK_VDI"] == 1 and "RELEASE_VDI" not in counts
        assert (await other.lookup("L", op=Op.LOCK_VDI)).result == Res.VDI_LOCKED  # still held
