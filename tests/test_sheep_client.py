"""The sheep wire client: against a scripted sheep (each test says exactly what it answers),
then against a real cluster (marker ``real``)."""

from __future__ import annotations

import logging
import os
import random
import struct
import tracemalloc

import pytest
import trio

from sheepfs.backends.sheep import proto
from sheepfs.backends.sheep.client import SheepClient
from sheepfs.backends.sheep.proto import FLAG_WRITE, Op, Request, Res
from sheepfs.backends.sheep.structs import InodeHeader
from sheepfs.errors import Timeout, Unavailable
from sheepfs.options import parse_addresses
from tests.sheep_script import (
    HOST,
    Got,
    MiB,
    Peer,
    answer_all,
    broken_first,
    cluster,
    counting,
    dead_port,
    gather,
    mid_header,
    mid_payload,
    never_answer,
    oid_of,
    oversized,
    pattern,
    read,
    scripted,
    start,
    unknown_id,
)


async def test_replies_are_matched_by_id_whatever_their_order(nursery):
    rng, ids = random.Random(7), []

    async def shuffled(peer: Peer) -> None:
        while None not in (batch := [await peer.request() for _ in range(8)]):
            ids.extend(g.id for g in batch)
            rng.shuffle(batch)
            for g in batch:
                await peer.reply(g)

    sheep = await start(nursery, shuffled)
    bufs = [bytearray(100 + oid) for oid in range(24)]
    async with SheepClient([sheep.address], connections=1) as client:
        for r in range(0, 24, 8):  # depth 8
            views = [memoryview(b) for b in bufs[r : r + 8]]
            replies = await gather(client, [read(k, len(bufs[k])) for k in range(r, r + 8)], views)
            assert [x.payload.obj for x in replies] == bufs[r : r + 8]
    assert [bytes(b) for b in bufs] == [pattern(oid, 100 + oid) for oid in range(24)]
    assert len(sheep.peers) == 1 and len(set(ids)) == 24


async def test_into_buffers_are_filled_in_place_with_no_copy(nursery):
    sheep = await start(nursery, answer_all)
    buf = bytearray(4 * MiB + 16)
    async with SheepClient([sheep.address]) as client:
        await client.call(read(5, 10))  # connected beforehand: only the read is measured
        pattern(5, 4 * MiB)  # what the fake sends, made beforehand too
        tracemalloc.start()
        try:
            reply = await client.call(read(5, 4 * MiB), into=memoryview(buf)[8 : 8 + 4 * MiB])
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        short = await client.call(read(6, 100), into=memoryview(bytearray(300)))
    assert reply.payload.obj is buf and buf[8:-8] == pattern(5, 4 * MiB)
    assert buf[:8] == buf[-8:] == bytes(8) and peak < 512 << 10  # no 4 MiB buffer was made
    assert bytes(short.payload) == pattern(6, 100)


async def test_a_failed_reply_with_a_payload_is_drained_exactly(nursery):
    async def ec_no_obj(peer: Peer) -> None:
        first, second = sorted([await peer.request(), await peer.request()], key=oid_of)
        await peer.reply(first, Res.NO_OBJ, b"\xee" * 8192)  # rule 2: failed EC reads do so
        await peer.reply(second, Res.NO_OBJ, b"")
        await answer_all(peer)

    sheep = await start(nursery, ec_no_obj)
    async with SheepClient([sheep.address], connections=1) as client:
        one, two = await gather(client, [read(1, 8192), read(2, 8192)])
        ok = await client.call(read(3, 4096))
    assert one.result == Res.NO_OBJ and bytes(one.payload) == b"\xee" * 8192
    assert two.result == Res.NO_OBJ and two.payload == b""
    assert bytes(ok.payload) == pattern(3, 4096) and len(sheep.peers) == 1


async def test_a_payload_list_is_sent_whole_and_rule_1_is_checked(nursery):
    got: list[Got] = []

    async def record(peer: Peer) -> None:
        while (g := await peer.request()) is not None:
            got.append(g)
            await peer.reply(g)

    sheep, body = await start(nursery, record), proto.obj_write(9, 0, b"").body
    parts: list = [b"abc", memoryview(b"defg")]
    async with SheepClient([sheep.address]) as client:
        assert (await client.call(Request(Op.WRITE_OBJ, FLAG_WRITE, 7, body, parts))).ok
        with pytest.raises(ValueError, match="data_length"):
            await client.call(Request(Op.WRITE_OBJ, FLAG_WRITE, 8, body, b"short"))
        with pytest.raises(ValueError, match="no payload"):
            await client.call(Request(Op.READ_OBJ, 0, 4, body, b"oops"))
    assert [g.payload for g in got] == [b"abcdefg"]


