"""Rules 4, 5, 6, 9, 10, 13, 23, 24 and 27 of protocol.md §1, as the sheep sees them: a
scripted sheep where the bytes or the timing on one connection matter, else the backend on
the fake cluster with its ``strict_client`` knob on, so that it flags what a client must
not send even where dog does (``tests/fakesheep/rules.py``). Every fake test ends with the
fake's list of broken rules empty."""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
import trio

from sheepfs.backends.base import Layout
from sheepfs.backends.sheep import SheepBackend, proto
from sheepfs.backends.sheep.client import SheepClient
from sheepfs.backends.sheep.proto import FLAG_COW, FLAG_WRITE, Op, Request
from sheepfs.core.filesystem import CoreConfig, Filesystem
from sheepfs.errors import BackendError
from sheepfs.spool import Spool
from tests.fakesheep import RunningFake, fake_cluster
from tests.fakesheep.proto import Op as FakeOp
from tests.fakesheep.rules import CLIENT_INTERNAL_OPS
from tests.sheep_script import Got, MiB, Peer, answer_all, counting, gather, oid_of, read, start

pytestmark = pytest.mark.timeout(60)
DATA_OPS = ("READ_OBJ", "WRITE_OBJ", "CREATE_AND_WRITE_OBJ")


@asynccontextmanager
async def strict_backend() -> AsyncIterator[tuple[RunningFake, SheepBackend]]:
    """The backend on a 3-node fake (2 copies, 4 MiB objects) strict about every rule."""
    async with fake_cluster(nodes=3) as fake:
        fake.control.set_knob("strict_client", True)
        async with SheepBackend([fake.address(0)], timeout=10) as backend:
            yield fake, backend
        assert fake.events == []


def sent(fake: RunningFake, *ops: str) -> list[dict[str, object]]:
    """The requests of ``ops`` the fake served, oldest first."""
    return [r for r in fake.control.requests() if r["op"] in ops]


# -- rule 4: one request at a time on the wire -------------------------------------------------


