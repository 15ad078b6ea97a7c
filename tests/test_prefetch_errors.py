"""Read-ahead (backends/sheep/stream.py) hands a failed piece to its reader as the error it
is: a caller that catches ``BackendError`` must not meet an exception group instead (the
soak's periodic write-back died of one: sheep seed 638511713)."""

from __future__ import annotations

import pytest
import trio

from sheepfs.backends.sheep.stream import prefetch
from sheepfs.errors import BackendError, Timeout

PIECE = 4


async def _reader(name: bytes, pos: int, n: int) -> bytes:
    if pos >= 8:
        raise Timeout("READ_OBJ", name, "not sent within 8 s")
    await trio.sleep(0)
    return bytes([pos]) * n


async def _read_all(length: int) -> list[bytes]:
    got: list[bytes] = []
    async with prefetch(_reader, b"vdi", 0, length, PIECE) as pieces:
        async for piece in pieces:
            got.append(bytes(piece))
    return got


async def test_pieces_before_the_failure_come_in_order() -> None:
    assert await _read_all(8) == [b"\0" * 4, b"\4" * 4]


async def test_a_failed_piece_is_raised_as_itself() -> None:
    with pytest.raises(BackendError) as caught:
        await _read_all(16)
    assert isinstance(caught.value, Timeout)


async def test_a_reader_that_stops_early_cancels_the_rest() -> None:
    async with prefetch(_reader, b"vdi", 0, 4 * PIECE * 100, PIECE) as pieces:
        async for piece in pieces:
            assert bytes(piece) == b"\0" * 4
            break  # the fetches still under way end with the context, unreported
