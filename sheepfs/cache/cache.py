"""The chunk cache: object-aligned chunks of live VDIs, one LRU budget for all files.

Writes land in the cache and are written back on flush, fsync, release and eviction, with
contiguous dirty ranges across chunks merged into one long ``write`` each, and a chunk
scattered with small dirty runs written whole (its clean parts read back first) rather
than one call per run (:mod:`.writeback`). Sequential readers get a stream ahead of them
(:mod:`.readahead`). All write-back of a file runs under that file's lock, so at most one
write is ever in flight per chunk.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable

import trio

from .. import buffers
from ..backends.base import Backend
from ..supervisor import Supervisor
from .chunk import CachedFile, Chunk, fill
from .readahead import ReadAhead, Stream
from .writeback import WriteBack

log = logging.getLogger(__name__)


class ChunkCache(ReadAhead, WriteBack):
    """Chunks of live files under one byte budget; see the module docstring."""

    def __init__(
        self,
        backend: Backend,
        budget: int,
        tasks: Supervisor,
        grown: Callable[[CachedFile], None] = lambda f: None,
    ) -> None:
        self.backend = backend
        self.budget = budget
        #: Where streams and write-behind run (none once it stops accepting).
        self.tasks = tasks
        self.grown = grown
        self._lru: OrderedDict[tuple[int, int], Chunk] = OrderedDict()
        self._by_file: dict[int, dict[int, Chunk]] = {}
        self._streams: dict[int, Stream] = {}
        #: file id -> (next offset, bytes read in a row, chunks below this index dropped)
        self._seq: dict[int, tuple[int, int, int]] = {}
        self._behind: set[int] = set()  # ids of files with a write-behind under way
        self.used = 0
        self.bytes_written = 0
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
        fill(chunk, fetched)
        return True

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
            if self._read_apart(f, index):
                pieces.append(await self._read_direct(f, pos, n))
            else:
                chunk = await self._loaded(f, index)
                pieces.append(chunk.get(within, n))
            pos += n
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def _read_apart(self, f: CachedFile, index: int) -> bool:
        """Whether a read of object ``index`` should fetch just what is asked: a backend for
        which a small read costs much less than a whole object (``hints.partial_reads``),
        a random reader (no stream, not reading on), and nothing of that object cached
        (so no dirty byte of it lives only here)."""
        return (
            self.backend.hints.partial_reads
            and f.id not in self._streams
            and not self.sequential(f)
            and (f.id, index) not in self._lru
        )

    async def _read_direct(self, f: CachedFile, pos: int, n: int) -> bytes | bytearray:
        """``n`` bytes at ``pos`` from the backend, not cached; zeros past the VDI's end."""
        m = max(0, min(n, f.backend_size - pos))
        data = await self.backend.read(f.name, pos, m) if m else b""
        return data if len(data) == n else bytes(data) + bytes(n - len(data))

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
            if self._full(chunk) and f.id not in self._behind:
                # Start writing complete chunks back while the writer goes on filling the
                # next ones: Sheepdog's time then overlaps the copy into the mount.
                if self.tasks.start(self._write_back_full, f):
                    self._behind.add(f.id)

    async def _write_back_full(self, f: CachedFile) -> None:
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

    def is_pending(self, f: CachedFile) -> bool:
        """Whether ``f`` has bytes not yet in the backend: dirty, or being written back."""
        return any(c.dirty or c.pinned for c in self._by_file.get(f.id, {}).values())

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
