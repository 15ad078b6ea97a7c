"""The chunk cache: object-aligned chunks of live VDIs, one LRU budget for all files.

Chunks are aligned to the VDI's object size because that is Sheepdog's unit of allocation
and of its first-write race (docs/SHEEPDOG.md F2). Writes land in the cache and are written back
on flush, fsync, release and eviction, with contiguous dirty ranges across chunks merged
into one long ``write`` each, and a chunk scattered with small dirty runs written whole (its
clean parts read back first) rather than one call per run. All write-back of a file runs
under that file's lock, so at most one write is ever in flight per chunk.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Protocol

import trio

from . import buffers
from .backends.base import Backend
from .writeback import WriteBack, add_range

log = logging.getLogger(__name__)


class CachedFile(Protocol):
    """What the cache needs to know about a live file."""

    id: int
    name: bytes
    size: int  # the file's size as the user sees it
    backend_size: int  # the VDI's size in the backend
    object_size: int
    erasure_coded: bool  # see writeback._short_stripe_runs
    lock: trio.Lock

    async def before_writeback(self) -> None:
        """Make the VDI large enough for everything dirty (resize it)."""


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


def _fill(chunk: Chunk, fetched: bytes | bytearray) -> None:
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


class ChunkCache(WriteBack):
    """Chunks of live files under one byte budget; see the module docstring."""

    #: Objects' worth of reading in a row before a file gets a stream. Kernel read-ahead
    #: makes even a random 4 KiB read look sequential for a few requests: one object is
    #: more than read-ahead alone produces.
    STREAM_AFTER = 1
    #: How far a stream may run ahead of its reader, at most.
    MAX_AHEAD = 64 << 20

    def __init__(self, backend: Backend, budget: int) -> None:
        self.backend = backend
        self.budget = budget
        self._lru: OrderedDict[tuple[int, int], Chunk] = OrderedDict()
        self._by_file: dict[int, dict[int, Chunk]] = {}
        self._streams: dict[int, Stream] = {}
        self._seq: dict[int, tuple[int, int]] = {}  # file id -> (next offset, bytes in a row)
        self._behind: set[int] = set()  # ids of files with a write-behind under way
        self.used = 0
        self.bytes_written = 0
        #: Where streams run; set by the daemon. Without it there is no streaming.
        self.nursery: trio.Nursery | None = None
        self._unpinned = trio.Event()
        self._clock = 0  # write-backs ended so far

    # -- bookkeeping -------------------------------------------------------------------------

    def _lookup(self, f: CachedFile, index: int) -> Chunk | None:
        chunk = self._lru.get((f.id, index))
        if chunk is not None:
            self._lru.move_to_end((f.id, index))
        return chunk

    def _new(self, f: CachedFile, index: int) -> Chunk:
        chunk = Chunk(f, index)
        self._lru[(f.id, index)] = chunk
        self._by_file.setdefault(f.id, {})[index] = chunk
        self.used += f.object_size
        return chunk

    def _forget(self, chunk: Chunk) -> None:
        key = (chunk.file.id, chunk.index)
        if self._lru.get(key) is chunk:
            del self._lru[key]
            per_file = self._by_file[chunk.file.id]
            del per_file[chunk.index]
            if not per_file:
                del self._by_file[chunk.file.id]
            self.used -= chunk.file.object_size

    def _recycle(self, chunk: Chunk) -> None:
        """Forget a clean, idle chunk and keep its buffer for the next chunk.

        Only here: a clean chunk that is neither loading nor being written back is held by
        no coroutine across an await, and views of it (a reply being sent) keep its buffer
        from being reused (see :func:`buffers.give`).
        """
        self._forget(chunk)
        buf, chunk.data = chunk.data, b""
        buffers.give(buf)

    async def _make_room(self, need: int) -> None:
        """Evict least recently used chunks until ``need`` more bytes fit the budget."""
        while self.used + need > self.budget:
            idle = [c for c in self._lru.values() if c.loading is None and not c.pinned]
            victim = next((c for c in idle if not c.dirty), None)
            if victim is not None:
                self._recycle(victim)
                continue
            if any(c.pinned for c in self._lru.values()):
                # A write-back is sending chunks: they are clean once it is done. Waiting
                # for that, rather than flushing the rest too, lets the writer refill them
                # while the next write-back goes out.
                await self._unpinned.wait()
            elif idle:
                await self.flush(idle[0].file)  # raises if the data cannot be written
            else:
                return  # everything is being loaded: overshoot briefly

    async def _loaded(self, f: CachedFile, index: int) -> Chunk:
        """The chunk with its backend content (under any dirty bytes), fetched at most once."""
        while True:
            chunk = self._lookup(f, index)
            if chunk is not None and chunk.loaded:
                return chunk
            stream = self._streams.get(f.id)
            if stream is not None and stream.covers(index * f.object_size):
                await stream.progress.wait()
                continue
            if chunk is None:
                await self._make_room(f.object_size)
                chunk = self._lookup(f, index) or self._new(f, index)
            if chunk.loaded:
                return chunk
            if chunk.loading is not None:
                await chunk.loading.wait()
                continue
            if chunk.pinned:  # its bytes are on their way: read the backend after them
                await self._unpinned.wait()
                continue
            chunk.loading = trio.Event()
            began = self._clock
            try:
                length = max(0, min(f.object_size, f.backend_size - chunk.start))
                fetched = await self.backend.read(f.name, chunk.start, length) if length else b""
            except BaseException:
                self._loading_done(chunk)
                raise
            if self._settle(chunk, fetched, began):
                return chunk

    def _settle(self, chunk: Chunk, fetched: bytes | bytearray, began: int) -> bool:
        """End a fetch of ``chunk`` begun at clock ``began``: fill it in, unless what was
        read may be stale (see ``_fresh``); then it stays unloaded, to be fetched again."""
        self._loading_done(chunk)
        if not self._fresh(chunk, began):
            return False
        _fill(chunk, fetched)
        return True

    # -- streaming for sequential readers ----------------------------------------------------

    def _note_read(self, f: CachedFile, offset: int, end: int) -> None:
        """Track sequential reading; start a stream for it, stop one a seek left behind."""
        expected, in_a_row = self._seq.get(f.id, (-1, 0))
        in_a_row = in_a_row + (end - offset) if offset == expected else 0
        self._seq[f.id] = (end, in_a_row)
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
        streaming = in_a_row >= self.STREAM_AFTER * f.object_size
        if stream is None and streaming and self.nursery is not None:
            index = offset // f.object_size
            chunks = self._by_file.get(f.id, {})
            while index in chunks and chunks[index].loaded:
                index += 1
            start = index * f.object_size
            if start < f.backend_size:
                stream = Stream(f, start, f.backend_size, reader=end)
                self._streams[f.id] = stream
                self.nursery.start_soon(self._run_stream, stream)

    def sequential(self, f: CachedFile) -> bool:
        """Whether ``f`` is being read front to back (it has a stream, or is about to)."""
        in_a_row = self._seq.get(f.id, (-1, 0))[1]
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
            _fill(chunk, data)

    def _stop_stream(self, f: CachedFile) -> None:
        stream = self._streams.pop(f.id, None)
        if stream is not None:
            stream.stop()
        self._seq.pop(f.id, None)

    # -- the data path -----------------------------------------------------------------------

    async def read(self, f: CachedFile, offset: int, size: int) -> bytes | memoryview:
        """Bytes at ``offset``; a read inside one chunk is a view of it, not a copy."""
        end = min(offset + size, f.size)
        self._note_read(f, offset, end)
        pieces = []
        pos = offset
        while pos < end:
            index, within = divmod(pos, f.object_size)
            n = min(end - pos, f.object_size - within)
            chunk = await self._loaded(f, index)
            pieces.append(chunk.get(within, n))
            pos += n
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    async def write(self, f: CachedFile, offset: int, data: bytes) -> None:
        """Put ``data`` in the cache; the caller has already grown ``f.size`` to cover it."""
        view = memoryview(data)
        pos = 0
        while pos < len(view):
            index, within = divmod(offset + pos, f.object_size)
            n = min(len(view) - pos, f.object_size - within)
            chunk = self._lookup(f, index)
            if chunk is None:
                await self._make_room(f.object_size)
                chunk = self._lookup(f, index) or self._new(f, index)
            chunk.put(within, view[pos : pos + n])  # no await between lookup and put
            pos += n
            if self._full(chunk) and self.nursery is not None and f.id not in self._behind:
                # Start writing complete chunks back while the writer goes on filling the
                # next ones: Sheepdog's time then overlaps the copy into the mount.
                self._behind.add(f.id)
                self.nursery.start_soon(self._write_behind, f)

    async def _write_behind(self, f: CachedFile) -> None:
        """Write complete chunks back until none is left: one dog call follows the other
        with whatever the writer completed meanwhile, so Sheepdog is never left idle."""
        try:
            while await self.flush(f, only_full=True):
                pass
        except Exception as e:  # the data stays dirty; the next flush reports the error
            log.warning("write-behind of %r failed (will retry): %s", f.name, e)
        finally:
            self._behind.discard(f.id)

    def is_dirty(self, f: CachedFile) -> bool:
        return any(c.dirty for c in self._by_file.get(f.id, {}).values())

    def discard(self, f: CachedFile) -> None:
        """Drop ``f``'s clean chunks (the VDI may change under us once nobody has it open)."""
        self._stop_stream(f)
        for chunk in list(self._by_file.get(f.id, {}).values()):
            if not chunk.dirty and chunk.loading is None and not chunk.pinned:
                self._recycle(chunk)

    def truncate(self, f: CachedFile, size: int) -> None:
        """Forget cached bytes at and past ``size`` (the file shrank)."""
        self._stop_stream(f)
        for chunk in list(self._by_file.get(f.id, {}).values()):
            cut = size - chunk.start
            if cut <= 0:
                chunk.dirty = []
                self._forget(chunk)
            elif cut < len(chunk.data):
                chunk.data = chunk.data[:cut]
                chunk.dirty = [(a, min(b, cut)) for a, b in chunk.dirty if a < cut]
