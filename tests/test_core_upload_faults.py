"""Uploads that fail: the error reaches flush and names where the data is kept, the data
stays in the spool meanwhile, and the next flush (or close) saves it whole. Calls are
bounded in number and in time."""

from __future__ import annotations

import pytest
import trio

from sheepfs.backends.base import Hints
from sheepfs.core.openfile import State
from sheepfs.errors import BackendError, NoSpace, Timeout, Unavailable
from tests.core_helpers import (
    OBJ,
    MiB,
    mount,
    new_file,
    random_bytes,
    read_all,
    spool_files,
    wait_for,
    write_all,
    write_file,
)
from tests.memory_backend import MemoryBackend


async def test_a_failed_create_keeps_the_data_and_the_next_flush_saves_it(tmp_path) -> None:
    backend = MemoryBackend()
    data = random_bytes(OBJ + 5)
    async with mount(backend, tmp_path) as fs:
        fh = await new_file(fs, b"f", data)
        backend.fail("create")
        with pytest.raises(Unavailable) as caught:
            await fs.flush(fh)
        [kept] = spool_files(tmp_path)
        assert str(kept) in str(caught.value)  # the user learns where the data is
        assert kept.read_bytes() == data
        assert fs.file(b"f").state is State.STAGED and backend.info(b"f") is None
        assert await read_all(fs, fh, len(data)) == data
        await fs.flush(fh)
        assert backend.data(b"f") == data
        await fs.release(fh)
    assert spool_files(tmp_path) == [] and fs.saved


async def test_a_failed_write_is_written_again_at_the_next_flush(tmp_path) -> None:
    backend = MemoryBackend()
    data = random_bytes(3 * OBJ)
    async with mount(backend, tmp_path) as fs:
        fh = await new_file(fs, b"f", data)
        backend.fail("write")
        with pytest.raises(Unavailable) as caught:
            await fs.flush(fh)
        assert str(spool_files(tmp_path)[0]) in str(caught.value)
        await fs.flush(fh)
        await fs.release(fh)
    assert backend.data(b"f") == data and backend.count("create") == 1
    assert backend.overlapping_first_writes == 0


async def test_a_failed_resize_is_retried_at_the_next_flush(tmp_path) -> None:
    backend = MemoryBackend()
    data = random_bytes(2 * MiB)
    async with mount(backend, tmp_path) as fs:
        opened, _ = await fs.create(b"out")
        await fs.flush(opened.fh)  # an empty VDI now; the data grows it later
        await write_all(fs, opened.fh, data)
        backend.fail("resize")
        with pytest.raises(Unavailable):
            await fs.flush(opened.fh)
        assert backend.info(b"out").size == 0
        await fs.flush(opened.fh)
        await fs.release(opened.fh)
    assert backend.data(b"out") == data


async def test_a_failed_upload_behind_the_writer_is_finished_by_close(tmp_path) -> None:
    backend = MemoryBackend()
    head, tail = random_bytes(3 * OBJ), random_bytes(OBJ + 1)
    async with mount(backend, tmp_path, write_behind_min=2 * OBJ) as fs:
        backend.fail("write")
        fh = await new_file(fs, b"big", head)
        await wait_for(lambda: backend.count("write") >= 1, "the upload behind the writer")
        await write_all(fs, fh, tail, offset=len(head))  # the writer never sees the failure
        await fs.flush(fh)
        await fs.release(fh)
    assert backend.data(b"big") == head + tail
    assert spool_files(tmp_path) == [] and fs.saved


async def test_a_failed_create_behind_the_writer_is_finished_by_close(tmp_path) -> None:
    backend = MemoryBackend()
    data = random_bytes(3 * OBJ + 2)
    async with mount(backend, tmp_path, write_behind_min=2 * OBJ) as fs:
        backend.fail("create")
        fh = await new_file(fs, b"big", data)
        await wait_for(lambda: backend.count("create") >= 1, "the create behind the writer")
        await fs.flush(fh)
        await fs.release(fh)
    assert backend.data(b"big") == data


