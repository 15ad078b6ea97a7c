"""The backend as the core calls it: bounded, timed and counted.

Every call the core makes goes through :class:`BoundedBackend`: at most
``hints.parallel_calls`` run at once (more only queue in the backend, or start more dog
processes than the machine has cores), each has a deadline when the core sets one (on top
of the backend's own), and each is counted with its latency for the unmount summary and
status. A read stream holds a slot of its own limiter for its whole life: it waits for its
reader, and a reader may need a call slot (a write-back to make room) to go on.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TypeVar

import trio

from ..backends.base import AttrValue, Backend, Buffer, FsStats, Layout, VdiInfo
from ..errors import BackendError, Timeout
from .quiesce import RecoveryGate

T = TypeVar("T")


@dataclass
class CallStats:
    """Backend calls since the mount began."""

    calls: int = 0
    errors: int = 0
    #: Seconds each of the last 4,096 calls took.
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=4096))

    def note(self, seconds: float) -> None:
        self.latencies.append(seconds)

    def percentile(self, p: float) -> float:
        if not self.latencies:
            return 0.0
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, math.ceil(p / 100 * len(ordered)) - 1)]


class BoundedBackend(Backend):
    """Wraps a backend: same interface, bounded calls in flight (see the module docstring)."""

    #: How long a delete waits for a recovery to end when the core sets no deadline.
    RECOVERY_LIMIT = 60.0

    def __init__(self, backend: Backend, timeout: float | None = None) -> None:
        self.inner = backend
        self.hints = backend.hints
        self.timeout = timeout
        self.stats = CallStats()
        self._calls = trio.CapacityLimiter(max(1, backend.hints.parallel_calls))
        self._streams = trio.CapacityLimiter(max(1, backend.hints.parallel_calls))
        self._recovery = RecoveryGate(self.recovering, timeout or self.RECOVERY_LIMIT)

    @property
    def in_flight(self) -> int:
        return self._calls.borrowed_tokens

    async def _call(self, op: str, name: bytes | None, call: Callable[[], Awaitable[T]]) -> T:
        try:  # a free slot is taken without a yield: waiting costs a scheduler pass
            self._calls.acquire_nowait()
        except trio.WouldBlock:
            await self._calls.acquire()
        try:
            return await self._counted(op, name, call)
        finally:
            self._calls.release()

    async def _counted(self, op: str, name: bytes | None, call: Callable[[], Awaitable[T]]) -> T:
        self.stats.calls += 1
        start = trio.current_time()
        try:
            if not self.timeout:
                return await call()
            with trio.fail_after(self.timeout):
                return await call()
        except trio.TooSlowError:
            self.stats.errors += 1
            raise Timeout(op, name, f"no answer within {self.timeout:g} s") from None
        except BackendError:
            self.stats.errors += 1
            raise
        finally:
            self.stats.note(trio.current_time() - start)

    # -- lifecycle ---------------------------------------------------------------------------

    async def open(self) -> None:
        await self._call("start", None, self.inner.open)

    async def aclose(self) -> None:
        await self.inner.aclose()

    # -- metadata ----------------------------------------------------------------------------

    async def list(self) -> dict[bytes, VdiInfo]:
        return await self._call("list", None, self.inner.list)

    async def lookup(self, name: bytes) -> VdiInfo | None:
        return await self._call("lookup", name, lambda: self.inner.lookup(name))

    async def create(self, name: bytes, size: int, layout: Layout | None = None) -> None:
        await self._call("create", name, lambda: self.inner.create(name, size, layout))

    async def recovering(self) -> bool:
        return await self._call("recovery", None, self.inner.recovering)

    async def delete(self, name: bytes) -> None:
        # Deletes wait for a recovery under way (see :mod:`.quiesce`), holding no slot.
        await self._recovery.wait("delete", name)
        await self._call("delete", name, lambda: self.inner.delete(name))

    async def resize(self, name: bytes, size: int) -> None:
        await self._call("resize", name, lambda: self.inner.resize(name, size))

    async def statfs(self) -> FsStats:
        return await self._call("statfs", None, self.inner.statfs)

    async def snapshot(self, name: bytes, tag: str) -> None:
        await self._call("snapshot", name, lambda: self.inner.snapshot(name, tag))

    async def clone(self, name: bytes, tag: str, new_name: bytes) -> None:
        await self._call("clone", new_name, lambda: self.inner.clone(name, tag, new_name))

    async def delete_snapshot(self, name: bytes, tag: str) -> None:
        await self._recovery.wait("delete snapshot", name)
        await self._call("delete snapshot", name, lambda: self.inner.delete_snapshot(name, tag))

    async def snapshots(self, name: bytes) -> list[VdiInfo]:
        return await self._call("snapshots", name, lambda: self.inner.snapshots(name))

    async def read_snapshot(
        self, name: bytes, snapshot_id: int, offset: int, length: int
    ) -> bytes | bytearray:
        read = self.inner.read_snapshot
        return await self._call("read", name, lambda: read(name, snapshot_id, offset, length))

    # -- attributes --------------------------------------------------------------------------

    async def get_attrs(self, key: bytes, names: Sequence[bytes]) -> dict[bytes, AttrValue]:
        one = names[0] if len(names) == 1 else None
        return await self._call("get attributes", one, lambda: self.inner.get_attrs(key, names))

    async def set_attr(self, name: bytes, key: bytes, value: bytes) -> None:
        await self._call("set attribute", name, lambda: self.inner.set_attr(name, key, value))

    async def drop_attr(self, name: bytes, key: bytes) -> None:
        await self._call("drop attribute", name, lambda: self.inner.drop_attr(name, key))

    # -- data --------------------------------------------------------------------------------

    async def read(self, name: bytes, offset: int, length: int) -> bytes | bytearray:
        return await self._call("read", name, lambda: self.inner.read(name, offset, length))

    async def read_into(self, name: bytes, offset: int, buf: memoryview) -> int:
        return await self._call("read", name, lambda: self.inner.read_into(name, offset, buf))

    @asynccontextmanager
    async def read_stream(
        self, name: bytes, offset: int, length: int, piece_size: int = 1 << 22
    ) -> AsyncIterator[AsyncIterator[bytes | bytearray]]:
        async with self._streams:
            self.stats.calls += 1
            async with self.inner.read_stream(name, offset, length, piece_size) as pieces:
                yield pieces

    async def write_parts(self, name: bytes, offset: int, parts: Sequence[Buffer]) -> None:
        await self._call("write", name, lambda: self.inner.write_parts(name, offset, parts))

    async def write(self, name: bytes, offset: int, data: Buffer) -> None:
        await self._call("write", name, lambda: self.inner.write(name, offset, data))

    async def write_extents(self, name: bytes, fd: int, extents: Sequence[tuple[int, int]]) -> int:
        return await self._call("write", name, lambda: self.inner.write_extents(name, fd, extents))
