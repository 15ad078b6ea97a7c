"""One persistent TCP connection to one sheep, with requests pipelined over it.

A sheep answers in completion order (protocol.md §8), so one reader task per connection
matches each reply to its request by id and reads exactly its payload, straight into the
caller's buffer when there is one. Bounds on requests and bytes in flight keep the sheep
from allocating without limit and small requests from queueing behind huge ones (rule 24).

The socket is a plain non-blocking socket driven with trio's wait_readable/wait_writable:
``recv_into`` on memoryview slices fills the caller's buffer with no copy, and ``sendmsg``
sends header and payload pieces as one unit without joining them.
"""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass, field, replace

import trio

from .proto import FLAG_WRITE, HEADER_SIZE, Reply, Request

log = logging.getLogger(__name__)

Address = tuple[str, int]
Buffer = bytes | bytearray | memoryview

#: How long a protocol error's payload is drained before the connection is closed anyway.
DRAIN_TIMEOUT = 5.0
#: Idle seconds, probe interval, probes: a silently dead peer shows within about a minute.
KEEPALIVE = (30, 10, 3)
_SCRATCH = 64 << 10
_MAX_IOV = 512


def describe(address: Address) -> str:
    """``host:port`` as users write it (IPv6 in brackets)."""
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class ConnectionLost(Exception):
    """The connection ended with the request unanswered.

    ``sent`` says whether any byte of the request reached the socket, that is whether the
    sheep may have run it (rule 22): a request never sent is always safe to send again.
    """

    def __init__(self, why: str, sent: bool = True) -> None:
        super().__init__(why)
        self.why = why
        self.sent = sent


class ProtocolError(ConnectionLost):
    """The sheep sent what a correct sheep never sends; the connection was reset."""


@dataclass(eq=False)
class Pending:
    """One request on the wire, until its reply has been read whole."""

    limit: int  # the most payload bytes its reply may carry
    cost: int  # bytes it holds of the connection's budget
    into: memoryview | None = None
    sent: bool = False
    abandoned: bool = False  # the caller stopped waiting: drain the reply, fill nothing
    reply: Reply | None = None
    error: ConnectionLost | None = None
    done: trio.Event = field(default_factory=trio.Event)

    async def wait(self) -> Reply:
        """The reply; raises ConnectionLost. A caller that is cancelled abandons it."""
        try:
            await self.done.wait()
        except BaseException:
            if not self.done.is_set():
                self.abandoned = True
            raise
        if self.error is not None:
            raise self.error
        assert self.reply is not None
        return self.reply


def payload_views(req: Request) -> list[memoryview]:
    """The request's payload as byte views (it may be one buffer or a list of them),
    checked against rule 1: WRITE if and only if exactly ``data_length`` bytes follow."""
    parts = req.payload if isinstance(req.payload, list | tuple) else [req.payload]
    views = [_bytes_view(p) for p in parts]
    views = [v for v in views if v.nbytes]
    size = sum(v.nbytes for v in views)
    if req.flags & FLAG_WRITE and size != req.data_length:
        raise ValueError(f"a WRITE request carries {size} bytes, not data_length {req.data_length}")
    if not req.flags & FLAG_WRITE and size:
        raise ValueError("a request without FLAG_WRITE carries no payload")
    return views


def _bytes_view(buf: Buffer) -> memoryview:
    view = memoryview(buf)
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")


def _advance(bufs: list[memoryview], n: int) -> None:
    """Drop the first ``n`` bytes of ``bufs``, in place."""
    while n:
        if n < bufs[0].nbytes:
            bufs[0] = bufs[0][n:]
            return
        n -= bufs.pop(0).nbytes


