"""Live files through the chunk cache: files larger than the cache, several at once, random
writes, idle write-back, and write-back that fails (the data stays dirty and the error
reaches flush). At most one write per object is ever in flight."""

from __future__ import annotations

import random

import pytest
import trio

from sheepfs.backends.base import Layout
from sheepfs.errors import BackendError, Unavailable
from tests.core_helpers import (
    SMALL,
    KiB,
    MiB,
    mount,
    open_name,
    random_bytes,
    read_all,
    read_name,
    write_all,
)
from tests.memory_backend import MemoryBackend


async def test_a_file_larger_than_the_cache_is_written_back_while_written(tmp_path) -> None:
    backend = MemoryBackend(delay=0.0005)
    backend.put(b"big", size=8 * MiB, block_size_shift=SMALL)  # nothing allocated yet
    data = random_bytes(8 * MiB)
    async with mount(backend, tmp_path, cache_size=2 * MiB) as fs:
        fh = await open_name(fs, b"big", writing=True)
        await write_all(fs, fh, data, piece=128 * KiB)
        assert backend.count("write") > 0  # 8 MiB cannot wait in a 2 MiB cache
        assert await read_all(fs, fh, len(data)) == data
        await fs.flush(fh)
        assert backend.data(b"big") == data
        await fs.release(fh)
    assert backend.overlapping_first_writes == 0


async def test_random_writes_to_a_file_larger_than_the_cache(tmp_path) -> None:
    backend = MemoryBackend(delay=0.0002)
    mirror = bytearray(random_bytes(6 * MiB))
    backend.put(b"v", bytes(mirror[: 3 * MiB]), size=len(mirror), block_size_shift=SMALL)
    mirror[3 * MiB :] = bytes(3 * MiB)  # the second half is unallocated: first writes
    rng = random.Random(7)
    async with mount(backend, tmp_path, cache_size=2 * MiB) as fs:
        fh = await open_name(fs, b"v", writing=True)
        for _ in range(200):
            offset = rng.randrange(len(mirror) - 4 * KiB)
            piece = random_bytes(rng.randrange(1, 4 * KiB))
            await fs.write(fh, offset, piece)
            mirror[offset : offset + len(piece)] = piece
        await fs.flush(fh)
        await fs.release(fh)
    assert backend.data(b"v") == bytes(mirror)
    assert backend.overlapping_first_writes == 0


async def test_several_files_written_at_once_share_a_small_cache(tmp_path) -> None:
    backend = MemoryBackend(delay=0.0005)
    names = [f"f{i}".encode() for i in range(3)]
    for name in names:
        backend.put(name, size=4 * MiB, block_size_shift=SMALL)
    written: dict[bytes, bytes] = {}

    async def writer(name: bytes) -> None:
        data = random_bytes(4 * MiB)
        fh = await open_name(fs, name, writing=True)
        await write_all(fs, fh, data, piece=64 * KiB)
        await fs.flush(fh)
        await fs.release(fh)
        written[name] = data

    async with mount(backend, tmp_path, cache_size=2 * MiB) as fs:
        async with trio.open_nursery() as nursery:
            for name in names:
                nursery.start_soon(writer, name)
    assert sorted(written) == names
    for name in names:
        assert backend.data(name) == written[name]
    assert backend.overlapping_first_writes == 0
    assert backend.max_in_flight <= backend.hints.parallel_calls


async def test_idle_write_back_saves_what_an_open_file_holds(tmp_path) -> None:
    backend = MemoryBackend()
    backend.put(b"v", bytes(2 * MiB), block_size_shift=SMALL)
    async with mount(backend, tmp_path) as fs:
        fh = await open_name(fs, b"v", writing=True)
        await fs.write(fh, 100, b"dirty")
        assert backend.data(b"v", 100, 5) == bytes(5)  # still in the cache
        await fs.write_back_idle()
        assert backend.data(b"v", 100, 5) == b"dirty"
        writes = backend.count("write")
        await fs.flush(fh)
        assert backend.count("write") == writes  # nothing was left to write
        await fs.release(fh)


async def test_a_failed_idle_write_back_keeps_the_data_dirty(tmp_path) -> None:
    backend = MemoryBackend()
    backend.put(b"v", bytes(2 * MiB), block_size_shift=SMALL)
    async with mount(backend, tmp_path) as fs:
        fh = await open_name(fs, b"v", writing=True)
        await fs.write(fh, MiB, b"keep me")
        backend.fail("write")
        await fs.write_back_idle()  # logs; a later write-back tries again
        assert backend.count("write") >= 1
        assert backend.data(b"v", MiB, 7) == bytes(7)
        await fs.release(fh)
    assert backend.data(b"v", MiB, 7) == b"keep me"
    assert fs.saved


async def test_a_failing_write_back_is_reported_at_flush_and_kept(tmp_path) -> None:
    backend = MemoryBackend()
    old = random_bytes(MiB)
    backend.put(b"v", old, block_size_shift=SMALL)
    async with mount(backend, tmp_path) as fs:
        fh = await open_name(fs, b"v", writing=True)
        await fs.write(fh, 10, b"new")
        backend.fail("write", times=None)
        with pytest.raises(BackendError):
            await fs.flush(fh)
        with pytest.raises(BackendError):
            await fs.fsync(fh)
        assert backend.data(b"v") == old
        assert (await fs.read(fh, 10, 3)) == b"new"  # the cache still has it
        backend.heal()
        await fs.flush(fh)
        await fs.release(fh)
    assert backend.data(b"v") == old[:10] + b"new" + old[13:]


