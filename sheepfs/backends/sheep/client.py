"""A pooled client of the sheep wire protocol, with deadlines, reconnects and failover.

A sheep keeps running a request whose connection broke or whose caller gave up (rule 22),
and sets no timeout of its own (rule 23). So every call has a deadline, every failure says
whether the request may have run, and only the caller decides whether to send it again
(``resend``): it alone knows whether the op is idempotent.
"""

from __future__ import annotations

import logging
import os
import socket
from collections import deque
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass

import trio

from ...errors import Timeout, Unavailable
from .cluster import ClusterInfo, cluster_info, not_serving
from .connection import Connection
from .dial import Address, describe
from .pending import ConnectionLost, Pending
from .proto import FLAG_WRITE, RETRYABLE, Op, Reply, Request, Res, plain, result_name, stat_cluster
from .stats import ClientStats

log = logging.getLogger(__name__)

#: The longest one connection attempt may take: a dead address should cost seconds before
#: the next one is tried, not the kernel's SYN timeout.
CONNECT_TIMEOUT = 5.0
#: First and longest pause between retries (RETRYABLE results, repeated connection losses).
BACKOFF = (0.05, 1.0)


def op_name(opcode: int) -> str:
    try:
        return Op(opcode).name
    except ValueError:
        return f"op 0x{opcode:02x}"


@dataclass
class _Call:
    """One call and where it stands (for the message when its deadline expires)."""

    req: Request
    into: memoryview | None
    resend: bool
    retry: bool
    deadline: float
    phase: str = "connecting"
    conn: Connection | None = None
    pending: Pending | None = None

    @property
    def name(self) -> str:
        return op_name(self.req.opcode)


