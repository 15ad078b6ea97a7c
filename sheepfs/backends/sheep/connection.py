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
import math
import socket
from collections.abc import Sequence

import trio

from .dial import Address, connect, describe
from .pending import (
    Buffer,
    ConnectionLost,
    Pending,
    ProtocolError,
    advance,
    prepared,
)
from .proto import HEADER_SIZE, Reply, Request

log = logging.getLogger(__name__)


#: How long a protocol error's payload is drained before the connection is closed anyway.
DRAIN_TIMEOUT = 5.0
_SCRATCH = 64 << 10
#: Received ahead of the reply being read; the rest of a payload at least _DIRECT bytes
#: long is received straight into its buffer instead.
_RECV_BUFFER = 256 << 10
_DIRECT = 64 << 10
_MAX_IOV = 512
#: Replies read back to back (the socket never empty) before the reader yields anyway.
_BURST = 16


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
        self._rbuf = memoryview(bytearray(_RECV_BUFFER))
        self._rpos = self._rend = 0  # what of _rbuf is received and not yet taken
        #: The last recv took less than it asked for: the socket was empty then, so the
        #: next one waits for data first rather than fail (a raised BlockingIOError and a
        #: wasted system call on every reply of a request-response exchange).
        self._drained = True

    @classmethod
    async def open(
        cls, address: Address, max_in_flight: int = 8, max_bytes: int = 32 << 20
    ) -> Connection:
        """Connect (raises OSError); the caller must then start :meth:`reader`."""
        return cls(address, await connect(address), max_in_flight, max_bytes)

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

    async def submit(
        self, req: Request, into: memoryview | bytearray | None = None, deadline: float = math.inf
    ) -> Pending:
        """Wait for room, then send ``req`` whole under a fresh id; raises ConnectionLost,
        or trio.TooSlowError when ``deadline`` passes before it could be sent.

        The reply payload goes into ``into`` (at most its length) when given. A caller
        cancelled in the middle of sending closes the connection: the stream would be
        out of step. With room free and the socket not busy this never yields: waiting
        costs a pass of the scheduler, a large part of a small request's cost.
        """
        pending, bufs = prepared(req, into, deadline)
        if not self._free_for(pending.cost):
            with trio.fail_at(deadline):
                await self._reserve(pending.cost)
        else:
            self._take(pending.cost)
        await self._send([(req, pending, bufs)])
        return pending

    async def submit_all(
        self, reqs: Sequence[Request], deadline: float = math.inf
    ) -> list[Pending]:
        """Send as many of ``reqs`` as there is room for now (at least the first, waiting
        for room if need be), all in one system call; their pendings, in order.

        Only for requests safe to send twice: if the send breaks, each counts as sent."""
        batch = []
        for req in reqs:
            pending, bufs = prepared(req, None, deadline)
            if not self._free_for(pending.cost):
                break
            self._take(pending.cost)
            batch.append((req, pending, bufs))
        if not batch:
            return [await self.submit(reqs[0], None, deadline)]
        await self._send(batch)
        return [p for _, p, _ in batch]

    async def _send(self, batch: list[tuple[Request, Pending, list[memoryview]]]) -> None:
        """Register and send requests that hold room, under the send lock (taken without a
        yield when nobody holds it). A send cut off after its first byte (cancelled, or
        its socket closed by the watchdog) closes the connection: the stream is out of step."""
        bufs: list[memoryview] = []
        for req, pending, views in batch:
            rid = self._fresh_id()
            self._pending[rid] = pending
            pending.id = rid
            bufs.append(memoryview(req.header(rid)))
            bufs.extend(views)
        pendings = [p for _, p, _ in batch]
        try:
            if self._send_lock.locked():
                with trio.fail_at(pendings[0].deadline):
                    await self._send_lock.acquire()
            else:
                self._send_lock.acquire_nowait()
            try:
                self._check_open(pendings[0])
                await self._send_all(bufs, pendings)
            finally:
                self._send_lock.release()
        except (OSError, trio.ClosedResourceError) as e:
            self.close(f"sending failed: {e}")
            raise pendings[0].error or ConnectionLost(f"sending failed: {e}") from e
        except BaseException:
            if pendings[0].sent:
                self.close("a request was cut off in the middle (cancelled while sending)")
            else:
                for p in pendings:
                    if self._pending.pop(p.id, None) is p:
                        self._release(p)
            raise

    def _fresh_id(self) -> int:
        while True:
            self._last_id = (self._last_id + 1) & 0xFFFFFFFF
            if self._last_id and self._last_id not in self._pending:
                return self._last_id

    def has_room(self) -> bool:
        """Whether a small request would go out now, without waiting."""
        return self._free_for(0)

    def _free_for(self, cost: int) -> bool:
        """Whether a request of ``cost`` may take room now, without waiting (nobody is
        waiting before it, first come first admitted)."""
        return not (self._admit.locked() or self.closed) and self._fits(cost)

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
                self._take(cost)
        finally:
            self.waiting -= 1

    def _take(self, cost: int) -> None:
        self.in_flight += 1
        self.bytes_in_flight += cost

    def _release(self, pending: Pending) -> None:
        self.in_flight -= 1
        self.bytes_in_flight -= pending.cost
        self._wake()

    def _wake(self) -> None:
        if self.waiting:
            self._room.set()
            self._room = trio.Event()

    def _check_open(self, pending: Pending | None = None) -> None:
        if self.closed:
            raise (pending and pending.error) or ConnectionLost(
                f"the connection was closed: {self.why}", sent=False
            )

    async def _send_all(self, bufs: list[memoryview], pendings: list[Pending]) -> None:
        while bufs:
            try:
                n = self._sock.sendmsg(bufs[:_MAX_IOV])
            except BlockingIOError:
                await trio.lowlevel.wait_writable(self._sock)
                continue
            if not pendings[0].sent:
                for p in pendings:
                    p.sent = True
            advance(bufs, n)

    # -- receiving --------------------------------------------------------------------------

    async def reader(self) -> None:
        """Read replies until the connection ends; whatever ends it fails what is in flight."""
        header = memoryview(bytearray(HEADER_SIZE))
        why = "the sheep closed the connection"
        burst = 0
        try:
            while True:
                if self._rend - self._rpos >= HEADER_SIZE:  # received with an earlier one
                    rsp = Reply.parse(self._rbuf[self._rpos : self._rpos + HEADER_SIZE])
                    self._rpos += HEADER_SIZE
                else:
                    got = await self._recv_exact(header)
                    if got == 0:
                        break
                    if got < HEADER_SIZE:
                        raise ConnectionLost("the sheep closed the connection in a reply header")
                    rsp = Reply.parse(header)
                await self._dispatch(rsp)
                burst += 1
                if burst >= _BURST:  # replies keep coming: let the woken callers run
                    burst = 0
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
            pending.finish()

    async def _payload(self, pending: Pending, n: int) -> Buffer:
        if pending.abandoned:
            await self._drain(n)
            return b""
        if pending.into is not None:
            view = pending.into if n == pending.into.nbytes else pending.into[:n]
        elif self._rend - self._rpos >= n:  # received already: one copy, no zero fill
            self._rpos += n
            return bytes(self._rbuf[self._rpos - n : self._rpos])
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
        is drained instead, so a late reply never writes into a buffer given back.

        Small reads come out of a receive buffer, so one ``recv`` takes a header with its
        payload, or many small replies at once; what is left of a large payload goes
        straight into ``view``."""
        got, size = 0, view.nbytes
        while got < size:
            if pending is not None and pending.abandoned:
                await self._drain(size - got)
                return size
            if self._rpos < self._rend:
                k = min(self._rend - self._rpos, size - got)
                view[got : got + k] = self._rbuf[self._rpos : self._rpos + k]
                self._rpos += k
                got += k
                continue
            if self._drained:  # the last recv emptied the socket: wait before the next
                if self._sock.fileno() < 0:  # closed meanwhile (a send failed): no fd to wait on
                    raise ConnectionLost(self.why or "the connection was closed")
                await trio.lowlevel.wait_readable(self._sock)
            direct = size - got >= _DIRECT
            target = view[got:] if direct else self._rbuf
            try:
                k = self._sock.recv_into(target)
            except BlockingIOError:
                self._drained = True
                continue
            if not k:
                return got
            self._drained = k < target.nbytes
            if direct:
                got += k
            else:
                self._rpos, self._rend = 0, k
        return got

    async def _drain(self, n: int) -> None:
        while n:
            chunk = self._scratch[: min(n, _SCRATCH)]
            k = await self._recv_exact(chunk)
            if k < chunk.nbytes:
                raise ConnectionLost("the sheep closed the connection in a reply payload")
            n -= k

    # -- closing ----------------------------------------------------------------------------

    def expire(self, now: float) -> str | None:
        """Close the connection if a request on it is past its deadline (rule 23: its
        state is unknown then); what timed out, or None. The others fail as lost."""
        late = [p for p in self._pending.values() if p.deadline <= now]
        if not late:
            return None
        for p in late:
            p.expired = True
        why = f"{len(late)} request(s) got no answer in time"
        self.close(why)
        return why

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
            p.finish()
        self._wake()

    def close(self, why: str = "closed by the client") -> None:
        """Fail what is in flight and close the socket; the reader then ends."""
        self._stop(why)
        if self._sock.fileno() >= 0:
            trio.lowlevel.notify_closing(self._sock)
            self._sock.close()