async def test_release_after_a_failed_flush_keeps_the_data_for_sync_all(tmp_path) -> None:
    backend = MemoryBackend()
    data = random_bytes(MiB)
    async with mount(backend, tmp_path) as fs:
        fh = await new_file(fs, b"f", data)
        backend.fail("create", NoSpace, times=None)
        with pytest.raises(NoSpace):
            await fs.flush(fh)
        await fs.release(fh)  # logs, never raises
        assert [p.read_bytes() for p in spool_files(tmp_path)] == [data]
        assert await fs.sync_all() is False
        backend.heal()
        assert await fs.sync_all() is True
        assert backend.data(b"f") == data
    assert fs.saved and spool_files(tmp_path) == []


async def test_a_call_past_the_deadline_times_out_and_the_data_waits(tmp_path) -> None:
    backend = MemoryBackend()
    data = random_bytes(MiB)
    async with mount(backend, tmp_path, call_timeout=0.05) as fs:
        fh = await new_file(fs, b"f", data)
        backend.hang("create")
        with trio.fail_after(2):
            with pytest.raises(Timeout):
                await fs.flush(fh)
        backend.release("create")
        assert [p.read_bytes() for p in spool_files(tmp_path)] == [data]
        await fs.flush(fh)
        await fs.release(fh)
    assert backend.data(b"f") == data


async def test_a_hanging_listing_times_out(tmp_path) -> None:
    backend = MemoryBackend()
    backend.put(b"v", b"x")
    async with mount(backend, tmp_path, call_timeout=0.05, list_ttl=0.0) as fs:
        backend.hang("list")
        backend.hang("lookup")
        with trio.fail_after(2):
            with pytest.raises(Timeout):
                await fs.lookup(b"v")
        backend.release("list")
        backend.release("lookup")
        assert (await fs.lookup(b"v")).size == 1


async def test_no_more_calls_in_flight_than_the_backend_takes(tmp_path) -> None:
    backend = MemoryBackend(hints=Hints(parallel_calls=2), delay=0.002)
    files = {f"f{i}".encode(): random_bytes(OBJ + 1 + i) for i in range(6)}
    async with mount(backend, tmp_path) as fs:
        async with trio.open_nursery() as nursery:
            for name, data in files.items():
                nursery.start_soon(write_file, fs, name, data)
    assert backend.max_in_flight <= 2
    assert backend.count("write") >= 6
    for name, data in files.items():
        assert backend.data(name) == data
    assert backend.overlapping_first_writes == 0


async def test_uploads_behind_writers_never_overlap_first_writes(tmp_path) -> None:
    """Many writers, slow calls, uploads behind each writer and rewrites of objects being
    uploaded: at most one write per object is in flight, and every byte lands."""
    backend = MemoryBackend(hints=Hints(parallel_calls=8), delay=0.001)

    async def writer(name: bytes, seed: int) -> None:
        data = bytearray(random_bytes(4 * OBJ))
        opened, _ = await fs.create(name)
        for offset in range(0, len(data), MiB // 2):
            await fs.write(opened.fh, offset, bytes(data[offset : offset + MiB // 2]))
            if offset % OBJ == 0 and offset >= 2 * OBJ:  # rewrite an object uploaded behind
                patch = bytes([seed]) * 100
                back = offset - 2 * OBJ + 7
                data[back : back + 100] = patch
                await fs.write(opened.fh, back, patch)
        await fs.flush(opened.fh)
        await fs.release(opened.fh)
        results[name] = bytes(data)

    results: dict[bytes, bytes] = {}
    async with mount(backend, tmp_path, write_behind_min=OBJ) as fs:
        async with trio.open_nursery() as nursery:
            for i in range(3):
                nursery.start_soon(writer, f"w{i}".encode(), i + 1)
    assert backend.overlapping_first_writes == 0
    for name, data in results.items():
        assert backend.data(name) == data
    assert len(results) == 3


async def test_an_upload_error_is_a_backend_error_with_the_file_name(tmp_path) -> None:
    backend = MemoryBackend()
    async with mount(backend, tmp_path) as fs:
        fh = await new_file(fs, b"named", b"data")
        backend.fail("create", times=None)
        with pytest.raises(BackendError) as caught:
            await fs.flush(fh)
        assert b"named" == caught.value.name or "named" in str(caught.value)
        backend.heal()
        await fs.release(fh)
    assert backend.data(b"named") == b"data"
