"""The data rules a sheep client must keep (protocol.md §1: rules 12, 14, 15, 25, 26, 29,
34, 35), each tested so that it fails when the client breaks the rule: against the fake
sheep, which records what a real sheep would lose data or crash on, checking the bytes the
cluster holds and the requests it was sent, not only what the client reads back."""

from __future__ import annotations

import errno
import os
import struct
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing, asynccontextmanager

import pytest
import trio

from sheepfs.backends.base import Layout
from sheepfs.backends.sheep import SheepBackend
from sheepfs.backends.sheep.inode import INDEX_TTL
from sheepfs.backends.sheep.proto import INDEX_OFFSET, doid, ioid
from sheepfs.errors import BackendError, NoSpace, ReadOnly, Unavailable
from tests.fakesheep import RunningFake, fake_cluster
from tests.fakesheep.client import SheepConn

pytestmark = pytest.mark.timeout(60)
MiB = 1 << 20
S = 4 * MiB  # the default object size
GREF_OFFSET = 4_198_968
BTREE_MAGIC = 0x6274


@asynccontextmanager
async def fake_and_backend(timeout: float = 10) -> AsyncIterator[tuple[RunningFake, SheepBackend]]:
    """A 3-node fake and a backend on it; at the end, no broken rule the fake saw."""
    async with fake_cluster(nodes=3) as fake:
        async with SheepBackend([fake.address(0)], timeout=timeout) as backend:
            yield fake, backend
        assert fake.events == []


async def raw(fake: RunningFake) -> aclosing[SheepConn]:
    """A connection of another client of the same cluster, closed after its block."""
    return aclosing(await SheepConn.open(fake.ports[0]))


def stored(fake: RunningFake, name: str, offset: int, length: int, tag: str = "") -> bytes:
    """What the cluster holds, read through its index, whatever the client caches."""
    return fake.control.read_vdi(name, offset, length, tag=tag)


def vid_of(fake: RunningFake, name: str, tag: str = "") -> int:
    """The vid of working VDI ``name``, or of its snapshot ``tag``."""
    want, vdis = (name, tag, bool(tag)), fake.control.vdis()
    return max(v["vid"] for v in vdis if (v["name"], v["tag"], v["snapshot"]) == want)


def sent(fake: RunningFake, op: str, oid: int | None = None) -> list[dict]:
    return [r for r in fake.control.requests() if r["op"] == op and oid in (None, r["oid"])]


def data_reads(fake: RunningFake) -> list[tuple[int, int, int]]:
    """(oid, offset, length) of every READ_OBJ of a data object (not of an inode)."""
    reads = sent(fake, "READ_OBJ")
    return [(r["oid"], r["offset"], r["data_length"]) for r in reads if not r["oid"] >> 63]


def arrived(fake: RunningFake, op: str) -> int:
    """Requests of ``op`` the fake has received (counted before any delay)."""
    return fake.control.op_counts().get(op, 0)


async def until(ready: Callable[[], bool]) -> None:
    with trio.fail_after(5):
        while not ready():
            await trio.sleep(0.002)


async def both(*calls: Callable[[], object]) -> None:
    async with trio.open_nursery() as nursery:
        for call in calls:
            nursery.start_soon(call)


@pytest.mark.parametrize("cut_off", [False, True])
async def test_rule12_two_writes_into_one_hole_make_one_create(cut_off):
    """Rule 12: two write calls into one hole at once: one creates the object, the other
    waits for it and writes in place, both kept; also when both waited out a create cut
    off in flight (rule 22) and their waits end together."""
    a, b = os.urandom(3000), os.urandom(3000)
    async with fake_and_backend(timeout=1.0) as (fake, backend):
        await backend.create(b"h", 2 * S)
        await backend.write(b"h", S, b"loaded")  # the VDI is cached before the race
        if cut_off:
            fake.control.close_next_reply(0, where="header", op="CREATE_AND_WRITE_OBJ")
            with pytest.raises(Unavailable):
                await backend.write(b"h", 0, b"cut off")
        fake.control.requests(clear=True)
        fake.control.delay(0.1, op="CREATE_AND_WRITE_OBJ")
        await both(lambda: backend.write(b"h", 0, a), lambda: backend.write(b"h", 5000, b))
        assert len(sent(fake, "CREATE_AND_WRITE_OBJ", doid(vid_of(fake, "h"), 0))) == 1
        assert stored(fake, "h", 0, 8000) == a + bytes(2000) + b


