"""Uploading a spool file: its extents in windows of many objects, each window's objects
written at once while the next window is read from disk."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Sequence

import trio

from .data import run_all

#: Bytes of a spool file read and sent at once.
UPLOAD_WINDOW = 64 << 20

Writer = Callable[[int, bytes], Awaitable[None]]


async def write_extents(write: Writer, fd: int, extents: Sequence[tuple[int, int]]) -> int:
    """``write(offset, data)`` every window of ``extents`` of ``fd``; the bytes written."""
    windows = [
        (pos, min(UPLOAD_WINDOW, offset + length - pos))
        for offset, length in extents
        for pos in range(offset, offset + length, UPLOAD_WINDOW)
    ]

    def read(pos: int, n: int) -> bytes:
        data = os.pread(fd, n, pos)
        return data + bytes(n - len(data))  # past the spool file's end it reads zero

    data = await trio.to_thread.run_sync(read, *windows[0]) if windows else b""
    for k, (pos, _) in enumerate(windows):
        following: list[bytes] = []
        calls = [lambda p=pos, d=data: write(p, d)]
        if k + 1 < len(windows):
            calls.append(lambda w=windows[k + 1], box=following: _read_to(box, read, w))
        await run_all(calls)
        data = following[0] if following else b""
    return sum(n for _, n in windows)


async def _read_to(box: list[bytes], read: Callable[[int, int], bytes], window: tuple[int, int]):
    box.append(await trio.to_thread.run_sync(read, *window))