@pytest.mark.parametrize("resend", [True, False])
@pytest.mark.parametrize("misbehave", [unknown_id, oversized, mid_header, mid_payload])
async def test_a_broken_connection_resends_only_safe_requests(nursery, misbehave, resend):
    sheep, buf = await start(nursery, broken_first(misbehave)), bytearray(200)
    async with SheepClient([sheep.address]) as client:
        if resend:
            reply = await client.call(read(4, 100), into=memoryview(buf)[:100])
            assert reply.ok and buf[:100] == pattern(4, 100)
            assert client.stats.resends == client.stats.reconnects == 1
        else:
            create = proto.obj_create(proto.doid(4, 0), 0, bytes(100))
            with pytest.raises(Unavailable, match="may or may not have run"):
                await client.call(create, resend=False)
        if misbehave in (unknown_id, oversized):
            with trio.fail_after(2):
                await sheep.peers[0].eof.wait()  # drained, then closed
    assert buf[100:] == bytes(100) and len(sheep.peers) == 1 + resend


async def test_an_unknown_id_fails_every_request_in_flight(nursery):
    async def two_then_unknown(peer: Peer, got: Got) -> None:
        await peer.request()
        await unknown_id(peer, got)

    sheep = await start(nursery, broken_first(two_then_unknown))
    async with SheepClient([sheep.address], connections=1) as client:
        replies = await gather(client, [read(1, 100), read(2, 100)])
    assert [bytes(r.payload) for r in replies] == [pattern(1, 100), pattern(2, 100)]
    assert client.stats.resends == 2 and client.stats.reconnects == 1


async def test_a_hang_ends_at_the_deadline_and_the_loop_stays_responsive(nursery):
    sheep, ticks = await start(nursery, never_answer), []

    async def ticker() -> None:
        while True:
            await trio.sleep(0.01)
            ticks.append(1)

    nursery.start_soon(ticker)
    async with SheepClient([sheep.address], timeout=0.5) as client:
        began = trio.current_time()
        with pytest.raises(Timeout, match=r"did not answer within 0\.5 s.*may still run"):
            await client.call(read(1))
        took = trio.current_time() - began
        with trio.fail_after(2):
            await sheep.peers[0].eof.wait()  # rule 23: its connection was closed
    assert 0.45 < took < 1.0 and len(ticks) > 25 and client.stats.timeouts == 1


async def test_slow_answers_are_waited_for_and_given_up_ones_drained(nursery):
    sheep, buf = await start(nursery, lambda peer: answer_all(peer, delay=0.2)), bytearray(1000)
    async with SheepClient([sheep.address], timeout=2, connections=1) as client:
        with trio.move_on_after(0.1):  # the caller gives up; its reply comes later
            await client.call(read(1), into=memoryview(buf))
        replies = await gather(client, [read(oid) for oid in range(4)])
    assert [bytes(r.payload) for r in replies] == [pattern(oid, 1000) for oid in range(4)]
    assert buf == bytes(1000) and len(sheep.peers) == 1  # no late bytes, no reconnect


async def test_retryable_results_are_retried_for_safe_requests_only(nursery):
    sheep = await start(nursery, scripted([Res.AGAIN, Res.NETWORK_ERROR, Res.NO_MEM, 0, Res.AGAIN]))
    async with SheepClient([sheep.address]) as client:
        assert (await client.call(read(1))).ok and client.stats.retries == 3
        create = proto.obj_create(proto.doid(1, 1), 0, b"x")
        assert (await client.call(create, resend=False)).result == Res.AGAIN


async def test_retries_end_with_the_last_result_at_the_deadline(nursery):
    sheep = await start(nursery, scripted([Res.WAIT_FOR_JOIN] * 1000))
    async with SheepClient([sheep.address], timeout=0.6) as client:
        began = trio.current_time()
        reply = await client.call(read(1))
    assert reply.result == Res.WAIT_FOR_JOIN and trio.current_time() - began < 0.6


