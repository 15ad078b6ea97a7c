"""Reading through the chunk cache in-process: a sequential reader's chunks are recycled
behind it (their buffers serve the next chunks, no fresh memory per object), a random
reader's are kept."""

from __future__ import annotations

import random

from sheepfs.cache.readahead import ReadAhead
from tests.core_helpers import SMALL, KiB, MiB, mount, open_name, random_bytes
from tests.memory_backend import MemoryBackend


def cached_indexes(fs, fh: int) -> set[int]:
    cache = fs.files.cache
    return set(cache._by_file.get(fs._handles[fh].id, {}))


async def test_a_sequential_reader_leaves_no_chunks_behind(tmp_path) -> None:
    data = random_bytes(24 * MiB)
    backend = MemoryBackend()
    backend.put(b"seq", data, block_size_shift=SMALL)  # 1 MiB objects
    async with mount(backend, tmp_path, cache_size=64 * MiB) as fs:  # room for it all
        fh = await open_name(fs, b"seq")
        got, most = bytearray(), 0
        for offset in range(0, len(data), 128 * KiB):
            got += await fs.read(fh, offset, 128 * KiB)
            behind = offset // MiB - ReadAhead.BEHIND
            if behind > 4:  # streaming by then
                assert min(cached_indexes(fs, fh)) >= behind
            most = max(most, len(cached_indexes(fs, fh)))
        assert bytes(got) == data
        assert most < 24  # never the whole file, though it would fit
        await fs.release(fh)


async def test_a_random_reader_keeps_its_chunks(tmp_path) -> None:
    data = random_bytes(8 * MiB)
    backend = MemoryBackend()
    backend.put(b"rnd", data, block_size_shift=SMALL)
    async with mount(backend, tmp_path, cache_size=64 * MiB) as fs:
        fh = await open_name(fs, b"rnd")
        offsets = random.Random(3).sample(range(0, len(data), 64 * KiB), 40)
        for offset in offsets:
            assert await fs.read(fh, offset, 4 * KiB) == data[offset : offset + 4 * KiB]
        assert {o // MiB for o in offsets} <= cached_indexes(fs, fh)
        await fs.release(fh)
