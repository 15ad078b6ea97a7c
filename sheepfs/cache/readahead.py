"""Read-ahead for sequential readers: one long backend read feeds a file's chunks ahead
of its reader, up to ``MAX_AHEAD`` bytes (or half the budget) in front of it.

Streams run as tasks of the supervisor; a seek stops the stream, and a write-back of a
chunk while a stream runs makes what the stream read of it stale (``Stream.written``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import trio

from ..backends.base import Backend
from ..supervisor import Supervisor
from .chunk import CachedFile, Chunk, fill

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Stream:
    """One long backend read feeding a sequential reader's chunks ahead of it."""

    file: CachedFile
    start: int
    end: int
    filled: int = 0  # bytes from ``start`` already in the cache
    reader: int = 0  # where the reader has got to
    done: bool = False
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    progress: trio.Event = field(default_factory=trio.Event)
    reader_moved: trio.Event = field(default_factory=trio.Event)
    #: Chunks written back since it began: what it read of them may predate those bytes.
    written: set[int] = field(default_factory=set)

    def covers(self, offset: int) -> bool:
        """Whether the stream will still deliver ``offset``."""
        return not self.done and self.start + self.filled <= offset < self.end

    def advanced(self) -> None:
        self.progress.set()
        self.progress = trio.Event()

    def stop(self) -> None:
        self.done = True
        self.scope.cancel()
        self.advanced()


class ReadAhead:
    """The streaming half of :class:`~sheepfs.cache.cache.ChunkCache`."""

    #: Objects' worth of reading in a row before a file gets a stream. Kernel read-ahead
    #: makes even a random 4 KiB read look sequential for a few requests: one object is
    #: more than read-ahead alone produces.
    STREAM_AFTER = 1
    #: How far a stream may run ahead of its reader, at most.
    MAX_AHEAD = 64 << 20
    #: Objects kept behind a sequential reader (kernel read-ahead arrives out of order).
    BEHIND = 2

    backend: Backend
    budget: int
    tasks: Supervisor
    _by_file: dict[int, dict[int, Chunk]]
    _streams: dict[int, Stream]
    _seq: dict[int, tuple[int, int, int]]

    def _lookup(self, f: CachedFile, index: int) -> Chunk | None:
        raise NotImplementedError

    def _new(self, f: CachedFile, index: int) -> Chunk:
        raise NotImplementedError

    def _recycle(self, chunk: Chunk) -> None:
        raise NotImplementedError

    async def _make_room(self, need: int) -> None:
        raise NotImplementedError

    # -- streaming for sequential readers ----------------------------------------------------

    def _note_read(self, f: CachedFile, offset: int, end: int) -> None:
        """Track sequential reading; start a stream for it, stop one a seek left behind."""
        expected, in_a_row, dropped = self._seq.get(f.id, (-1, 0, 0))
        in_a_row = in_a_row + (end - offset) if offset == expected else 0
        streaming = in_a_row >= self.STREAM_AFTER * f.object_size
        if streaming:
            dropped = self._drop_behind(f, offset, dropped)
        self._seq[f.id] = (end, in_a_row, dropped)
        stream = self._streams.get(f.id)
        if stream is not None:
            ahead = self._ahead(f)
            # Reads a little behind the stream (kernel read-ahead arrives out of order) or
            # ahead of it are the same reader; anything further is a seek.
            if stream.done or not (
                stream.start - ahead <= offset <= stream.start + stream.filled + ahead
            ):
                stream.stop()
                del self._streams[f.id]
                stream = None
            else:
                stream.reader = max(stream.reader, end)
                stream.reader_moved.set()
                stream.reader_moved = trio.Event()
        if stream is None and streaming and self.tasks.accepting:
            index = offset // f.object_size
            chunks = self._by_file.get(f.id, {})
            while index in chunks and chunks[index].loaded:
                index += 1
            start = index * f.object_size
            if start < f.backend_size:
                stream = Stream(f, start, f.backend_size, reader=end)
                self._streams[f.id] = stream
                self.tasks.start(self._run_stream, stream)

    def _drop_behind(self, f: CachedFile, offset: int, dropped: int) -> int:
        """Recycle the clean chunks a sequential reader has left more than ``BEHIND``
        objects behind (those below ``dropped`` are gone already); the new mark.

        The reader will not read them again (the kernel's page cache has them if it does),
        and their buffers, reused at once, save the next chunks a page fault per 4 KiB,
        which costs more than the copy of the data itself."""
        below = offset // f.object_size - self.BEHIND
        if below < dropped:
            return max(below, 0)  # it went back: drop from there on
        chunks = self._by_file.get(f.id, {})
        span = range(dropped, below)
        for index in span if len(span) <= len(chunks) else [i for i in chunks if i in span]:
            chunk = chunks.get(index)
            if chunk is not None and not chunk.dirty and chunk.loading is None and not chunk.pinned:
                self._recycle(chunk)
        return below

    def sequential(self, f: CachedFile) -> bool:
        """Whether ``f`` is being read front to back (it has a stream, or is about to)."""
        in_a_row = self._seq.get(f.id, (-1, 0, 0))[1]
        return f.id in self._streams or in_a_row >= self.STREAM_AFTER * f.object_size

    def _ahead(self, f: CachedFile) -> int:
        return max(f.object_size, min(self.MAX_AHEAD, self.budget // 2))

    async def _run_stream(self, s: Stream) -> None:
        f = s.file
        size = f.object_size
        try:
            with s.scope:
                length = s.end - s.start
                async with self.backend.read_stream(f.name, s.start, length, size) as pieces:
                    pos = s.start
                    async for piece in pieces:  # one chunk each, the last one maybe short
                        await self._install(s, pos // size, piece)
                        pos += len(piece)
                        s.filled = pos - s.start
                        s.advanced()
                        if pos >= s.end:
                            return
                        while s.filled - (s.reader - s.start) > self._ahead(f):
                            await s.reader_moved.wait()
        except Exception as e:  # a failed read-ahead only costs speed: readers fetch chunks
            log.warning("read-ahead of %r stopped: %s", f.name, e)  # readers fetch chunks
        finally:
            s.done = True
            s.advanced()
            if self._streams.get(f.id) is s:
                del self._streams[f.id]

    async def _install(self, s: Stream, index: int, data: bytes | bytearray) -> None:
        f = s.file
        if index in s.written:
            return  # see _fresh: readers fetch it again
        chunk = self._lookup(f, index)
        if chunk is None:
            await self._make_room(f.object_size)
            chunk = self._lookup(f, index) or self._new(f, index)
        busy = chunk.loading is not None or chunk.pinned
        # ``written`` again: a write-back may have ended while _make_room waited.
        if not (chunk.loaded or busy or index in s.written):
            fill(chunk, data)

    def _stop_stream(self, f: CachedFile) -> None:
        stream = self._streams.pop(f.id, None)
        if stream is not None:
            stream.stop()
        self._seq.pop(f.id, None)