async def test_write_back_failing_under_a_full_cache_loses_no_accepted_write(tmp_path) -> None:
    backend = MemoryBackend()
    backend.put(b"v", size=6 * MiB, block_size_shift=SMALL)
    accepted: list[tuple[int, bytes]] = []
    async with mount(backend, tmp_path, cache_size=2 * MiB) as fs:
        fh = await open_name(fs, b"v", writing=True)
        backend.fail("write", times=None)
        refused = 0
        with trio.fail_after(5):
            for offset in range(0, 6 * MiB, 512 * KiB):
                piece = random_bytes(512 * KiB)
                try:
                    await fs.write(fh, offset, piece)
                except Unavailable:
                    refused += 1
                else:
                    accepted.append((offset, piece))
            with pytest.raises(BackendError):
                await fs.flush(fh)
        backend.heal()
        await fs.flush(fh)
        await fs.release(fh)
    assert accepted
    for offset, piece in accepted:
        assert backend.data(b"v", offset, len(piece)) == piece
    assert refused + len(accepted) == 12


async def test_writes_past_the_end_grow_the_vdi(tmp_path) -> None:
    backend = MemoryBackend()
    old = random_bytes(MiB)
    backend.put(b"v", old, block_size_shift=SMALL)
    async with mount(backend, tmp_path) as fs:
        fh = await open_name(fs, b"v", writing=True)
        await fs.write(fh, MiB + MiB // 2, b"far")
        assert (await fs.getattr(fs.ino_for(b"v"))).size == MiB + MiB // 2 + 3
        await fs.flush(fh)
        await fs.release(fh)
    assert backend.data(b"v") == old + bytes(MiB // 2) + b"far"
    assert backend.count("resize") >= 1 and backend.count("create") == 0


async def test_truncating_a_vdi_longer_grows_it_without_writing(tmp_path) -> None:
    backend = MemoryBackend()
    backend.put(b"v", b"short", block_size_shift=SMALL)
    async with mount(backend, tmp_path) as fs:
        attrs = await fs.truncate(fs.ino_for(b"v"), 3 * MiB)
        assert attrs.size == 3 * MiB
        assert await read_name(fs, b"v") == b"short" + bytes(3 * MiB - 5)
    assert backend.info(b"v").size == 3 * MiB
    assert backend.count("write") == 0 and backend.count("snapshot") == 0


async def test_an_erasure_coded_file_never_gets_overlapping_writes(tmp_path) -> None:
    backend = MemoryBackend(delay=0.0005)
    layout = Layout(block_size_shift=SMALL, copies=2, parity=1)
    mirror = bytearray(random_bytes(3 * MiB))
    backend.put(b"ec", bytes(mirror), layout=layout)
    rng = random.Random(3)

    async def writer(fh: int) -> None:
        for _ in range(60):
            offset = rng.randrange(len(mirror) - 2 * KiB)
            piece = random_bytes(rng.randrange(1, 2 * KiB))
            await fs.write(fh, offset, piece)
            mirror[offset : offset + len(piece)] = piece
            if rng.random() < 0.2:
                await fs.flush(fh)

    async with mount(backend, tmp_path, cache_size=2 * MiB) as fs:
        handles = [await open_name(fs, b"ec", writing=True) for _ in range(3)]
        async with trio.open_nursery() as nursery:
            for fh in handles:
                nursery.start_soon(writer, fh)
        for fh in handles:
            await fs.release(fh)
    assert backend.data(b"ec") == bytes(mirror)
    assert backend.overlapping_ec_writes == 0 and backend.overlapping_first_writes == 0


async def test_a_write_landing_while_write_behind_grows_the_vdi_is_kept(tmp_path) -> None:
    """``cp`` of a sparse file over an empty one (found by scripts/soak): the first extent
    fills a chunk to the file's end, so write-behind takes it and grows the VDI; the second
    extent lands in that chunk meanwhile, past a hole, as a run of its own. Write-behind
    sends one run per round, and took the chunk's other run for sent too: it was never
    written, and the VDI read zeros there for good."""
    backend = MemoryBackend()
    backend.put(b"e", b"", block_size_shift=SMALL)
    first, second = random_bytes(MiB // 2), random_bytes(8 * KiB)
    at = MiB // 2 + 24 * KiB  # past a hole, in the same 1 MiB chunk
    async with mount(backend, tmp_path) as fs:
        fh = await open_name(fs, b"e", writing=True)
        gate = backend.gate("resize")
        await fs.write(fh, 0, first)  # the chunk is dirty to the file's end: write-behind
        await gate.wait_held(1)
        await fs.write(fh, at, second)
        gate.proceed()
        await fs.truncate(fs.ino_for(b"e"), MiB, fh)  # as cp ends a file in a hole
        await fs.flush(fh)
        await fs.release(fh)
    want = first + bytes(at - len(first)) + second
    assert backend.data(b"e") == want + bytes(MiB - len(want))
