"""The sheep client's fast paths: many requests sent in one system call (``call_many``),
replies that arrive packed together read apart, and deadlines kept by the watchdog
rather than a cancel scope per call."""

from __future__ import annotations

import struct

import pytest
import trio

from sheepfs.backends.sheep.client import SheepClient
from sheepfs.backends.sheep.proto import Res
from sheepfs.errors import Timeout
from tests.sheep_script import (
    _RSP,
    Got,
    MiB,
    Peer,
    answer_all,
    broken_first,
    mid_payload,
    never_answer,
    pattern,
    read,
    scripted,
    start,
)


async def test_call_many_sends_a_window_at_once_and_keeps_the_order(nursery):
    arrivals: list[int] = []  # requests whole in each chunk the sheep received

    async def counting_chunks(peer: Peer) -> None:
        while True:
            data = await peer.stream.receive_some(1 << 16)
            if not data:
                return
            peer.buf += data
            arrivals.append(len(peer.buf) // 48)
            while len(peer.buf) >= 48:
                got = await peer.request()
                assert got is not None
                await peer.reply(got)

    sheep = await start(nursery, counting_chunks)
    reqs = [read(oid, 100 + oid) for oid in range(40)]
    async with SheepClient([sheep.address], connections=1, max_in_flight=8) as client:
        replies = await client.call_many(reqs)
    assert [bytes(r.payload) for r in replies] == [pattern(oid, 100 + oid) for oid in range(40)]
    assert arrivals[0] == 8 and max(arrivals) <= 8  # a window in one send, and no more
    assert client.stats.requests == 40


async def test_call_many_resends_what_a_broken_connection_lost(nursery):
    sheep = await start(nursery, broken_first(mid_payload))
    async with SheepClient([sheep.address], connections=1) as client:
        replies = await client.call_many([read(oid, 100) for oid in range(20)])
    assert [bytes(r.payload) for r in replies] == [pattern(oid, 100) for oid in range(20)]
    assert len(sheep.peers) == 2


async def test_call_many_retries_retryable_results(nursery):
    sheep = await start(nursery, scripted([Res.AGAIN, Res.SUCCESS, Res.NETWORK_ERROR]))
    async with SheepClient([sheep.address], connections=1) as client:
        replies = await client.call_many([read(oid, 10) for oid in range(6)])
    assert all(r.ok for r in replies) and client.stats.retries == 2


async def test_call_many_ends_at_the_deadline(nursery):
    sheep = await start(nursery, never_answer)
    async with SheepClient([sheep.address], timeout=0.3) as client:
        began = trio.current_time()
        with pytest.raises(Timeout, match="no answer within 0.3 s"):
            await client.call_many([read(oid) for oid in range(5)])
    assert trio.current_time() - began < 1.0


@pytest.mark.parametrize("sizes", [[10, 4096, 70_000, 3, 2 * MiB, 0, 100], [5] * 50])
async def test_replies_packed_together_are_read_apart(nursery, sizes):
    """Headers and payloads of many replies in one send: small ones come out of the
    receive buffer, the rest of a large one goes straight into its own buffer."""

    async def packed(peer: Peer) -> None:
        gots: list[Got] = []
        while len(gots) < len(sizes):
            got = await peer.request()
            assert got is not None
            gots.append(got)
        blob = b"".join(
            _RSP.pack(0, g.opcode, 0, 1, g.id, g.data_length, 0, b"")
            + pattern(struct.unpack_from("<Q", g.body)[0], g.data_length)
            for g in reversed(gots)
        )
        await peer.stream.send_all(blob)
        await answer_all(peer)

    sheep = await start(nursery, packed)
    bufs = [bytearray(n) for n in sizes]
    async with SheepClient([sheep.address], connections=1, max_in_flight=64) as client:
        replies: list = [None] * len(sizes)

        async def one(k: int) -> None:
            into = memoryview(bufs[k]) if k % 2 else None
            replies[k] = await client.call(read(k, sizes[k]), into=into)

        async with trio.open_nursery() as n:
            for k in range(len(sizes)):
                n.start_soon(one, k)
        after = await client.call(read(99, 50))
    for k, n in enumerate(sizes):
        assert bytes(replies[k].payload) == pattern(k, n)
        assert (k % 2 == 0) or bufs[k] == pattern(k, n)
    assert bytes(after.payload) == pattern(99, 50) and len(sheep.peers) == 1


async def test_a_request_waiting_for_room_times_out_unsent(nursery):
    sheep = await start(nursery, never_answer)
    async with SheepClient([sheep.address], timeout=5, connections=1, max_in_flight=1) as client:
        async with trio.open_nursery() as n:
            n.start_soon(client.call, read(1))  # holds the only room, never answered
            await trio.sleep(0.05)
            client.timeout = 0.3
            began = trio.current_time()
            with pytest.raises(Timeout, match=r"not sent within 0\.3 s \(waiting for room"):
                await client.call(read(2))
            assert 0.25 < trio.current_time() - began < 0.6
            n.cancel_scope.cancel()
    assert len(sheep.peers) == 1  # the connection stayed: nothing of the request was sent


async def test_call_many_gives_each_request_its_own_deadline(nursery):
    """Many requests answered one after the other take longer than the timeout together:
    each has the timeout from when it goes out, not from when the batch began."""
    sheep = await start(nursery, lambda peer: answer_all(peer, delay=0.05))
    async with SheepClient([sheep.address], timeout=0.3, connections=1, max_in_flight=1) as c:
        began = trio.current_time()
        replies = await c.call_many([read(oid, 10) for oid in range(10)])
    assert trio.current_time() - began > 0.45 and all(r.ok for r in replies)