def _tune(sock: socket.socket) -> None:
    """TCP_NODELAY (requests are small and latency-bound) and keepalive (rule 23)."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in zip(
        ("TCP_KEEPIDLE", "TCP_KEEPINTVL", "TCP_KEEPCNT"), KEEPALIVE, strict=True
    ):
        if hasattr(socket, name):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)


async def _connect(address: Address) -> socket.socket:
    host, port = address
    last: OSError | None = None
    for family, kind, proto, _, sockaddr in await trio.socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM
    ):
        tsock = trio.socket.socket(family, kind, proto)
        try:
            await tsock.connect(sockaddr)
        except OSError as e:
            tsock.close()
            last = e
            continue
        except BaseException:
            tsock.close()
            raise
        sock = socket.socket(family, kind, proto, fileno=tsock.detach())
        sock.setblocking(False)
        _tune(sock)
        return sock
    raise last or OSError(f"{host} resolves to no address")


class Connection:
    """One TCP connection to one sheep; run :meth:`reader` in a task for its lifetime."""

    def __init__(
        self,
        address: Address,
        sock: socket.socket,
        max_in_flight: int = 8,
        max_bytes: int = 32 << 20,
    ) -> None:
        self.address = address
        self.max_in_flight = max_in_flight
        self.max_bytes = max_bytes
        self.in_flight = 0  # requests holding room, from admission to their reply read whole
        self.bytes_in_flight = 0
        self.waiting = 0  # callers waiting for room
        self.closed = False
        self.why: str | None = None  # why it closed
        self._sock = sock
        self._pending: dict[int, Pending] = {}
        self._last_id = 0
        self._send_lock = trio.Lock()
        self._admit = trio.Lock()  # first come, first admitted: big requests do not starve
        self._room = trio.Event()
        self._scratch = memoryview(bytearray(_SCRATCH))

    @classmethod
    async def open(
        cls, address: Address, max_in_flight: int = 8, max_bytes: int = 32 << 20
    ) -> Connection:
        """Connect (raises OSError); the caller must then start :meth:`reader`."""
        return cls(address, await _connect(address), max_in_flight, max_bytes)

    @property
    def load(self) -> int:
        return self.in_flight + self.waiting

    def __repr__(self) -> str:
        state = f"closed: {self.why}" if self.closed else f"{self.in_flight} in flight"
        return f"<Connection {describe(self.address)} {state}>"

    # -- sending ----------------------------------------------------------------------------

    async def call(self, req: Request, into: memoryview | None = None) -> Reply:
        """Send ``req`` and wait for its reply (no deadline here: the caller sets one)."""
        return await (await self.submit(req, into)).wait()

    async def submit(self, req: Request, into: memoryview | bytearray | None = None) -> Pending:
        """Wait for room, then send ``req`` whole under a fresh id; raises ConnectionLost.

        The reply payload goes into ``into`` (at most its length) when given. A caller
        cancelled in the middle of sending closes the connection: the stream would be
        out of step.
        """
        views = payload_views(req)
        sent = sum(v.nbytes for v in views)
        expected = 0 if req.flags & FLAG_WRITE else req.data_length
        limit = req.data_length
        if into is not None:
            into = _bytes_view(into)
            if into.readonly:
                raise ValueError("the reply buffer is read-only")
            limit = min(limit, into.nbytes)
        pending = Pending(limit, sent + expected, into)
        await self._reserve(pending.cost)
        rid = self._fresh_id()
        self._pending[rid] = pending
        header = memoryview(replace(req, id=rid).header())
        try:
            async with self._send_lock:
                self._check_open(pending)
                await self._send_all([header, *views], pending)
        except (OSError, trio.ClosedResourceError) as e:
            self.close(f"sending failed: {e}")
            raise pending.error or ConnectionLost(f"sending failed: {e}") from e
        except BaseException:
            if pending.sent:
                self.close("a request was cut off in the middle (cancelled while sending)")
            elif self._pending.pop(rid, None) is pending:
                self._release(pending)
            raise
        return pending

    def _fresh_id(self) -> int:
        while True:
            self._last_id = (self._last_id + 1) & 0xFFFFFFFF
            if self._last_id and self._last_id not in self._pending:
                return self._last_id

    def _fits(self, cost: int) -> bool:
        if not self.in_flight:
            return True  # a request bigger than the whole budget still goes, alone
        return self.in_flight < self.max_in_flight and self.bytes_in_flight + cost <= self.max_bytes

    async def _reserve(self, cost: int) -> None:
        self.waiting += 1
        try:
            async with self._admit:
                while not self._fits(cost) and not self.closed:
                    await self._room.wait()
                self._check_open()
                self.in_flight += 1
                self.bytes_in_flight += cost
        finally:
            self.waiting -= 1

    def _release(self, pending: Pending) -> None:
        self.in_flight -= 1
        self.bytes_in_flight -= pending.cost
        self._wake()

    def _wake(self) -> None:
        self._room.set()
        self._room = trio.Event()

    def _check_open(self, pending: Pending | None = None) -> None:
        if self.closed:
            raise (pending and pending.error) or ConnectionLost(
                f"the connection was closed: {self.why}", sent=False
            )

    async def _send_all(self, bufs: list[memoryview], pending: Pending) -> None:
        while bufs:
            try:
                n = self._sock.sendmsg(bufs[:_MAX_IOV])
            except BlockingIOError:
                await trio.lowlevel.wait_writable(self._sock)
                continue
            pending.sent = True
            _advance(bufs, n)

    # -- receiving --------------------------------------------------------------------------

    async def reader(self) -> None:
        """Read replies until the connection ends; whatever ends it fails what is in flight."""
        header = memoryview(bytearray(HEADER_SIZE))
        why = "the sheep closed the connection"
        try:
            while True:
                got = await self._recv_exact(header)
                if got == 0:
                    break
                if got < HEADER_SIZE:
                    raise ConnectionLost("the sheep closed the connection in a reply header")
                await self._dispatch(Reply.parse(header))
                await trio.lowlevel.checkpoint()
        except ProtocolError as e:
            why = f"protocol error: {e.why}"
        except ConnectionLost as e:
            why = e.why
        except (OSError, trio.ClosedResourceError, trio.BusyResourceError) as e:
            why = self.why or f"receiving failed: {e or type(e).__name__}"
        except Exception:  # a bug here must not take the whole client down
            log.exception("the reader of %r failed", self)
            why = "internal error in the reply reader"
        finally:
            self.close(why)

    async def _dispatch(self, rsp: Reply) -> None:
        pending = self._pending.get(rsp.id)
        n = rsp.data_length
        if pending is None:
            await self._reject(f"a reply with unknown id {rsp.id} ({n} payload bytes)", n)
        elif n > pending.limit:
            why = f"the reply to id {rsp.id} carries {n} bytes, more than the {pending.limit} room"
            await self._reject(why, n)
        if n:
            rsp.payload = await self._payload(pending, n)
        if self._pending.pop(rsp.id, None) is pending:
            self._release(pending)
            pending.reply = rsp
            pending.done.set()

    async def _payload(self, pending: Pending, n: int) -> Buffer:
        if pending.abandoned:
            await self._drain(n)
            return b""
        if pending.into is not None:
            view = pending.into if n == pending.into.nbytes else pending.into[:n]
        else:
            view = memoryview(bytearray(n))
        if await self._recv_exact(view, pending) < n:
            raise ConnectionLost(f"the sheep closed the connection in a {n}-byte reply payload")
        return view if pending.into is not None else view.obj

    async def _reject(self, why: str, n: int) -> None:
        """A protocol error (rule 2, 3): fail everything in flight, drain, and reset, so
        that nothing is parsed from the middle of a payload and close sends no reset."""
        log.warning("sheep %s: %s; resetting the connection", describe(self.address), why)
        self._stop(why, ProtocolError)
        with trio.move_on_after(DRAIN_TIMEOUT):
            await self._drain(n)
        raise ProtocolError(why)

    async def _recv_exact(self, view: memoryview, pending: Pending | None = None) -> int:
        """Fill ``view``; fewer bytes only at end of stream. An abandoned request's rest
        is drained instead, so a late reply never writes into a buffer given back."""
        got, size = 0, view.nbytes
        while got < size:
            if pending is not None and pending.abandoned:
                await self._drain(size - got)
                return size
            try:
                k = self._sock.recv_into(view[got:] if got else view)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(self._sock)
                continue
            if not k:
                return got
            got += k
        return got

    async def _drain(self, n: int) -> None:
        while n:
            chunk = self._scratch[: min(n, _SCRATCH)]
            k = await self._recv_exact(chunk)
            if k < chunk.nbytes:
                raise ConnectionLost("the sheep closed the connection in a reply payload")
            n -= k

    # -- closing ----------------------------------------------------------------------------

    def _stop(self, why: str, kind: type[ConnectionLost] = ConnectionLost) -> None:
        """Take no more requests and fail those in flight (each says whether it was sent)."""
        if self.closed:
            return
        self.closed = True
        self.why = why
        pending, self._pending = self._pending, {}
        for p in pending.values():
            self._release(p)
            p.error = kind(why, sent=p.sent)
            p.done.set()
        self._wake()

    def close(self, why: str = "closed by the client") -> None:
        """Fail what is in flight and close the socket; the reader then ends."""
        self._stop(why)
        if self._sock.fileno() >= 0:
            trio.lowlevel.notify_closing(self._sock)
            self._sock.close()