def inode_writes(fake: RunningFake) -> list[tuple[int, dict, set[int]]]:
    """(position in the request log, request, index entries it covers) of inode writes."""
    out = []
    for k, r in enumerate(fake.control.requests()):
        if r["op"] == "WRITE_OBJ" and r["oid"] >> 63:
            start, end = r["offset"] - INDEX_OFFSET, r["offset"] + r["data_length"] - INDEX_OFFSET
            out.append((k, r, set(range(max(0, start) // 4, (end + 3) // 4))))
    return out


def check_inode_writes(fake: RunningFake, changed: set[int]) -> None:
    """Rule 14: each inode write is a header field or a run of entries in ``changed``,
    never both, never into gref; together they cover ``changed``."""
    covered: set[int] = set()
    for _, r, entries in inode_writes(fake):
        if entries:  # not a header field (tag, size)
            assert INDEX_OFFSET <= r["offset"] and r["offset"] + r["data_length"] <= GREF_OFFSET
            assert entries <= changed, f"unchanged entries {entries - changed} rewritten"
            covered |= entries
    assert covered == changed


async def test_rule14_an_entry_is_published_only_after_its_data_succeeded():
    """Rule 14: no index write for a create that failed; each one after its create's
    SUCCESS, even while creates are slow."""
    async with fake_and_backend() as (fake, backend):
        await backend.create(b"p", 4 * S)
        vid = vid_of(fake, "p")
        fake.control.inject("NO_SPACE", op="CREATE_AND_WRITE_OBJ", count=1)
        with pytest.raises(NoSpace):
            await backend.write(b"p", 0, b"refused")
        assert inode_writes(fake) == []
        fake.control.delay(0.05, op="CREATE_AND_WRITE_OBJ")
        await backend.write(b"p", S - 10, os.urandom(2 * S))
        log, published = fake.control.requests(), inode_writes(fake)
        assert set().union(*(entries for *_, entries in published)) == {0, 1, 2}
        for k, _, entries in published:
            done = {(r["oid"], r["result"]) for r in log[:k]}
            assert all((doid(vid, i), "SUCCESS") in done for i in entries), "before its data"


async def test_rule14_index_writes_cover_only_changed_entries_and_a_snapshot_keeps_its_data():
    """Rule 14: after a snapshot every entry is inherited; rewriting an unchanged one
    (zeroing its gref) would let the delete remove the snapshot's object."""
    blocks = {i: os.urandom(4096) for i in (0, 1, 2, 5, 6)}
    async with fake_and_backend() as (fake, backend):
        await backend.create(b"v", 8 * S)
        for i, block in blocks.items():
            await backend.write(b"v", i * S, block)
        await backend.snapshot(b"v", "kept")
        fake.control.requests(clear=True)
        await backend.write(b"v", S + 100, b"changed")
        check_inode_writes(fake, {1})
        fake.control.requests(clear=True)
        await backend.delete(b"v")
        check_inode_writes(fake, {0, 1, 2, 5, 6})
        for i, block in blocks.items():
            assert stored(fake, "v", i * S, 4096, tag="kept") == block


async def test_rule15_pieces_refused_together_are_repaired_once():
    """§6.4 and rule 12: entries lost to someone else's snapshot are re-created in the new
    working VDI by the READONLY repair; four pieces answered READONLY at once make one
    repair, each object created once, every piece redone after it (none lost or refused)."""
    blob, old, new = os.urandom(4 * MiB), os.urandom(4 * MiB), os.urandom(4 * MiB)
    async with fake_and_backend() as (fake, backend):
        await backend.create(b"r", 8 * MiB, Layout(20))
        await backend.write(b"r", 4 * MiB, old)
        fake.control.set_knob("snapshot_race", 0.5)
        fake.control.delay(0.2, op="WRITE_OBJ")
        before = arrived(fake, "WRITE_OBJ")

        async def snapshot_while_publishing() -> None:  # its window takes the index writes
            await until(lambda: arrived(fake, "WRITE_OBJ") >= before + 4)
            await fake.control.snapshot("r", "theirs")

        await both(lambda: backend.write(b"r", 0, blob), snapshot_while_publishing)
        fake.control.clear_faults()
        fake.control.set_knob("snapshot_race", 0)
        assert stored(fake, "r", 0, 4 * MiB) == bytes(4 * MiB)  # the race did lose them
        fake.control.requests(clear=True)
        fake.control.delay(0.1, op="CREATE_AND_WRITE_OBJ")
        await backend.write(b"r", 4 * MiB, new)  # four owned objects, each READONLY
        assert stored(fake, "r", 0, 8 * MiB) == blob + new
        assert stored(fake, "r", 4 * MiB, 4 * MiB, tag="theirs") == old
        creates = [r["oid"] for r in sent(fake, "CREATE_AND_WRITE_OBJ")]
        assert sorted(creates) == [doid(vid_of(fake, "r"), i) for i in range(8)]


async def test_rule15_a_create_that_beat_the_snapshot_is_published_in_the_new_vdi():
    """§6.4: a create answered under the old vid while another piece's repair moved the
    VDI on goes to the new working VDI, not only into the snapshot's index."""
    blob = os.urandom(200)
    async with fake_and_backend() as (fake, backend):
        await backend.create(b"r", 8 * MiB, Layout(20))
        await backend.write(b"r", 0, b"owned")
        fake.control.delay(0.2, op="CREATE_AND_WRITE_OBJ")
        fake.control.delay(1.0, op="WRITE_OBJ")
        fake.control.set_knob("snapshot_race", 0.2)
        creates, writes = arrived(fake, "CREATE_AND_WRITE_OBJ"), arrived(fake, "WRITE_OBJ")

        # the hole's create runs at 0.2 s, the snapshot at 0.4 s, the owned object's write
        # (READONLY, repair) at 1.0 s, the hole's index write lands at 1.2 s
        async def snapshot_between() -> None:
            await until(lambda: arrived(fake, "CREATE_AND_WRITE_OBJ") > creates)
            await until(lambda: arrived(fake, "WRITE_OBJ") > writes)
            await trio.sleep(0.4)
            await fake.control.snapshot("r", "theirs")

        await both(lambda: backend.write(b"r", MiB - 100, blob), snapshot_between)
        fake.control.clear_faults()
        assert stored(fake, "r", MiB - 100, 200) == blob
        assert await backend.read(b"r", MiB - 100, 200) == blob


async def test_rule15_our_own_snapshot_waits_for_the_writes_in_flight():
    """Rule 15: before a snapshot we take, the create+index pairs in flight must finish;
    else their index writes land in the snapshot's window and are lost from both."""
    blob = os.urandom(4 * MiB)
    async with fake_and_backend() as (fake, backend):
        await backend.create(b"r", 8 * MiB, Layout(20))
        await backend.write(b"r", 7 * MiB, b"loaded")
        fake.control.delay(0.15, op="CREATE_AND_WRITE_OBJ")
        fake.control.delay(0.3, op="WRITE_OBJ")
        fake.control.set_knob("snapshot_race", 0.5)
        before = arrived(fake, "CREATE_AND_WRITE_OBJ")

        async def snapshot_while_creating() -> None:
            await until(lambda: arrived(fake, "CREATE_AND_WRITE_OBJ") >= before + 4)
            await backend.snapshot(b"r", "mine")

        await both(lambda: backend.write(b"r", 0, blob), snapshot_while_creating)
        fake.control.clear_faults()
        fake.control.set_knob("snapshot_race", 0)
        assert stored(fake, "r", 0, 4 * MiB) == blob
        assert await backend.read(b"r", 0, 4 * MiB) == blob


@pytest.mark.parametrize("shift", [20, 23])
async def test_rule25_writes_across_an_objects_end_use_the_vdis_object_size(shift):
    """Rule 25: with 1 MiB and 8 MiB objects a write 3 bytes before an object's end is
    cut there, into the right objects at the right offsets."""
    size, data = 1 << shift, os.urandom(4096)
    async with fake_and_backend() as (fake, backend):
        await backend.create(b"l", 3 * size, Layout(shift))
        await backend.write(b"l", size - 3, data)
        vid = vid_of(fake, "l")
        log = sent(fake, "CREATE_AND_WRITE_OBJ")
        creates = {(r["oid"], r["offset"], r["data_length"]) for r in log}
        assert creates == {(doid(vid, 0), size - 3, 3), (doid(vid, 1), 0, 4093)}
        assert stored(fake, "l", size - 4, 4098) == b"\0" + data + b"\0"
        assert await backend.read(b"l", size - 4, 4098) == b"\0" + data + b"\0"
        assert (await backend.lookup(b"l")).layout.block_size_shift == shift


async def test_rule26_inherited_objects_are_read_from_their_owner_and_holes_from_nowhere():
    """Rule 26: after a snapshot and in a clone, untouched objects are read from the
    snapshot's vid; a hole is zeros with no request."""
    a, c = os.urandom(5000), os.urandom(5000)
    want = a + bytes(2 * S - 5000) + c + bytes(2 * S - 5000)
    async with fake_and_backend() as (fake, backend):
        await backend.create(b"p", 4 * S)
        await backend.write(b"p", 0, a)
        await backend.write(b"p", 2 * S, c)
        await backend.snapshot(b"p", "s1")
        await backend.clone(b"p", "s1", b"c1")
        snap = vid_of(fake, "p", tag="s1")
        for name in (b"p", b"c1"):
            fake.control.requests(clear=True)
            assert await backend.read(name, 0, 4 * S) == want
            assert {oid for oid, *_ in data_reads(fake)} == {doid(snap, 0), doid(snap, 2)}
        await backend.write(b"c1", 10, b"mine")  # copy-on-write: object 0 is the clone's
        fake.control.requests(clear=True)
        assert await backend.read(b"c1", 0, 4 * S) == want[:10] + b"mine" + want[14:]
        assert {oid for oid, *_ in data_reads(fake)} == {doid(vid_of(fake, "c1"), 0),
                                                           doid(snap, 2)}  # fmt: skip
        fake.control.requests(clear=True)
        assert await backend.read(b"c1", S, S) == bytes(S)
        assert data_reads(fake) == []


async def test_rule26_reads_are_clamped_to_the_vdi_size():
    """Rule 26: a read past vdi_size (inside the last object) returns and asks for only
    the bytes up to it; a read stream past the end ends there."""
    async with fake_and_backend() as (fake, backend):
        await backend.create(b"e", S + 1000)
        await backend.write(b"e", S + 990, b"0123456789")
        fake.control.requests(clear=True)
        assert await backend.read(b"e", S + 990, 100) == b"0123456789"
        assert await backend.read(b"e", S + 1000, 10) == b""
        assert data_reads(fake) == [(doid(vid_of(fake, "e"), 1), 990, 10)]
        async with backend.read_stream(b"e", 0, 3 * S) as pieces:
            got = b"".join([bytes(piece) async for piece in pieces])
        assert got == bytes(S + 990) + b"0123456789"


async def test_rule29_a_vdi_left_read_only_fails_with_eio_instead_of_looping():
    """Rule 29 (rule 28's case): another client clones the working VDI, which leaves it
    read-only and still the lookup's answer: a write fails with EIO after one lookup."""
    async with fake_and_backend() as (fake, backend):
        await backend.create(b"b", 2 * S)
        await backend.write(b"b", 0, b"x")
        async with await raw(fake) as conn:
            assert (await conn.new_vdi("c", 2 * S, base=vid_of(fake, "b"))).result == 0
        for offset in (0, S):  # an object it owns, a hole
            fake.control.requests(clear=True)
            with trio.fail_after(2), pytest.raises(BackendError) as failed:
                await backend.write(b"b", offset, b"y")
            assert failed.value.errno == errno.EIO
            assert len(sent(fake, "GET_VDI_INFO")) <= 2
        assert stored(fake, "b", 0, 1) == b"x"


async def test_rule34_holes_someone_else_filled_are_seen_after_a_lookup_or_the_index_ttl():
    """Rule 34: the cached index goes stale: a lookup (an open) reads it again, and past
    INDEX_TTL a hole is looked up again before it is read as zeros."""
    async with fake_and_backend() as (fake, backend):
        await backend.create(b"o", 4 * S)
        await backend.write(b"o", 0, b"mine")
        assert await backend.read(b"o", S, 2 * S) == bytes(2 * S)
        vid = vid_of(fake, "o")
        async with await raw(fake) as conn:
            for i in (1, 2):
                assert (await conn.create_obj(doid(vid, i), 0, b"theirs")).result == 0
                assert (await conn.set_index(vid, i, vid)).result == 0
            await backend.lookup(b"o")
            assert await backend.read(b"o", 2 * S, 6) == b"theirs"
            assert (await conn.create_obj(doid(vid, 3), 0, b"later")).result == 0
            assert (await conn.set_index(vid, 3, vid)).result == 0
        await trio.sleep(INDEX_TTL + 0.1)
        assert await backend.read(b"o", 3 * S, 5) == b"later"


async def test_rule34_objects_someone_else_trimmed_read_as_zeros_and_take_writes():
    """Rule 34: NO_OBJ for a cached entry means another client trimmed it: re-read the
    index and go on (zeros; a write allocates anew), never fail."""
    async with fake_and_backend() as (fake, backend):
        await backend.create(b"o", 4 * S)
        await backend.write(b"o", 2 * S, b"soon gone")
        await backend.write(b"o", 3 * S, b"also gone")
        vid = vid_of(fake, "o")
        async with await raw(fake) as conn:
            assert (await conn.set_index(vid, 3, 0)).result == 0  # the object is removed
            await backend.write(b"o", 3 * S + 4, b"new")
            assert stored(fake, "o", 3 * S, 9) == bytes(4) + b"new\0\0"
            assert (await conn.set_index(vid, 2, 0)).result == 0
        assert await backend.read(b"o", 2 * S, 2 * S) == bytes(S + 4) + b"new" + bytes(S - 7)


async def set_root(conn: SheepConn, vid: int, root: bytes) -> None:
    assert (await conn.write_obj(ioid(vid), INDEX_OFFSET, root)).result == 0


def leaf(vid: int, idx: int) -> bytes:
    """A B-tree node of depth 1 with one entry: object ``idx`` of ``vid``."""
    return struct.pack("<HHIII", BTREE_MAGIC, 1, 1, idx, vid)


async def test_rule35_a_root_of_depth_3_is_eio_not_a_crash():
    """Rule 35: a root depth other than 1 or 2 is a corrupt inode: EIO, whatever its
    entry count, and the backend goes on serving other VDIs."""
    async with fake_and_backend() as (fake, backend):
        for entries in (0, 5):
            name = f"hv{entries}"
            async with await raw(fake) as conn:
                vid = (await conn.new_vdi(name, 8 * S, store=1)).vdi_id  # someone's
                await set_root(conn, vid, struct.pack("<HHI", BTREE_MAGIC, 3, entries))
            for call in (backend.lookup, lambda n: backend.read(n, 0, 10)):
                with pytest.raises(BackendError) as failed:
                    await call(name.encode())
                assert failed.value.errno == errno.EIO
        await backend.create(b"fine", S)
        assert await backend.read(b"fine", 0, 3) == bytes(3)


async def test_rule35_hyper_volumes_read_through_their_b_tree_and_refuse_writes():
    """Rule 35: depth 1 and depth 2 roots are read; a write is EROFS with nothing sent."""
    data = os.urandom(3000)
    async with fake_and_backend() as (fake, backend):
        async with await raw(fake) as conn:
            one = (await conn.new_vdi("h1", 8 * S, store=1)).vdi_id
            two = (await conn.new_vdi("h2", 8 * S, store=1)).vdi_id
            await set_root(conn, one, leaf(one, 2))
            node = two << 32 | 1 << 60  # its first B-tree node
            assert (await conn.create_obj(node, 0, leaf(two, 5))).result == 0
            await set_root(conn, two, struct.pack("<HHIIIQ", BTREE_MAGIC, 2, 1, 5, 0, node))
            assert (await conn.create_obj(doid(one, 2), 0, data)).result == 0
            assert (await conn.create_obj(doid(two, 5), 0, data)).result == 0
        assert await backend.read(b"h1", 2 * S - 5, 3005) == bytes(5) + data
        assert await backend.read(b"h2", 5 * S - 5, 3005) == bytes(5) + data
        fake.control.requests(clear=True)
        for offset in (0, 2 * S):  # a hole, an object it owns
            with pytest.raises(ReadOnly) as refused:
                await backend.write(b"h1", offset, b"no")
            assert refused.value.errno == errno.EROFS
        assert sent(fake, "CREATE_AND_WRITE_OBJ") == sent(fake, "WRITE_OBJ") == []
