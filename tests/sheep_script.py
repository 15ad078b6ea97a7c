"""A scripted sheep for the client's tests: a trio TCP server whose every answer the test
writes (out of order, cut short, never, with an unknown id...), and small helpers."""

from __future__ import annotations

import socket
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import lru_cache

import trio

from sheepfs.backends.sheep import proto
from sheepfs.backends.sheep.client import SheepClient
from sheepfs.backends.sheep.proto import FLAG_WRITE, Op, Request, Res

HOST = "127.0.0.1"
_REQ = struct.Struct("<BBHIII32s")
_RSP = struct.Struct("<BBHIIII28s")
MiB = 1 << 20


@lru_cache(maxsize=64)
def pattern(oid: int, n: int) -> bytes:
    """What the scripted sheep reads from object ``oid``."""
    return (bytes(range(256)) * (n // 256 + 2))[oid % 256 : oid % 256 + n]


@dataclass
class Got:
    opcode: int
    flags: int
    id: int
    data_length: int
    body: bytes
    payload: bytes


class Peer:
    """One accepted connection of the scripted sheep."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream, self.buf, self.eof = stream, bytearray(), trio.Event()

    async def recv(self, n: int) -> bytes | None:
        while len(self.buf) < n:
            if not (data := await self.stream.receive_some(1 << 16)):
                self.eof.set()  # the client closed its end
                return None
            self.buf += data
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    async def request(self) -> Got | None:
        if (head := await self.recv(48)) is None:
            return None
        _, op, flags, _, rid, n, body = _REQ.unpack(head)
        return Got(
            op, flags, rid, n, body, (await self.recv(n) or b"") if flags & FLAG_WRITE else b""
        )

    async def reply(self, got: Got, result: int = 0, payload: bytes | None = None, **kw) -> None:
        """Answer ``got``: a READ_OBJ gets its pattern; ``rid``, ``length`` and ``body``
        override the header."""
        if payload is None:
            ok_read = got.opcode == Op.READ_OBJ and not result
            payload = pattern(oid_of(got), got.data_length) if ok_read else b""
        rid, n = kw.get("rid", got.id), kw.get("length", len(payload))
        head = _RSP.pack(0, got.opcode, 0, 1, rid, n, result, kw.get("body", b""))
        await self.stream.send_all(head)
        await self.stream.send_all(payload)  # apart: no copy of a big payload

    async def until_eof(self) -> None:
        while await self.recv(1) is not None:
            pass


Handler = Callable[[Peer], Awaitable[None]]


@dataclass
class Sheep:
    """A scripted sheep on 127.0.0.1: every accepted connection runs ``handler``."""

    handler: Handler
    port: int = 0
    peers: list[Peer] = field(default_factory=list)
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)

    @property
    def address(self) -> tuple[str, int]:
        return HOST, self.port

    async def run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        with self.scope:
            listeners = await trio.open_tcp_listeners(0, host=HOST)
            self.port = listeners[0].socket.getsockname()[1]
            task_status.started()
            await trio.serve_listeners(self._serve, listeners)

    async def _serve(self, stream: trio.SocketStream) -> None:
        self.peers.append(peer := Peer(stream))
        try:
            await self.handler(peer)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await trio.aclose_forcefully(stream)

    def stop(self) -> None:
        """Close every connection and stop listening: the port refuses from now on."""
        self.scope.cancel()


async def start(nursery: trio.Nursery, handler: Handler) -> Sheep:
    await nursery.start((sheep := Sheep(handler)).run)
    return sheep


async def answer_all(peer: Peer, delay: float = 0.0) -> None:
    while (got := await peer.request()) is not None:
        await trio.sleep(delay)
        await peer.reply(got)


def dead_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def read(oid: int, n: int = 1000, offset: int = 0) -> Request:
    return proto.obj_read(oid, offset, n)


def oid_of(got: Got) -> int:
    return struct.unpack_from("<Q", got.body)[0]


async def gather(client: SheepClient, reqs: list[Request], intos: list | None = None) -> list:
    """Call every request at once; the replies in the order of ``reqs``."""
    out: list = [None] * len(reqs)

    async def one(i: int) -> None:
        out[i] = await client.call(reqs[i], into=intos[i] if intos else None)

    async with trio.open_nursery() as n:
        for i in range(len(reqs)):
            n.start_soon(one, i)
    return out


def broken_first(misbehave: Callable[[Peer, Got], Awaitable[None]]) -> Handler:
    """The first connection misbehaves on its first request; later ones answer."""
    peers: list[Peer] = []

    async def handler(peer: Peer) -> None:
        peers.append(peer)
        if len(peers) > 1:
            return await answer_all(peer)
        got = await peer.request()
        assert got is not None
        await misbehave(peer, got)
        await peer.until_eof()

    return handler


async def unknown_id(peer: Peer, got: Got) -> None:
    await peer.reply(got, payload=b"\x11" * 3000, rid=got.id + 1000)


async def oversized(peer: Peer, got: Got) -> None:
    await peer.reply(got, payload=b"\xaa" * (got.data_length + 50))


async def mid_header(peer: Peer, got: Got) -> None:
    await peer.stream.send_all(_RSP.pack(0, got.opcode, 0, 1, got.id, 100, 0, b"")[:20])
    await peer.stream.aclose()


async def mid_payload(peer: Peer, got: Got) -> None:
    await peer.reply(got, payload=bytes(40), length=100)
    await peer.stream.aclose()


async def never_answer(peer: Peer) -> None:
    await peer.until_eof()


def scripted(results: list[int]) -> Handler:
    async def handler(peer: Peer) -> None:
        while (got := await peer.request()) is not None:
            await peer.reply(got, results.pop(0) if results else Res.SUCCESS)

    return handler


def counting(seen: list[int], delay: float = 0.02) -> Handler:
    """Answers one request per ``delay``, oldest first; records how many are outstanding."""

    async def handler(peer: Peer) -> None:
        outstanding: list[Got] = []

        async def answer() -> None:
            while True:
                await trio.sleep(delay)
                if outstanding:
                    await peer.reply(outstanding.pop(0))

        async with trio.open_nursery() as n:
            n.start_soon(answer)
            while (got := await peer.request()) is not None:
                outstanding.append(got)
                seen.append(len(outstanding))
            n.cancel_scope.cancel()

    return handler


def cluster(status: int) -> Handler:
    elog = struct.pack("<QQIIBBB3xH16s", 1 << 32, 0, 3, 3, 0, 2, 0, 0x18, b"local")

    async def handler(peer: Peer) -> None:
        while (got := await peer.request()) is not None:
            if got.opcode == Op.GET_CLUSTER_DEFAULT:
                await peer.reply(got, body=bytes([2, 0, 22]))
            else:
                await peer.reply(got, status, elog if status == Res.SUCCESS else b"")

    return handler
