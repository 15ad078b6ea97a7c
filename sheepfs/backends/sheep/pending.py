"""A request between being sent and its reply being read, and how it can fail.

A connection keeps one :class:`Pending` per request on the wire; the caller parks on it
and the connection's reader wakes it. ``sent`` and ``expired`` are what the client needs
to decide, when a connection breaks, whether a request may have run and may be resent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import trio

from .proto import FLAG_WRITE, Reply, Request

Buffer = bytes | bytearray | memoryview


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
    """One request on the wire, until its reply has been read whole.

    Its waiter is parked and woken with trio's low-level primitives rather than an Event:
    this is the path of every 4 KiB read, and an Event and its parking lot cost more than
    the rest of the request's bookkeeping together.
    """

    limit: int  # the most payload bytes its reply may carry
    cost: int  # bytes it holds of the connection's budget
    into: memoryview | None = None
    deadline: float = math.inf  # the client's; past it the watchdog closes the connection
    sent: bool = False
    abandoned: bool = False  # the caller stopped waiting: drain the reply, fill nothing
    expired: bool = False  # its deadline passed with it on the wire
    finished: bool = False
    reply: Reply | None = None
    error: ConnectionLost | None = None
    id: int = 0  # on the wire
    _waiter: trio.lowlevel.Task | None = None

    def finish(self) -> None:
        """The reply (or error) is in: wake the waiter."""
        self.finished = True
        waiter, self._waiter = self._waiter, None
        if waiter is not None:
            trio.lowlevel.reschedule(waiter)

    async def wait(self) -> Reply:
        """The reply; raises ConnectionLost. A caller that is cancelled abandons it."""
        if not self.finished:
            self._waiter = trio.lowlevel.current_task()

            def abort(_: object) -> trio.lowlevel.Abort:
                self._waiter = None
                self.abandoned = True
                return trio.lowlevel.Abort.SUCCEEDED

            await trio.lowlevel.wait_task_rescheduled(abort)
        if self.error is not None:
            raise self.error
        assert self.reply is not None
        return self.reply


def payload_views(req: Request) -> list[memoryview]:
    """The request's payload as byte views (it may be one buffer or a list of them),
    checked against rule 1: WRITE if and only if exactly ``data_length`` bytes follow."""
    parts = req.payload if isinstance(req.payload, list | tuple) else [req.payload]
    views = [bytes_view(p) for p in parts]
    views = [v for v in views if v.nbytes]
    size = sum(v.nbytes for v in views)
    if req.flags & FLAG_WRITE and size != req.data_length:
        raise ValueError(f"a WRITE request carries {size} bytes, not data_length {req.data_length}")
    if not req.flags & FLAG_WRITE and size:
        raise ValueError("a request without FLAG_WRITE carries no payload")
    return views


def prepared(
    req: Request, into: memoryview | bytearray | None, deadline: float
) -> tuple[Pending, list[memoryview]]:
    """The pending of ``req`` (room it needs, where its reply goes) and its payload views."""
    if into is None and not req.flags & FLAG_WRITE and not req.payload:  # a plain read
        return Pending(req.data_length, req.data_length, None, deadline), []
    views = payload_views(req)
    expected = 0 if req.flags & FLAG_WRITE else req.data_length
    limit = req.data_length
    if into is not None:
        into = bytes_view(into)
        if into.readonly:
            raise ValueError("the reply buffer is read-only")
        limit = min(limit, into.nbytes)
    return Pending(limit, sum(v.nbytes for v in views) + expected, into, deadline), views


def bytes_view(buf: Buffer) -> memoryview:
    view = memoryview(buf)
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")


def advance(bufs: list[memoryview], n: int) -> None:
    """Drop the first ``n`` bytes of ``bufs``, in place."""
    while n:
        if n < bufs[0].nbytes:
            bufs[0] = bufs[0][n:]
            return
        n -= bufs.pop(0).nbytes
