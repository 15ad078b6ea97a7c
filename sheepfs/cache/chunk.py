"""A chunk of the cache: one object-sized piece of a live file, and what the cache needs
to know of that file.

Chunks are aligned to the VDI's object size because that is Sheepdog's unit of allocation
and of its first-write race (docs/SHEEPDOG.md F2).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import trio

from .. import buffers
from .ranges import add_range


class CachedFile(Protocol):
    """What the cache needs to know about a live file."""

    id: int
    name: bytes
    size: int  # the file's size as the user sees it
    backend_size: int  # the VDI's size in the backend
    object_size: int
    erasure_coded: bool  # see writeback._short_stripe_runs
    #: Serializes the file's transfers: all of its write-back runs under it.
    lock: trio.Lock


@dataclass(eq=False)
class Chunk:
    """One object-sized piece of a file.

    ``data`` is immutable ``bytes`` while the chunk is only read (as the backend delivered
    it, no copy) and becomes a ``bytearray`` on the first write. It is never resized in
    place, because a write-back or a read reply may still hold a view of it.
    """

    file: CachedFile
    index: int
    data: bytes | bytearray = b""
    loaded: bool = False
    dirty: list[tuple[int, int]] = field(default_factory=list)
    loading: trio.Event | None = None
    pinned: int = 0  # write-backs sending views of ``data`` right now: not evictable
    sent: int = 0  # the cache's clock when a write-back of it last ended (see _fresh)

    @property
    def start(self) -> int:
        return self.index * self.file.object_size

    @property
    def natural(self) -> int:
        """How long the chunk is: an object, or less at the end of the file."""
        return min(self.file.object_size, max(0, self.file.size - self.start))

    def put(self, offset: int, data: bytes | memoryview) -> None:
        end = offset + len(data)
        if len(self.data) < end or not isinstance(self.data, bytearray):
            # One new buffer, as long as the chunk will be, instead of growing it per write.
            natural = self.natural
            # Not zeroed: bytes outside ``dirty`` are never read before _fill merges the
            # backend's content under the dirty ones.
            grown = buffers.take(max(end, natural, len(self.data)))
            grown[: len(self.data)] = self.data
            if self.loaded:  # past its loaded content the VDI reads zero (it grows to here)
                grown[len(self.data) :] = bytes(len(grown) - len(self.data))
            self.data = grown
        self.data[offset:end] = data
        self.dirty = add_range(self.dirty, offset, end)

    def get(self, offset: int, size: int) -> bytes | memoryview:
        piece = memoryview(self.data)[offset : offset + size]
        if len(piece) < size:
            return bytes(piece) + bytes(size - len(piece))
        return piece


def fill(chunk: Chunk, fetched: bytes | bytearray) -> None:
    """Make ``fetched`` (backend content) the chunk's data, keeping its dirty bytes on top."""
    if chunk.dirty:
        merged = bytearray(fetched)
        if len(merged) < len(chunk.data):
            merged.extend(bytes(len(chunk.data) - len(merged)))
        for a, b in chunk.dirty:
            merged[a:b] = chunk.data[a:b]
        chunk.data = merged
    else:
        chunk.data = fetched
    chunk.loaded = True