async def test_failover_to_the_next_address_is_logged_once(nursery, caplog):
    sheep, dead = await start(nursery, answer_all), dead_port()
    async with SheepClient([(HOST, dead), sheep.address], connections=3) as client:
        for oid in range(3):
            await client.call(read(oid))
        await gather(client, [read(oid) for oid in range(12)])
        assert client.address == sheep.address and client.stats.failovers == 1
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == [
        f"sheep {HOST}:{dead} stopped answering (Connection refused); using {HOST}:{sheep.port}"
    ]


async def test_failover_when_the_sheep_in_use_goes_away(nursery, caplog):
    first, second = await start(nursery, answer_all), await start(nursery, answer_all)
    async with SheepClient([first.address, second.address]) as client:
        await client.call(read(1))
        first.stop()
        assert bytes((await client.call(read(2))).payload) == pattern(2, 1000)
        await client.call(read(3))
    assert len(second.peers) == 1
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == [
        f"sheep {HOST}:{first.port} stopped answering (Connection refused); "
        f"using {HOST}:{second.port}"
    ]


async def test_no_sheep_answering_is_unavailable():
    ports = dead_port(), dead_port()
    async with SheepClient([(HOST, p) for p in ports]) as client:
        with pytest.raises(Unavailable) as e:
            await client.call(read(1))
    assert e.value.op == "connect" and e.value.detail == (
        f"no sheep answers at {HOST}:{ports[0]}, {HOST}:{ports[1]}: Connection refused"
    )


@pytest.mark.parametrize(
    "text, want",
    [
        ("10.0.0.1", [("10.0.0.1", 7000)]),
        ("a:7001, b ,a:7001", [("a", 7001), ("b", 7000)]),
        ("[::1]:7002,[fe80::1]", [("::1", 7002), ("fe80::1", 7000)]),
        ("", "no sheep address"),
        ("a,,b", "an empty address"),
        ("::1", "write an IPv6 address in brackets"),
        ("[::1", "as .ADDR. or .ADDR.:PORT"),
        ("[::1]x", "as .ADDR. or .ADDR.:PORT"),
        ("[nope]:1", "not an IPv6 address"),
        ("a:0", "from 1 to 65535"),
        ("a:70000", "from 1 to 65535"),
        ("a:", "from 1 to 65535"),
        (":7000", "no host"),
    ],
)
def test_parse_addresses(text, want):
    if isinstance(want, list):
        assert parse_addresses(text) == want
    else:
        with pytest.raises(ValueError, match=want):
            parse_addresses(text)


@pytest.mark.parametrize(
    "limits, request_of, most",
    [
        ({"max_in_flight": 3}, lambda k: read(k, 100), 3),
        ({"max_bytes": MiB}, lambda k: read(k, 300 << 10), 3),
        ({"max_bytes": MiB}, lambda k: proto.obj_write(k, 0, bytes(400 << 10)), 2),
        ({"max_bytes": MiB}, lambda k: read(k, 2 * MiB), 1),  # bigger than it all: alone
    ],
)
async def test_requests_and_bytes_in_flight_are_bounded(nursery, limits, request_of, most):
    seen: list[int] = []
    sheep = await start(nursery, counting(seen))
    async with SheepClient([sheep.address], connections=1, **limits) as client:
        assert all(r.ok for r in await gather(client, [request_of(k) for k in range(10)]))
    assert max(seen) == most and len(seen) == 10


async def test_connections_are_made_lazily_and_the_least_busy_is_used(nursery):
    seen: list[int] = []
    sheep = await start(nursery, counting(seen, delay=0.05))
    async with SheepClient([sheep.address], connections=3, max_in_flight=2) as client:
        for oid in range(4):
            await client.call(read(oid))
        assert len(sheep.peers) == 1
        await gather(client, [read(oid) for oid in range(6)])
    assert len(sheep.peers) == client.stats.connects == 3 and max(seen) == 2


