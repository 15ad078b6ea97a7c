"""Read-ahead for a sequential reader: several pieces in flight, handed over in order.

Each piece is read by a task of its own; at most ``AHEAD`` pieces are read or waiting at a
time, so a reader that stops reading stops the requests too. A failed piece is raised to
the reader when it gets to that piece, as the error it is (no exception group); a short
piece is the VDI's end, and ends the stream (those after it asked past the end).
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import trio

from ..nurseries import helpers

#: Pieces read ahead of the reader.
AHEAD = 8

Reader = Callable[[bytes, int, int], Awaitable[bytes | bytearray]]


@dataclass
class _Slot:
    wanted: int
    done: trio.Event = field(default_factory=trio.Event)
    data: bytes | bytearray = b""
    error: BaseException | None = None


@asynccontextmanager
async def prefetch(
    read: Reader, name: bytes, offset: int, length: int, piece_size: int
) -> AsyncIterator[AsyncIterator[bytes | bytearray]]:
    ranges = deque(
        (pos, min(piece_size, offset + length - pos))
        for pos in range(offset, offset + length, piece_size)
    )

    async def fetch(slot: _Slot, pos: int, n: int) -> None:
        try:
            slot.data = await read(name, pos, n)
        except Exception as e:  # handed to the reader, in order
            slot.error = e
        finally:
            slot.done.set()

    async with helpers() as nursery:
        slots: deque[_Slot] = deque()

        def refill() -> None:
            while ranges and len(slots) < AHEAD:
                pos, n = ranges.popleft()
                slot = _Slot(n)
                slots.append(slot)
                nursery.start_soon(fetch, slot, pos, n)

        async def pieces() -> AsyncIterator[bytes | bytearray]:
            refill()
            while slots:
                slot = slots[0]
                await slot.done.wait()
                slots.popleft()
                if slot.error is not None:
                    raise slot.error
                refill()
                if not slot.data:
                    return
                yield slot.data
                if len(slot.data) < slot.wanted:
                    return  # the VDI ends here: pieces past its end are not reads (rule 26)

        yield pieces()