class _SlowStream:
    """Read in small pieces with pauses, so that every large send stops part way."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream

    async def receive_some(self, max_bytes: int) -> bytes:
        await trio.sleep(0.001)
        return await self.stream.receive_some(min(max_bytes, 32 << 10))

    async def send_all(self, data: bytes) -> None:
        await self.stream.send_all(data)


async def test_rule_4_requests_go_out_whole_one_after_the_other(nursery):
    """Rule 4: two 8 MiB writes at once on one connection to a sheep that reads slowly
    (each send is cut short by a full socket): each arrives whole, header then payload."""
    got: list[Got] = []

    async def slow(peer: Peer) -> None:
        peer.stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
        peer.stream = _SlowStream(peer.stream)  # type: ignore[assignment]
        while (g := await peer.request()) is not None:
            got.append(g)
            await peer.reply(g)

    sheep = await start(nursery, slow)
    data = {oid: os.urandom(8 * MiB) for oid in (1, 2)}
    writes = [proto.obj_write(oid, 0, d) for oid, d in data.items()]
    async with SheepClient([sheep.address], connections=1, max_in_flight=2) as client:
        assert all(r.ok for r in await gather(client, writes))
    assert len(sheep.peers) == 1 and sorted(oid_of(g) for g in got) == [1, 2]
    assert all(g.opcode == Op.WRITE_OBJ and g.payload == data[oid_of(g)] for g in got)


# -- rules 5 and 6: payloads and buffers a sheep handles unchecked ------------------------------


async def test_rule_5_name_ops_carry_name_and_tag_512_bytes():
    """Rule 5: lookups and deletes of a VDI and of its snapshots, with tagged snapshots
    about (where a 256-byte lookup crashes a sheep), all send name + tag, 512 bytes."""
    async with strict_backend() as (fake, backend):
        await backend.create(b"v", 64 * MiB)
        await backend.write(b"v", 0, b"data")
        await fake.control.snapshot("v", "theirs")
        await backend.snapshot(b"v", "ours")
        assert await backend.lookup(b"v") is not None
        await backend.delete_snapshot(b"v", "ours")
        await backend.delete(b"v")
        assert await backend.lookup(b"v") is None
        named = sent(fake, "GET_VDI_INFO", "DEL_VDI", "LOCK_VDI")
        assert len(named) >= 6 and {r["data_length"] for r in named} == {512}


async def test_rule_6_node_list_has_dogs_buffer_and_no_other_internal_op_goes_out():
    """Rule 6: statfs asks GET_NODE_LIST with dog's 491,520 bytes; nothing the backend
    does (probe, list, statfs, snapshot, clone, resize, delete) sends an internal op
    outside §5.2 or another buffer size (the strict fake records both)."""
    async with strict_backend() as (fake, backend):
        await backend.create(b"n", 8 * MiB)
        assert (await backend.statfs()).total > 0
        assert set(await backend.list()) == {b"n"}
        await backend.snapshot(b"n", "s")
        await backend.clone(b"n", "s", b"c")
        await backend.resize(b"c", 16 * MiB)
        await backend.delete(b"c")
        ops = {r["op"] for r in fake.control.requests()}
        assert [r["data_length"] for r in sent(fake, "GET_NODE_LIST")] == [491_520]
    internal = ops - {op.name for op in FakeOp if op < 0x80}
    assert "GET_NODE_LIST" in internal <= {op.name for op in CLIENT_INTERNAL_OPS}


# -- rules 9 and 27: redundancy only in NEW_VDI ------------------------------------------------


async def test_rule_9_copy_policy_goes_in_new_vdi_only():
    """Rule 9: a 2:1 erasure-coded VDI is made with policy 0x11 and 3 copies; its reads,
    creates and writes send copy_policy 0 (the strict fake records any other)."""
    data = bytearray(os.urandom(6 * MiB))
    async with strict_backend() as (fake, backend):
        await backend.create(b"ec", 16 * MiB, Layout(22, 2, 1))
        await backend.write(b"ec", 1000, data)
        await backend.write(b"ec", 5000, b"patch")  # in place
        data[4000:4005] = b"patch"
        assert await backend.read(b"ec", 1000, len(data)) == data
        [vdi] = fake.control.vdis()
        assert (vdi["copies"], fake.state.copy_policy_of(vdi["vid"])) == (3, 0x11)
        objects = sent(fake, *DATA_OPS)
        assert {r["op"] for r in objects} == set(DATA_OPS)
        assert {r["copy_policy"] for r in objects} == {0}


async def test_rule_27_object_ops_send_copies_0():
    """Rule 27: creates (plain and copy-on-write), writes and reads of data, inode and
    index writes all send copies 0, so the gateway uses its own count, never a stale one."""
    async with strict_backend() as (fake, backend):
        await backend.create(b"r", 16 * MiB, Layout(22, 2))
        await backend.write(b"r", 0, os.urandom(5 * MiB))
        await backend.snapshot(b"r", "s")
        await backend.write(b"r", 100, b"cow")
        await backend.resize(b"r", 32 * MiB)
        await backend.read(b"r", 0, 8 * MiB)
        objects = sent(fake, *DATA_OPS)
        assert any(r["flags"] & FLAG_COW for r in objects)
        assert {r["op"] for r in objects} == set(DATA_OPS)
        assert {r["copies"] for r in objects} == {0}


# -- rule 10: names and tags -------------------------------------------------------------------

_BAD = [b"", b"x" * 256, b"a\0b", b"\0"]


@pytest.mark.parametrize("bad", _BAD)
def test_rule_10_no_request_is_made_with_an_empty_long_or_nul_name_or_tag(bad):
    """Rule 10: names and tags are 1-255 bytes without NUL, then NUL padding."""
    with pytest.raises(ValueError):
        proto.pad(bad)
    for op in (Op.NEW_VDI, Op.GET_VDI_INFO, Op.DEL_VDI):
        with pytest.raises(ValueError):
            proto.vdi_request(op, bad)
    if bad:  # an empty tag is no tag
        with pytest.raises(ValueError):
            proto.vdi_request(Op.GET_VDI_INFO, b"ok", bad)
    most = proto.vdi_request(Op.DEL_VDI, b"n" * 255, b"t" * 255).payload
    assert most == b"n" * 255 + b"\0" + b"t" * 255 + b"\0"


async def test_rule_10_a_255_byte_name_works_and_bad_names_never_go_out():
    """Rule 10 through the backend: a 255-byte name and tag round-trip with no event;
    empty, 256-byte and NUL-holding names fail before any request is sent."""
    long = b"n" * 255
    async with strict_backend() as (fake, backend):
        await backend.create(long, 8 * MiB)
        await backend.write(long, 0, b"x")
        await backend.snapshot(long, "t" * 255)
        assert (await backend.lookup(long)).name == long
        assert {v["name"] for v in fake.control.vdis()} == {long.decode()}
        before = len(fake.control.requests())
        for bad in (b"", b"x" * 256, b"a\0b"):
            with pytest.raises(BackendError):
                await backend.lookup(bad)
            with pytest.raises(BackendError):
                await backend.create(bad, MiB)
        assert len(fake.control.requests()) == before
        await backend.delete_snapshot(long, "t" * 255)
        await backend.delete(long)


# -- rule 13: erasure-coded objects take one write at a time ------------------------------------


async def concurrently(*calls: Callable[[], Awaitable[object]]) -> None:
    """Run ``calls`` at once, as separate tasks (callers that do not know of each other)."""
    async with trio.open_nursery() as nursery:
        for call in calls:
            nursery.start_soon(call)


async def test_rule_13_pieces_of_one_erasure_coded_object_go_one_at_a_time():
    """Rule 13: on a 2:1 erasure-coded VDI with 8 MiB objects, a whole-object write is
    two 4 MiB pieces of one object (slowed down so that they would overlap): the second
    goes after the first has answered, when it allocates and when it writes in place."""
    whole = [os.urandom(8 * MiB) for _ in range(2)]
    async with strict_backend() as (fake, backend):
        await backend.create(b"ec", 16 * MiB, Layout(23, 2, 1))
        for op in ("WRITE_OBJ", "CREATE_AND_WRITE_OBJ"):
            fake.control.delay(0.05, op=op)
        for data in whole:  # the first allocates object 0, the second writes in place
            await backend.write(b"ec", 0, data)
            assert fake.events == []
        assert await backend.read(b"ec", 0, 8 * MiB) == whole[1]
        assert len(sent(fake, "CREATE_AND_WRITE_OBJ")) == 1


async def test_rule_13_the_core_writes_one_erasure_coded_object_at_a_time(tmp_path):
    """Rule 13 end to end: writes and fsyncs at once into one object of a 2:1
    erasure-coded file (into a hole, then in place; slowed down) reach the sheep one at a
    time, and all of them land."""
    spots = [(100 + 700 * k, os.urandom(300)) for k in range(4)]  # not 512-aligned
    async with fake_cluster(nodes=3) as fake:
        fake.control.set_knob("strict_client", True)
        backend = SheepBackend([fake.address(0)], timeout=10)
        fs = Filesystem(backend, Spool(tmp_path / "spool"), CoreConfig(cache_size=16 * MiB))
        async with fs.running():
            await backend.create(b"ec", 16 * MiB, Layout(22, 2, 1))
            opened = await fs.open((await fs.lookup(b"ec")).ino, writing=True)
            for op in ("WRITE_OBJ", "CREATE_AND_WRITE_OBJ"):
                fake.control.delay(0.05, op=op)

            async def put(at: int, data: bytes) -> None:
                await fs.write(opened.fh, at, data)
                await fs.fsync(opened.fh)

            for _ in range(2):
                await concurrently(*(lambda a=at, d=d: put(a, d) for at, d in spots))
            await fs.release(opened.fh)
        assert fake.events == []
        for at, data in spots:
            assert fake.control.read_vdi("ec", at, len(data)) == data


# -- rule 23: TCP keepalive ---------------------------------------------------------------------


@pytest.mark.skipif(not hasattr(socket, "TCP_KEEPIDLE"), reason="no TCP keepalive timers")
async def test_rule_23_every_connection_has_tcp_keepalive(nursery):
    """Rule 23 (keepalive): each connection turns TCP keepalive on, with timers that show
    a silently dead sheep within two minutes, not after the kernel's two hours."""
    sheep = await start(nursery, lambda peer: answer_all(peer, delay=0.05))
    async with SheepClient([sheep.address], connections=2) as client:
        await gather(client, [read(k) for k in range(4)])
        socks = [conn._sock for conn in client._pool]
        assert socks
        for sock in socks:
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)
            idle, interval, probes = (
                sock.getsockopt(socket.IPPROTO_TCP, getattr(socket, name))
                for name in ("TCP_KEEPIDLE", "TCP_KEEPINTVL", "TCP_KEEPCNT")
            )
            assert idle + interval * probes <= 120