@pytest.mark.parametrize(
    "status, why",
    [
        (Res.SUCCESS, None),
        (Res.WAIT_FOR_FORMAT, "the cluster is not formatted"),
        (Res.WAIT_FOR_JOIN, "waits for its nodes to join"),
        (Res.SHUTDOWN, "shutting down"),
        (
            Res.VER_MISMATCH,
            r"not a Sheepdog 1\.0 sheep \(protocol version refused\): use --backend",
        ),
    ],
)
async def test_probe(nursery, status, why):
    sheep = await start(nursery, cluster(status))
    async with SheepClient([sheep.address]) as client:
        if why is None:
            info = await client.probe()
            assert (info.copies, info.copy_policy, info.block_size_shift) == (2, 0, 22)
            assert (info.flags, info.epoch, info.nr_nodes, info.use_lock) == (0x18, 3, 3, True)
        else:
            with pytest.raises(Unavailable, match=why):
                await client.probe()
    assert client.stats.retries == 0  # at once, not after the deadline


async def delete_vdi(client: SheepClient, name: bytes) -> None:
    """Zero the index entries, then DEL_VDI (protocol.md §2.1, rule 20)."""
    vid = (await client.call(proto.vdi_request(Op.GET_VDI_INFO, name))).vdi_id
    hdr = InodeHeader.parse((await client.call(read(proto.ioid(vid), 4664))).payload)
    raw = await client.call(read(proto.ioid(vid), 4 * hdr.objects, proto.INDEX_OFFSET))
    if used := [i for i, (e,) in enumerate(struct.iter_unpack("<I", raw.payload)) if e]:
        zeros, at = bytes(4 * (used[-1] - used[0] + 1)), proto.INDEX_OFFSET + 4 * used[0]
        assert (await client.call(proto.obj_write(proto.ioid(vid), at, zeros))).ok
    gone = await client.call(proto.vdi_request(Op.DEL_VDI, name), resend=False)
    assert gone.ok and gone.vdi_id == vid
    left = await client.call(read(proto.ioid(vid), 4664))
    assert left.result == Res.NO_OBJ or InodeHeader.parse(left.payload).name == b""


async def write_and_read(client: SheepClient, vid: int, size: int) -> None:
    """Create object 0, publish it, patch it, then read it back in 8 pipelined pieces."""
    data = bytearray(pattern(vid, size))
    assert (await client.call(proto.obj_create(proto.doid(vid, 0), 0, data), resend=False)).ok
    entry = proto.obj_write(proto.ioid(vid), proto.INDEX_OFFSET, struct.pack("<I", vid))
    assert (await client.call(entry)).ok
    assert (await client.call(proto.obj_write(proto.doid(vid, 0), 4096, b"patched"))).ok
    data[4096:4103] = b"patched"
    buf, piece = bytearray(size), size // 8
    views = [memoryview(buf)[k * piece : (k + 1) * piece] for k in range(8)]
    reqs = [read(proto.doid(vid, 0), piece, k * piece) for k in range(8)]
    assert all(r.ok and r.payload.obj is buf for r in await gather(client, reqs, views))
    assert buf == data


@pytest.mark.real
@pytest.mark.timeout(240)
async def test_a_real_cluster(real_cluster, caplog):
    host, port, dead = real_cluster.address, real_cluster.port, dead_port()
    name = f"sheep-client-test-{os.getpid()}".encode()
    async with SheepClient([(host, dead), (host, port + 1)], timeout=30) as client:
        info = await client.probe()
        assert info.copies == real_cluster.copies and 20 <= info.block_size_shift <= 31
        new = await client.call(
            proto.vdi_request(Op.NEW_VDI, name, vdi_size=64 * MiB), resend=False
        )
        assert new.ok, proto.result_name(new.result)
        try:
            vid = new.vdi_id
            used = await client.call(proto.plain(Op.READ_VDIS, proto.VDI_BITMAP_SIZE))
            assert len(used.payload) == 2_097_152 and used.payload[vid >> 3] >> (vid & 7) & 1
            found = await client.call(proto.vdi_request(Op.GET_VDI_INFO, name))
            assert found.ok and found.vdi_id == vid
            await write_and_read(client, vid, info.object_size)
        finally:
            await delete_vdi(client, name)
        assert (await client.call(proto.vdi_request(Op.GET_VDI_INFO, name))).result == Res.NO_VDI
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == [
        f"sheep {host}:{dead} stopped answering (Connection refused); using {host}:{port + 1}"
    ]
    assert real_cluster.running()