class SheepClient:
    """Requests to a Sheepdog cluster over up to ``connections`` pooled connections.

    Use as ``async with SheepClient(addresses) as client``: the client owns the nursery
    its reader tasks run in. Addresses are tried in order; the first that answers is used
    until it stops answering.
    """

    def __init__(
        self,
        addresses: Sequence[tuple[str, int]],
        timeout: float = 60.0,
        connections: int = 4,
        max_in_flight: int = 8,
        max_bytes: int = 32 << 20,
    ) -> None:
        if not addresses:
            raise ValueError("no sheep address given")
        if timeout <= 0 or connections < 1 or max_in_flight < 1 or max_bytes < 1:
            raise ValueError("timeout, connections, max_in_flight and max_bytes must be > 0")
        self.addresses: list[Address] = [(str(h), int(p)) for h, p in addresses]
        self.timeout = timeout
        self.connections = connections
        self.max_in_flight = max_in_flight
        self.max_bytes = max_bytes
        self.stats = ClientStats()
        self._current = 0  # index of the address in use
        self._leave: str | None = None  # why to try the next address first on the next dial
        self._pool: list[Connection] = []
        self._connect_lock = trio.Lock()
        self._nursery: trio.Nursery | None = None
        self._nursery_cm: AbstractAsyncContextManager[trio.Nursery] | None = None

    @property
    def address(self) -> Address:
        """The address in use (or to be tried first)."""
        return self.addresses[self._current]

    async def __aenter__(self) -> SheepClient:
        if self._nursery is not None:
            raise RuntimeError("this SheepClient is open already")
        self._nursery_cm = trio.open_nursery()
        self._nursery = await self._nursery_cm.__aenter__()
        self._nursery.start_soon(self._watchdog, name="sheep request deadlines")
        return self

    async def __aexit__(self, *exc_info: object) -> bool:
        """Close every connection (calls in flight fail) and wait for the readers. A body's
        exception goes on as it is, not wrapped in an exception group."""
        nursery, manager = self._nursery, self._nursery_cm
        assert nursery is not None and manager is not None
        self._nursery = self._nursery_cm = None
        for conn in self._pool:
            conn.close("the client was closed")
        self._pool = []
        nursery.cancel_scope.cancel()
        await manager.__aexit__(None, None, None)
        return False

    # -- calls ------------------------------------------------------------------------------

    async def call(
        self, req: Request, *, into: memoryview | None = None, resend: bool = True
    ) -> Reply:
        """Send ``req`` and return its reply, whatever its result, within ``timeout``.

        ``resend``: the request is safe to send twice (reads, writes of the same bytes,
        lookups, bitmaps); then a lost connection is resent and RETRYABLE results are
        retried within the deadline. Raises Timeout, or Unavailable when no sheep answers
        or an unsafe request's connection broke with it in flight.
        """
        return await self._call(req, into, resend, retry=resend)

    async def call_many(self, reqs: Sequence[Request]) -> list[Reply]:
        """The replies to ``reqs``, in order: requests safe to send twice (reads of inodes,
        lookups), as many on the wire at once as the pool has room for, those for one
        connection sent in one system call. One whose connection breaks, or whose result
        is RETRYABLE, goes again through :meth:`call`, with its resends and retries."""
        if self._nursery is None:
            raise RuntimeError("use SheepClient as `async with SheepClient(...) as client`")
        replies: list[Reply | None] = [None] * len(reqs)
        waiting: deque[tuple[int, Pending]] = deque()
        sent = 0
        refill = max(1, self.connections * self.max_in_flight // 2)
        while sent < len(reqs) or waiting:
            if len(waiting) <= refill:  # in batches once half the room is free, not one per reply
                sent = await self._send_many(reqs, sent, waiting)
            if not waiting:  # the connection broke before the next one went out
                replies[sent] = await self.call(reqs[sent])
                sent += 1
                continue
            k, pending = waiting.popleft()
            replies[k] = await self._one_of_many(reqs[k], pending)
        return replies  # type: ignore[return-value]

    async def _send_many(
        self, reqs: Sequence[Request], sent: int, waiting: deque[tuple[int, Pending]]
    ) -> int:
        """Send what there is room for of ``reqs[sent:]`` (a connection's worth per system
        call), adding the pendings to ``waiting``; how many of ``reqs`` are sent now."""
        while sent < len(reqs):
            deadline = trio.current_time() + self.timeout  # each request its own
            try:
                conn = await self._connection(deadline)
                if waiting and not conn.has_room():
                    break
                batch = await conn.submit_all(reqs[sent : sent + self.max_in_flight], deadline)
            except trio.TooSlowError:
                raise Timeout("call", None, f"not sent within {self.timeout:g} s") from None
            except ConnectionLost:
                break  # what is waiting fails too, and goes again through call()
            waiting.extend(enumerate(batch, sent))
            sent += len(batch)
        return sent

    async def _one_of_many(self, req: Request, pending: Pending) -> Reply:
        try:
            reply = await pending.wait()
        except ConnectionLost as e:
            if pending.expired:
                self.stats.timeouts += 1
                why = f"{op_name(req.opcode)}: no answer within {self.timeout:g} s"
                raise Timeout("call", None, why) from e
            return await self.call(req)
        self.stats.requests += 1
        self._count(req, reply)
        if reply.result not in RETRYABLE:
            return reply
        self.stats.retries += 1
        return await self.call(req)

    async def _call(
        self, req: Request, into: memoryview | None, resend: bool, retry: bool
    ) -> Reply:
        if self._nursery is None:
            raise RuntimeError("use SheepClient as `async with SheepClient(...) as client`")
        started = trio.current_time()
        call = _Call(req, into, resend, retry, started + self.timeout)
        self.stats.requests += 1
        try:
            reply = await self._attempts(call)
        except trio.TooSlowError:
            self.stats.failures += 1
            raise self._timed_out(call) from None
        except BaseException:
            self.stats.failures += 1
            raise
        self.stats.record(trio.current_time() - started)
        return reply

    async def _attempts(self, c: _Call) -> Reply:
        """Send until answered. The deadline holds without a cancel scope around the
        whole call (one costs about as much as the rest of a 4 KiB read): the waits
        before sending have their own, and the watchdog ends a request on the wire."""
        pause, losses = BACKOFF[0], 0
        while True:
            c.phase, c.pending = "connecting", None
            c.conn = conn = await self._connection(c.deadline, after_loss=losses > 0)
            try:
                c.phase = "waiting for room on its connection"
                c.pending = await conn.submit(c.req, c.into, c.deadline)
                c.phase = "waiting for the reply"
                reply = await c.pending.wait()
            except ConnectionLost as e:
                if c.pending is not None and c.pending.expired:
                    raise trio.TooSlowError from e
                losses += 1
                self._lost(c, conn, e)
                if losses > 1:  # the sheep accepts and drops us: do not spin
                    await self._pause(c, pause)
                    pause = min(pause * 2, BACKOFF[1])
                continue
            self._count(c.req, reply)
            if not c.retry or reply.result not in RETRYABLE:
                return reply
            if trio.current_time() + pause >= c.deadline:
                return reply  # no time left for another try: the caller maps the result
            self._retrying(c, conn, reply)
            await self._pause(c, pause)
            pause = min(pause * 2, BACKOFF[1])

    @staticmethod
    async def _pause(c: _Call, seconds: float) -> None:
        c.phase, c.pending = "pausing before it was sent again", None
        await trio.sleep(min(seconds, max(0.0, c.deadline - trio.current_time())))
        if trio.current_time() >= c.deadline:
            raise trio.TooSlowError

    async def _watchdog(self) -> None:
        """End requests on the wire past their deadline, a few times per timeout."""
        tick = max(0.01, min(1.0, self.timeout / 10))
        while True:
            await trio.sleep(tick)
            now = trio.current_time()
            for conn in self._pool:
                why = conn.expire(now)
                if why is not None:
                    log.info("connection to sheep %s closed: %s", describe(conn.address), why)

    def _lost(self, c: _Call, conn: Connection, e: ConnectionLost) -> None:
        """A connection ended under a request: raise for an unsafe one that was sent."""
        where = describe(conn.address)
        log.info("connection to sheep %s lost: %s", where, e.why)
        if e.sent and not c.resend:
            why = f"the connection to sheep {where} broke ({e.why}) with the request in flight"
            error = Unavailable(c.name, None, f"{why}: it may or may not have run")
            error.may_have_run = True
            raise error from e
        self.stats.resends += e.sent

    def _retrying(self, c: _Call, conn: Connection, reply: Reply) -> None:
        self.stats.retries += 1
        where, result = describe(conn.address), result_name(reply.result)
        log.debug("sheep %s answered %s to %s; retrying", where, result, c.name)
        if reply.result == Res.SHUTDOWN and len(self.addresses) > 1:
            conn.close("the sheep is shutting down")
            if conn.address == self.address:
                self._leave = "it is shutting down"

    def _count(self, req: Request, reply: Reply) -> None:
        if req.flags & FLAG_WRITE:
            self.stats.bytes_out += req.data_length
        self.stats.bytes_in += reply.data_length

    def _timed_out(self, c: _Call) -> Timeout:
        """The deadline passed: a request on the wire leaves its connection in an unknown
        state, so that connection is closed (rule 23)."""
        self.stats.timeouts += 1
        if c.conn is None or c.pending is None or not c.pending.sent:
            return Timeout(c.name, None, f"not sent within {self.timeout:g} s ({c.phase})")
        c.conn.close(f"{c.name} timed out")
        why = f"sheep {describe(c.conn.address)} did not answer within {self.timeout:g} s"
        error = Timeout(
            c.name, None, f"{why}; the connection was closed, the request may still run"
        )
        error.may_have_run = True
        return error

    # -- connections ------------------------------------------------------------------------

    def _least_loaded(self) -> Connection | None:
        best, gone = None, False
        for conn in self._pool:
            if conn.closed:
                gone = True
            elif best is None or conn.load < best.load:
                best = conn
        if gone:
            self._pool = [c for c in self._pool if not c.closed]
        return best

    async def _connection(self, deadline: float, after_loss: bool = False) -> Connection:
        """The pooled connection with the least in flight; a new one (lazily, up to
        ``connections``) when every one is busy. Raises trio.TooSlowError at ``deadline``."""
        best = self._least_loaded()
        if best is not None and (best.load == 0 or len(self._pool) >= self.connections):
            return best
        if best is not None and self._connect_lock.locked() and best.load < self.max_in_flight:
            return best  # rather than wait for the connection being made
        with trio.fail_at(deadline):
            return await self._new_connection(after_loss)

    async def _new_connection(self, after_loss: bool) -> Connection:
        async with self._connect_lock:
            best = self._least_loaded()
            if best is not None and (best.load == 0 or len(self._pool) >= self.connections):
                return best
            conn = await self._dial()
            self._pool.append(conn)
            self.stats.reconnects += after_loss
            return conn

    async def _dial(self) -> Connection:
        """Connect to the address in use, else to the next ones in turn."""
        assert self._nursery is not None
        n = len(self.addresses)
        first = (self._current + 1) % n if self._leave and n > 1 else self._current
        errors: dict[Address, str] = {}
        if self._leave:
            errors[self.address] = self._leave
        for k in range(n):
            i = (first + k) % n
            address = self.addresses[i]
            try:
                with trio.fail_after(min(self.timeout, CONNECT_TIMEOUT)):
                    conn = await Connection.open(address, self.max_in_flight, self.max_bytes)
            except (OSError, trio.TooSlowError) as e:
                errors[address] = _reason(e)
                continue
            if i != self._current:
                self._fail_over(i, errors)
            self._leave = None
            self._nursery.start_soon(conn.reader, name=f"sheep reader {describe(address)}")
            self.stats.connects += 1
            return conn
        listed = ", ".join(describe(a) for a in self.addresses)
        last = errors[self.addresses[(first + n - 1) % n]]
        raise Unavailable("connect", None, f"no sheep answers at {listed}: {last}")

    def _fail_over(self, i: int, errors: dict[Address, str]) -> None:
        old, new = self.address, self.addresses[i]
        why = errors.get(old, "connection lost")
        log.warning("sheep %s stopped answering (%s); using %s", describe(old), why, describe(new))
        self._current = i
        self.stats.failovers += 1

    # -- the cluster ------------------------------------------------------------------------

    async def probe(self) -> ClusterInfo:
        """Check that the cluster serves and speaks 1.0 (STAT_CLUSTER), and learn its
        defaults (GET_CLUSTER_DEFAULT). Raises Unavailable saying why not, at once."""
        where = f"sheep {describe(self.address)}"
        stat = await self._call(stat_cluster(), None, resend=True, retry=False)
        if not stat.ok:
            raise Unavailable("connect", None, f"{where}: {not_serving(stat.result)}")
        dflt = await self._call(plain(Op.GET_CLUSTER_DEFAULT), None, resend=True, retry=False)
        if not dflt.ok:
            why = f"GET_CLUSTER_DEFAULT answered {result_name(dflt.result)}"
            raise Unavailable("connect", None, f"{where}: {why}")
        return cluster_info(stat, dflt)


def _reason(e: OSError | trio.TooSlowError) -> str:
    if isinstance(e, trio.TooSlowError):
        return f"no connection within {CONNECT_TIMEOUT:g} s"
    if e.errno and not isinstance(e, socket.gaierror):
        return os.strerror(e.errno)  # not trio's "Error connecting to ('h', p): ..."
    return e.strerror or str(e) or type(e).__name__