# -- rule 24: pieces of at most 4 MiB, and caps per connection ----------------------------------


async def test_rule_24_transfers_are_cut_into_4_mib_pieces_even_with_8_mib_objects():
    """Rule 24: with 8 MiB objects a 16 MiB write and read, aligned and not, go in
    requests of at most 4 MiB; the backend's client keeps the default caps."""
    data = os.urandom(16 * MiB)
    async with strict_backend() as (fake, backend):
        assert (backend.client.max_in_flight, backend.client.max_bytes) == (8, 32 * MiB)
        await backend.create(b"big", 40 * MiB, Layout(23))
        for at in (0, 3 * MiB + 123):
            await backend.write(b"big", at, data)
            assert await backend.read(b"big", at, len(data)) == data
            assert fake.control.read_vdi("big", at, len(data)) == data
        lengths = [r["data_length"] for r in sent(fake, *DATA_OPS)]
        assert max(lengths) == 4 * MiB and len(lengths) >= 4 * 4
        assert max(r["data_length"] for r in fake.control.requests()) <= 4 * MiB


@pytest.mark.parametrize(
    "size, most",
    [(100, 8), (4608 << 10, 7)],  # 8 requests; 7 x 4.5 MiB <= 32 MiB < 8 x 4.5 MiB
)
async def test_rule_24_default_caps_are_8_requests_and_32_mib_per_connection(nursery, size, most):
    """Rule 24: a client made with no limits given keeps at most 8 requests and 32 MiB
    in flight on a connection, however many calls wait."""
    seen: list[int] = []
    sheep = await start(nursery, counting(seen, delay=0.02))
    async with SheepClient([sheep.address], connections=1) as client:
        assert all(r.ok for r in await gather(client, [read(k, size) for k in range(12)]))
    assert max(seen) == most and len(seen) == 12


