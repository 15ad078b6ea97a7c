"""Write-back of the chunk cache: which cached bytes go out in which ``dog vdi write``.

Every call costs 15-50 ms whatever it carries. So contiguous dirty bytes across chunks go
out in one call (up to half the budget, so the writer can refill the cache while a call is
on its way), and a chunk scattered with small dirty runs (a random writer's) goes out whole,
its clean parts read from the backend first: one call per stretch of such chunks instead of
one per run, and write-back proportional to the chunks dirtied rather than to the number of
writes. All of a file's write-back runs under its lock, so at most one write is in flight
per chunk; a write racing with it marks its range dirty again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import trio

from ..backends.base import EC_STRIPE_SIZE
from .ranges import Run, add_range, plan_runs, remove_range, stretches

if TYPE_CHECKING:
    from ..backends.base import Backend
    from .chunk import CachedFile, Chunk
    from .readahead import Stream


def _short_stripe_runs(chunk: Chunk) -> list[tuple[int, int]]:
    """Dirty runs of an erasure-coded chunk that start on a stripe and end inside it
    (docs/SHEEPDOG.md F16).

    Sheepdog's gateway merges a stripe's old bytes into a write only when the write starts
    inside the stripe: one that starts on a stripe and is shorter zeroes the rest of it
    (seen on a real 1.0 cluster). Such runs are sent to the stripe's end, its clean bytes
    read from the backend first. A run that ends the file needs nothing: nothing follows.
    """
    if not chunk.file.erasure_coded:
        return []
    natural = chunk.natural
    return [
        (a, b)
        for a, b in chunk.dirty
        if a % EC_STRIPE_SIZE == 0 and b - a < EC_STRIPE_SIZE and b < natural
    ]


class WriteBack:
    """The write-back half of :class:`~sheepfs.cache.cache.ChunkCache`, which mixes it in."""

    #: A chunk with more dirty runs than this is written back whole, its clean parts read
    #: from the backend first. Each run is a call of its own (15-50 ms), while a whole
    #: 4 MiB chunk adds only its data (some 12 ms written, 4 ms read) to the call it shares
    #: with its dirty neighbours: random 4 KiB writes would otherwise cost a call each.
    WHOLE_AFTER_RUNS = 2

    backend: Backend
    budget: int
    bytes_written: int
    grown: Callable[[CachedFile], None]  # told when a file's VDI was grown
    _by_file: dict[int, dict[int, Chunk]]
    _streams: dict[int, Stream]
    _unpinned: trio.Event
    _clock: int  # write-backs ended so far: see _fresh

    def _settle(self, chunk: Chunk, fetched: bytes | bytearray, began: int) -> bool:
        """End a fetch: fill ``chunk`` in unless stale (the cache's own)."""
        raise NotImplementedError

    async def _loaded(self, f: CachedFile, index: int) -> Chunk:
        """The chunk with its backend content (the cache's own)."""
        raise NotImplementedError

    @staticmethod
    def _full(chunk: Chunk) -> bool:
        """Whether the whole chunk is dirty (a sequential writer is done with it)."""
        natural = chunk.natural
        return chunk.dirty == [(0, natural)] and natural > 0

    def _fresh(self, chunk: Chunk, began: int) -> bool:
        """Whether a read of ``chunk`` begun at clock ``began`` can be its backend content:
        not if a write-back of it was under way or ended since, as the read may have got
        bytes older than those written (filled in, they would be written back later as the
        chunk's "clean" parts)."""
        return not chunk.pinned and chunk.sent <= began

    @staticmethod
    def _loading_done(chunk: Chunk) -> None:
        if chunk.loading is not None:
            chunk.loading.set()
            chunk.loading = None

    async def flush(self, f: CachedFile, only_full: bool = False) -> bool:
        """Write every dirty byte of ``f`` back: contiguous dirty bytes in one ``write``,
        a chunk with many dirty runs as a whole (see ``WHOLE_AFTER_RUNS``).

        ``only_full`` (write-behind): just the first run of chunks that are dirty from end
        to end. Returns whether there was anything to write.
        """
        async with f.lock:
            return await self.flush_locked(f, only_full)

    async def flush_locked(self, f: CachedFile, only_full: bool = False) -> bool:
        """:meth:`flush`, for a caller that holds ``f.lock``."""
        if not only_full:
            await self._load_scattered(f)
        chunks = sorted(
            (
                c
                for c in self._by_file.get(f.id, {}).values()
                if c.dirty and (not only_full or self._full(c))
            ),
            key=lambda c: c.index,
        )
        if not chunks:
            return False
        await self.grow(f)
        max_run = max(f.object_size, min(self.backend.hints.max_request, self.budget // 2))
        runs = plan_runs(((c, c.start, self._to_write(c)) for c in chunks), max_run)
        if only_full:
            # One call per write-behind round: the next round then takes the first run
            # together with what the writer completed meanwhile, not a short leftover.
            runs = runs[:1]
        await self._send(f, runs)
        return True

    async def grow(self, f: CachedFile) -> None:
        """Grow the VDI to the file's size (docs/SHEEPDOG.md F10), under ``f.lock``.

        Writes go on while a resize is on its way and may grow the file further, so this
        returns only once the VDI covers all of it: dog cuts a write at the VDI's end
        without a word, and what the caller plans next (with no await in between) must lie
        inside the VDI.
        """
        while f.size > f.backend_size:
            size = f.size
            await self.backend.resize(f.name, size)
            f.backend_size = size
            self.grown(f)

    def _to_write(self, chunk: Chunk) -> list[tuple[int, int]]:
        """The ranges of a dirty chunk to write: its dirty runs, or all of it (as far as the
        file goes) if it has many and all its bytes are known (it is loaded); on erasure-
        coded VDIs short runs at a stripe's start reach to the stripe's end."""
        if not chunk.loaded:
            return chunk.dirty
        # Past ``data`` (the file grew since) the VDI reads zero, and nobody wrote there.
        end = min(chunk.natural, len(chunk.data))
        if len(chunk.dirty) > self.WHOLE_AFTER_RUNS:
            return [(0, end)]
        ranges = chunk.dirty
        for a, _ in _short_stripe_runs(chunk):
            ranges = add_range(ranges, a, min(a + EC_STRIPE_SIZE, end))
        return ranges

    def _needs_content(self, chunk: Chunk) -> bool:
        """Whether the backend's bytes under ``chunk`` must be known before it is written
        back: it goes out whole, or a run of it is widened to a stripe's end."""
        return len(chunk.dirty) > self.WHOLE_AFTER_RUNS or bool(_short_stripe_runs(chunk))

    async def _load_scattered(self, f: CachedFile) -> None:
        """Fetch the backend content under the chunks of ``f`` that need it (see
        ``_needs_content``); consecutive ones with one read. Under ``f.lock``."""
        chunks = self._by_file.get(f.id, {})
        scattered = sorted(
            i
            for i, c in chunks.items()
            if not c.loaded and c.loading is None and self._needs_content(c)
        )
        for first, count in stretches(scattered):
            await self._load_stretch(f, first, count)
        # A read that raced with another may have been dropped as stale (see _fresh): a
        # short stripe run must not go out without its stripe, so those are fetched again.
        for index, c in list(chunks.items()):
            if not c.loaded and _short_stripe_runs(c):
                await self._loaded(f, index)

    async def _load_stretch(self, f: CachedFile, first: int, count: int) -> None:
        """Read chunks ``first`` .. ``first + count - 1`` with one stream, handed over one
        chunk at a time (a few in memory at most), each merged in under its dirty bytes.

        Writes during the read land in the chunks as ever; the merge keeps them on top.
        """
        size = f.object_size
        found = {i: self._by_file.get(f.id, {}).get(i) for i in range(first, first + count)}
        mine = {i: c for i, c in found.items() if c and not c.loaded and c.loading is None}
        for c in mine.values():
            c.loading = trio.Event()
        began = self._clock
        start = first * size
        length = max(0, min(count * size, f.backend_size - start))
        try:
            if length:
                async with self.backend.read_stream(f.name, start, length, size) as pieces:
                    index = first
                    async for piece in pieces:  # one chunk each, the last one maybe short
                        c = mine.pop(index, None)
                        if c is not None:
                            self._settle(c, piece, began)
                        index += 1
            for c in list(mine.values()):
                if c.start >= f.backend_size:  # past the VDI's end: zeros until it grows
                    self._settle(c, b"", began)
        finally:
            for c in mine.values():
                self._loading_done(c)

    async def _send(self, f: CachedFile, runs: list[Run[Chunk]]) -> None:
        """Write ``runs``, one call each (under ``f.lock``); a failed one is dirty again."""
        for _, parts in runs:
            for c, a, b in parts:
                # Only what goes out: a chunk may have runs in calls not made now (one call
                # per write-behind round), and those must stay dirty.
                c.dirty = remove_range(c.dirty, a, b)
                c.pinned += 1
        for i, (start, parts) in enumerate(runs):
            # Views, not copies: a write racing with this one marks its range dirty
            # again, so whatever goes out here is rewritten by the next flush.
            views = [memoryview(c.data)[a:b] for c, a, b in parts]
            try:
                await self.backend.write_parts(f.name, start, views)
            except BaseException:
                for _, failed in runs[i:]:
                    for c, a, b in failed:
                        c.dirty = add_range(c.dirty, a, b)
                self._unpin(runs[i:])
                raise
            self.bytes_written += sum(len(v) for v in views)
            del views
            self._unpin(runs[i : i + 1])

    def _unpin(self, runs: list[Run[Chunk]]) -> None:
        self._clock += 1
        for _, parts in runs:
            for c, _, _ in parts:
                c.pinned -= 1
                c.sent = self._clock
                stream = self._streams.get(c.file.id)
                if stream is not None:
                    stream.written.add(c.index)
        self._unpinned.set()
        self._unpinned = trio.Event()
