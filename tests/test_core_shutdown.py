"""The ordered shutdown: every pending byte is written before the backend closes, ``saved``
says whether all of it got there, and what could not be saved stays in the spool for the
next run."""

from __future__ import annotations

import trio

from tests.core_helpers import (
    OBJ,
    SMALL,
    MiB,
    make_fs,
    mount,
    new_file,
    open_name,
    random_bytes,
    spool_files,
)
from tests.memory_backend import MemoryBackend


async def test_a_new_file_still_open_is_saved_at_shutdown(tmp_path) -> None:
    backend = MemoryBackend()
    data = random_bytes(OBJ + 11)
    async with mount(backend, tmp_path) as fs:
        await new_file(fs, b"open", data)  # never flushed nor closed
    assert fs.saved
    assert backend.data(b"open") == data
    assert spool_files(tmp_path) == []
    assert not backend.is_open and backend.in_flight_at_close == 0


async def test_dirty_cached_data_is_saved_at_shutdown(tmp_path) -> None:
    backend = MemoryBackend()
    backend.put(b"v", bytes(3 * MiB), block_size_shift=SMALL)
    async with mount(backend, tmp_path, cache_size=4 * MiB) as fs:
        fh = await open_name(fs, b"v", writing=True)
        await fs.write(fh, 2 * MiB, b"dirty")
    assert fs.saved and backend.data(b"v", 2 * MiB, 5) == b"dirty"
    assert backend.in_flight_at_close == 0


async def test_a_failing_backend_leaves_saved_false_and_the_spool_file(tmp_path) -> None:
    backend = MemoryBackend()
    data = random_bytes(MiB)
    async with mount(backend, tmp_path) as fs:
        backend.fail("create", times=None)
        fh = await new_file(fs, b"f", data)
        await fs.release(fh)  # the upload fails: logged, kept
    assert not fs.saved
    assert [p.read_bytes() for p in spool_files(tmp_path)] == [data]
    assert backend.info(b"f") is None and not backend.is_open


async def test_failing_write_back_of_a_live_file_leaves_saved_false(tmp_path) -> None:
    backend = MemoryBackend()
    backend.put(b"v", b"old", block_size_shift=SMALL)
    async with mount(backend, tmp_path) as fs:
        fh = await open_name(fs, b"v", writing=True)
        await fs.write(fh, 0, b"new")
        backend.fail("write", times=None)
    assert not fs.saved and backend.data(b"v") == b"old"


async def test_the_next_run_uploads_what_the_last_could_not(tmp_path) -> None:
    backend = MemoryBackend()
    data = random_bytes(OBJ + 1)
    async with mount(backend, tmp_path) as fs:
        backend.fail("create", times=None)
        fh = await new_file(fs, b"f", data)
        await fs.release(fh)
    assert not fs.saved and backend.info(b"f") is None
    backend.heal()
    async with mount(backend, tmp_path) as fs:
        await fs.recover_spool()
    assert fs.saved and backend.data(b"f") == data
    assert spool_files(tmp_path) == []


async def test_shutdown_waits_for_an_upload_behind_the_writer(tmp_path) -> None:
    backend = MemoryBackend()
    head, tail = random_bytes(3 * OBJ), random_bytes(MiB)
    gate = backend.gate("write")
    async with trio.open_nursery() as nursery:
        async with mount(backend, tmp_path, write_behind_min=2 * OBJ) as fs:
            fh = await new_file(fs, b"big", head)
            await gate.entered.wait()  # an upload behind the writer is in flight
            await fs.write(fh, len(head), tail)

            async def let_go() -> None:
                await trio.sleep(0.05)
                assert backend.is_open  # shutdown is still waiting for the write
                gate.proceed()

            nursery.start_soon(let_go)
    assert fs.saved and backend.data(b"big") == head + tail
    assert backend.in_flight_at_close == 0 and backend.overlapping_first_writes == 0


async def test_a_hanging_backend_cannot_hold_shutdown_past_the_deadline(tmp_path) -> None:
    backend = MemoryBackend()
    data = random_bytes(MiB)
    with trio.fail_after(5):
        async with mount(backend, tmp_path, call_timeout=0.05) as fs:
            await new_file(fs, b"f", data)
            backend.hang("create")
    assert not fs.saved
    assert [p.read_bytes() for p in spool_files(tmp_path)] == [data]
    backend.release("create")


async def test_unlinked_files_need_no_saving(tmp_path) -> None:
    backend = MemoryBackend()
    backend.put(b"v", b"old", block_size_shift=SMALL, size=2 * MiB)
    async with mount(backend, tmp_path) as fs:
        await new_file(fs, b"new", b"never saved")
        fh = await open_name(fs, b"v", writing=True)
        await fs.write(fh, 0, b"new")
        await fs.unlink(b"new")
        await fs.unlink(b"v")
    assert fs.saved and backend.names() == []
    assert backend.count("write") == 0 and spool_files(tmp_path) == []


async def test_a_clean_shutdown_leaves_recovery_nothing_to_redo(tmp_path) -> None:
    """What a clean shutdown saved is not in the spool any more: a later recovery must
    neither bring back a file deleted while open nor write old data over newer."""
    backend = MemoryBackend()
    async with mount(backend, tmp_path) as fs:
        await new_file(fs, b"deleted", b"unwanted")
        await fs.unlink(b"deleted")
        await new_file(fs, b"kept", b"version 1")  # still open at shutdown
    assert fs.saved and backend.names() == [b"kept"]
    async with mount(backend, tmp_path) as fs:
        fh = await open_name(fs, b"kept", writing=True)
        await fs.write(fh, 8, b"2")
        await fs.release(fh)
    async with mount(backend, tmp_path) as fs:
        await fs.recover_spool()
    assert backend.names() == [b"kept"]
    assert backend.data(b"kept") == b"version 2"


async def test_sync_all_saves_everything_and_says_so(tmp_path) -> None:
    backend = MemoryBackend()
    backend.put(b"v", bytes(MiB), block_size_shift=SMALL)
    async with mount(backend, tmp_path) as fs:
        await new_file(fs, b"new", b"staged")
        fh = await open_name(fs, b"v", writing=True)
        await fs.write(fh, 7, b"cached")
        assert await fs.sync_all() is True
        assert backend.data(b"new") == b"staged"
        assert backend.data(b"v", 7, 6) == b"cached"
        backend.fail("write", times=None)
        await fs.write(fh, 20, b"more")
        assert await fs.sync_all() is False
        backend.heal()
    assert fs.saved and backend.data(b"v", 20, 4) == b"more"


async def test_many_pending_files_are_all_saved_at_shutdown(tmp_path) -> None:
    backend = MemoryBackend(delay=0.001)
    files = {f"f{i}".encode(): random_bytes(MiB + i) for i in range(8)}
    async with mount(backend, tmp_path) as fs:
        for name, data in files.items():
            await new_file(fs, name, data)
    assert fs.saved
    assert {name: backend.data(name) for name in files} == files
    assert backend.max_in_flight <= backend.hints.parallel_calls


async def test_the_backend_is_opened_by_running_and_closed_after(tmp_path) -> None:
    backend = MemoryBackend()
    fs = make_fs(backend, tmp_path)
    assert not backend.is_open
    async with fs.running():
        assert backend.is_open and backend.opens == 1
        assert (spool_files(tmp_path)) == []
    assert not backend.is_open and fs.saved