# -- the fake's own checks: each rule above can fail --------------------------------------------


def _obj(op: Op, oid: int, copies: int = 0, policy: int = 0) -> Request:
    body = struct.pack("<QQBBBBIII", oid, 0, copies, policy, 0, 0, 0, 0, 0)
    return Request(op, 0, 10, body)


def _named(payload: bytes) -> Request:
    return Request(Op.GET_VDI_INFO, FLAG_WRITE, len(payload), bytes(32), payload)


_FLAGGED: dict[str, Callable[[int], Request]] = {
    "name-payload": lambda _: _named(proto.pad(b"ec")),  # rule 5
    "internal-op": lambda _: Request(0xBE, 0, 491_568),  # rule 6: CLUSTER_INFO
    "buffer-length": lambda _: proto.plain(Op.GET_NODE_LIST, 3 * 80),  # rule 6
    "object-copy-policy": lambda oid: _obj(Op.READ_OBJ, oid, policy=0x11),  # rule 9
    "vdi-copy-policy": lambda _: proto.vdi_request(  # rule 9: d = 6
        Op.NEW_VDI, b"odd", vdi_size=MiB, copies=7, copy_policy=0x31
    ),
    "name-not-terminated": lambda _: _named(b"e" * 256 + bytes(256)),  # rule 10
    "name-padding": lambda _: _named(b"ec\0x".ljust(256, b"\0") + bytes(256)),  # rule 10
    "tag-padding": lambda _: _named(proto.pad(b"ec") + b"t\0x".ljust(256, b"\0")),  # rule 10
    "object-copies": lambda oid: _obj(Op.READ_OBJ, oid, copies=2),  # rule 27
}


async def test_the_strict_fake_records_each_broken_rule():
    """Rules 5, 6, 9, 10, 13 and 27: the fake records a request breaking one, so the
    tests above fail when the client breaks it."""
    async with fake_cluster(nodes=3) as fake:
        fake.control.set_knob("strict_client", True)
        async with SheepClient([fake.address(0)]) as client:
            new = proto.vdi_request(Op.NEW_VDI, b"ec", vdi_size=8 * MiB, copies=3, copy_policy=0x11)
            oid = proto.doid((await client.call(new)).vdi_id, 0)
            assert (await client.call(proto.obj_create(oid, 0, b"x"))).ok
            for kind, request_of in _FLAGGED.items():
                await client.call(request_of(oid))
                assert [e["kind"] for e in fake.events] == [kind]
                fake.control.clear_events()
            fake.control.delay(0.05, op="WRITE_OBJ")
            await gather(client, [proto.obj_write(oid, 600 * k, b"y") for k in range(2)])
            assert [e["kind"] for e in fake.events] == ["ec-overlap"]  # rule 13
            fake.control.clear_events()


async def test_rule_13_separate_calls_into_one_erasure_coded_object_go_one_at_a_time():
    """Rule 13 without the core's per-file lock: four backend writes at once into one
    object of a 2:1 erasure-coded VDI (into a hole, then in place) never overlap."""
    spots = [(100 + 700 * k, os.urandom(300)) for k in range(4)]
    async with strict_backend() as (fake, backend):
        await backend.create(b"ec", 8 * MiB, Layout(22, 2, 1))
        for op in ("WRITE_OBJ", "CREATE_AND_WRITE_OBJ"):
            fake.control.delay(0.05, op=op)
        for _ in range(2):
            await concurrently(*(lambda a=at, d=d: backend.write(b"ec", a, d) for at, d in spots))
        assert fake.events == []
        for at, data in spots:
            assert await backend.read(b"ec", at, len(data)) == data
