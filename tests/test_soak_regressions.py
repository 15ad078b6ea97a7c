"""Bugs scripts/soak found, each pinned where it can be shown fastest: in-process, over the
memory backend, with a crash (the core stopped without its ordered shutdown) in the middle.

sheepfs killed while a replace (``cp`` over a file) or a rename over a file had set the old
data aside in a snapshot left the name missing, or holding part of the new data: the old
data was only reachable by hand. The next mount now puts it back.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from sheepfs.core.filesystem import Filesystem
from sheepfs.errors import Unavailable
from tests.core_helpers import SMALL, MiB, make_fs, open_name, random_bytes, write_all
from tests.memory_backend import MemoryBackend

pytestmark = pytest.mark.timeout(60)


async def crashed(fs: Filesystem, body) -> None:
    """Run ``body(fs)`` mounted, then stop as SIGKILL would: no flush, no shutdown."""
    with trio.CancelScope() as crash:
        async with fs.running():
            await body(fs)
            crash.cancel()
            await trio.sleep(0)


async def remounted(backend: MemoryBackend, tmp_path: Path) -> None:
    """The next mount with the same spool: its recovery, then an ordered unmount."""
    fs = make_fs(backend, tmp_path)
    async with fs.running():
        await fs.recover_spool()


def rename_over_a_file(monkeypatch) -> tuple[MemoryBackend, bytes]:
    """``src`` and a ``dst`` holding ``old`` to rename it over; put-backs retried at once."""
    from sheepfs.core import aside

    backend = MemoryBackend()
    old = random_bytes(MiB + 5)
    backend.put(b"dst", old, block_size_shift=SMALL)
    backend.put(b"src", random_bytes(MiB), block_size_shift=SMALL)
    monkeypatch.setattr(aside, "RETRY", 0.05)
    return backend, old


@pytest.mark.parametrize("failing", ["create", "write"])
async def test_a_replace_cut_short_by_a_crash_gets_the_old_data_back(tmp_path, failing) -> None:
    """Killed after the old data was set aside: before the VDI was made again ("create"
    fails), or while the new data was being written into it ("write" fails)."""
    backend = MemoryBackend()
    old = random_bytes(2 * MiB)
    backend.put(b"v", old, block_size_shift=SMALL)
    new = random_bytes(3 * MiB)

    async def replace(fs: Filesystem) -> None:
        fh = await open_name(fs, b"v", writing=True, truncate=True)
        await write_all(fs, fh, new)
        backend.fail(failing)
        with pytest.raises(Unavailable):
            await fs.flush(fh)  # close() failed: the new data was never acknowledged
        assert backend.data(b"v") != old if failing == "write" else backend.info(b"v") is None

    await crashed(make_fs(backend, tmp_path), replace)
    backend.heal()
    await remounted(backend, tmp_path)
    assert backend.data(b"v") == old  # the acknowledged data, under its name again
    assert backend.snapshot_tags(b"v") == []
    kept = sorted(p for p in (tmp_path / "spool").glob("*.data"))
    assert len(kept) == 1 and kept[0].read_bytes() == new  # the new data stays, as it said


async def test_a_replace_that_ended_leaves_nothing_to_put_back(tmp_path) -> None:
    backend = MemoryBackend()
    backend.put(b"v", random_bytes(2 * MiB), block_size_shift=SMALL)
    new = random_bytes(MiB)

    async def replace(fs: Filesystem) -> None:
        fh = await open_name(fs, b"v", writing=True, truncate=True)
        await write_all(fs, fh, new)
        await fs.flush(fh)  # acknowledged; killed before the release

    await crashed(make_fs(backend, tmp_path), replace)
    await remounted(backend, tmp_path)
    assert backend.data(b"v") == new


async def test_a_file_removed_after_a_failed_replace_stays_removed(tmp_path) -> None:
    backend = MemoryBackend()
    backend.put(b"v", random_bytes(MiB), block_size_shift=SMALL)

    async def replace_then_rm(fs: Filesystem) -> None:
        fh = await open_name(fs, b"v", writing=True, truncate=True)
        await write_all(fs, fh, random_bytes(MiB // 2))
        backend.fail("create")
        with pytest.raises(Unavailable):
            await fs.flush(fh)
        backend.heal()
        await fs.unlink(b"v")
        await fs.release(fh)

    await crashed(make_fs(backend, tmp_path), replace_then_rm)
    await remounted(backend, tmp_path)
    assert backend.info(b"v") is None


async def test_a_rename_over_a_file_cut_short_by_a_crash_gets_its_old_data_back(tmp_path) -> None:
    """Killed after the target's old data was set aside and the target deleted, before
    the clone that gives the source its name (``rsync`` renaming its temporary file)."""
    backend = MemoryBackend()
    old, moving = random_bytes(MiB + 5), random_bytes(2 * MiB)
    backend.put(b"dst", old, block_size_shift=SMALL)
    backend.put(b"src", moving, block_size_shift=SMALL)

    async def rename(fs: Filesystem) -> None:
        backend.fail("clone", times=None)  # and so does every try to put it back
        with pytest.raises(Unavailable):
            await fs.rename(b"src", b"dst")
        assert backend.info(b"dst") is None

    await crashed(make_fs(backend, tmp_path), rename)
    backend.heal()
    await remounted(backend, tmp_path)
    assert backend.data(b"dst") == old and backend.data(b"src") == moving
    assert backend.snapshot_tags(b"dst") == []


async def test_a_rename_over_a_file_that_fails_gives_the_target_back_while_mounted(
    tmp_path, monkeypatch
) -> None:
    """The cluster went away between the delete of the target and the clone (the soak's
    cluster restart under ``mv``): once it is back, the target holds its old data again
    (a failed rename leaves the target as it was), without waiting for a remount."""
    from tests.core_helpers import mount, read_name

    backend, old = rename_over_a_file(monkeypatch)
    async with mount(backend, tmp_path) as fs:
        backend.fail("clone", times=3)  # the rename's, then the first two tries to put back
        with pytest.raises(Unavailable):
            await fs.rename(b"src", b"dst")
        with trio.fail_after(5):
            while backend.info(b"dst") is None:
                await trio.sleep(0.01)
        assert await read_name(fs, b"dst") == old
    assert backend.data(b"dst") == old and backend.snapshot_tags(b"dst") == []
    assert list((tmp_path / "spool").glob("*.aside")) == []


async def test_a_rename_over_a_file_that_ended_is_kept(tmp_path) -> None:
    backend = MemoryBackend()
    moving = random_bytes(MiB)
    backend.put(b"dst", random_bytes(MiB), block_size_shift=SMALL)
    backend.put(b"src", moving, block_size_shift=SMALL)

    async def rename(fs: Filesystem) -> None:
        await fs.rename(b"src", b"dst")

    await crashed(make_fs(backend, tmp_path), rename)
    await remounted(backend, tmp_path)
    assert backend.data(b"dst") == moving and backend.info(b"src") is None


async def test_a_connection_closed_by_a_failed_send_ends_its_reader_quietly(caplog) -> None:
    """A send that fails (the sheep reset the connection as the cluster stopped) closes
    the socket; the reader, about to wait for the next reply, must end as for any lost
    connection, not log a traceback ("file descriptor cannot be a negative integer")."""
    import logging
    import socket

    from sheepfs.backends.sheep.connection import Connection

    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    conn = Connection(("127.0.0.1", 7000), ours)
    conn.close("sending failed: [Errno 104] Connection reset by peer")
    with caplog.at_level(logging.INFO):
        with trio.fail_after(5):
            await conn.reader()
    theirs.close()
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert conn.closed and "reset by peer" in (conn.why or "")


async def test_a_full_spool_under_an_upload_behind_the_writer_does_not_end_the_mount(
    tmp_path, monkeypatch
) -> None:
    """The spool disk filled up as an upload behind the writer of a large new file began:
    recording the VDI it made in the spool failed (ENOSPC), in a background task, which
    took the whole daemon down. It is a failure of that upload, which close retries."""
    import errno

    from sheepfs.spool import StagedFile
    from tests.core_helpers import OBJ, mount, new_file

    backend = MemoryBackend()
    data = random_bytes(3 * OBJ)
    real_save = StagedFile.save_meta
    full = [True]

    def save_meta(self: StagedFile) -> None:
        if full[0]:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(self)

    async with mount(backend, tmp_path, write_behind_min=OBJ) as fs:
        fh = await new_file(fs, b"big")
        monkeypatch.setattr(StagedFile, "save_meta", save_meta)
        await write_all(fs, fh, data)
        await trio.sleep(0.2)  # the upload behind the writer runs, and fails
        full[0] = False
        await fs.flush(fh)
        await fs.release(fh)
    assert backend.data(b"big") == data


@pytest.mark.parametrize("said", ["failed", "succeeded"])
async def test_a_rename_whose_delete_of_the_target_was_cut_off_gives_the_target_back(
    tmp_path, monkeypatch, said
) -> None:
    """Sheepdog deletes a VDI by zeroing its index, then removing it: a delete cut off
    between the two (dog killed at --timeout while a sheep held its replies, or a dog that
    exited 0 as the cluster stopped) leaves the target there, reading zeros. Its old data,
    set aside, must come back all the same."""
    from tests.core_helpers import mount

    backend, old = rename_over_a_file(monkeypatch)
    real_delete = backend.delete

    async def cut_off(name: bytes) -> None:
        if name != b"dst":
            return await real_delete(name)
        await real_delete(name)
        backend.put(b"dst", bytes(len(old)), block_size_shift=SMALL)  # its index zeroed
        if said == "failed":
            raise Unavailable("delete", name, "dog killed at --timeout")
        backend.fail("clone")  # dog said nothing (it exits 0); the cluster went away then

    monkeypatch.setattr(backend, "delete", cut_off)
    async with mount(backend, tmp_path) as fs:
        with pytest.raises(Unavailable):
            await fs.rename(b"src", b"dst")
        monkeypatch.setattr(backend, "delete", real_delete)
        with trio.fail_after(5):
            while backend.data(b"dst") != old:
                await trio.sleep(0.01)
    assert backend.data(b"dst") == old and list((tmp_path / "spool").glob("*.aside")) == []


@pytest.mark.parametrize("replacing", [False, True])
async def test_a_create_whose_reply_was_lost_is_not_made_twice(tmp_path, replacing) -> None:
    """The sheep in use stopped answering after it made the VDI of a new file (or of a
    replace, once the old data was set aside): the create timed out though it landed.
    The next flush (here, the unmount: SIGTERM) failed with "VDI exists already" forever,
    and the unmount said some data could not be saved."""
    from tests.core_helpers import mount, new_file

    backend = MemoryBackend()
    if replacing:
        backend.put(b"v", random_bytes(2 * MiB), block_size_shift=SMALL)
    new = random_bytes(MiB + 77)
    async with mount(backend, tmp_path) as fs:
        if replacing:
            fh = await open_name(fs, b"v", writing=True, truncate=True)
        else:
            fh = await new_file(fs, b"v")
        await write_all(fs, fh, new)
        backend.fail("create", landed=True)
        with pytest.raises(Unavailable):
            await fs.flush(fh)
        await fs.flush(fh)  # the close() a user tries again
        await fs.release(fh)
    assert fs.saved
    assert backend.data(b"v") == new and backend.snapshot_tags(b"v") == []


async def test_a_replace_whose_delete_reply_was_lost_goes_on(tmp_path) -> None:
    """The sheep in use stopped answering after it deleted the VDI whose old data a
    replace had set aside: the delete timed out though it landed, and every later flush
    tried to delete it again, failed (no such VDI), and the file never got its new data."""
    backend = MemoryBackend()
    backend.put(b"v", random_bytes(2 * MiB), block_size_shift=SMALL)
    new = random_bytes(MiB + 77)
    fs = make_fs(backend, tmp_path)
    async with fs.running():
        fh = await open_name(fs, b"v", writing=True, truncate=True)
        await write_all(fs, fh, new)
        backend.fail("delete", landed=True)
        with pytest.raises(Unavailable):
            await fs.flush(fh)
        await fs.flush(fh)
        await fs.release(fh)
    assert fs.saved
    assert backend.data(b"v") == new and backend.snapshot_tags(b"v") == []


async def test_sigterm_while_a_file_is_copied_over_keeps_its_old_data(tmp_path) -> None:
    """SIGTERM (the ordered shutdown) came while ``cp`` was writing over an existing file:
    the part copied so far was uploaded as the file's new content, and the old data, which
    had been acknowledged, was gone. The copy never ended, so the old data stays; the part
    copied is kept in the spool (and the next mount says so)."""
    backend = MemoryBackend()
    old = random_bytes(3 * MiB)
    backend.put(b"v", old, block_size_shift=SMALL)
    fs = make_fs(backend, tmp_path)
    async with fs.running():
        fh = await open_name(fs, b"v", writing=True, truncate=True)
        await write_all(fs, fh, random_bytes(MiB))  # the copy goes on when the mount ends
    assert backend.data(b"v") == old
    [kept] = sorted((tmp_path / "spool").glob("*.data"))
    assert kept.stat().st_size == MiB


async def test_a_leftover_whose_vdi_appears_meanwhile_is_kept_not_retried_for_ever(
    tmp_path,
) -> None:
    """sheepfs was killed while `dog vdi create` of a new file ran; that dog, left running,
    made the VDI just after the next mount had looked for it. The upload of the leftover
    then failed with "VDI exists already" at every open, fsync and close of that name, and
    the unmount said data could not be saved. It is kept instead, as any leftover whose
    VDI holds other data."""
    from tests.core_helpers import mount, new_file, read_name

    backend = MemoryBackend()

    async def staged_only(fs: Filesystem) -> None:
        fh = await new_file(fs, b"v")
        await write_all(fs, fh, random_bytes(MiB))

    await crashed(make_fs(backend, tmp_path), staged_only)
    real_create = backend.create

    async def late(name: bytes, size: int, layout=None) -> None:
        backend.put(name, b"", size=size)  # the earlier run's create, landing just now
        await real_create(name, size, layout)

    backend.create = late  # type: ignore[method-assign]
    async with mount(backend, tmp_path) as fs:
        await fs.recover_spool()
        backend.create = real_create  # type: ignore[method-assign]
        assert await read_name(fs, b"v") == bytes(MiB)  # the VDI as it is, no error
    assert fs.saved
    assert len(list((tmp_path / "spool").glob("*.data"))) == 1  # the data stays


async def test_a_spool_write_failing_while_the_upload_behind_creates_the_vdi(
    tmp_path, monkeypatch
) -> None:
    """The spool filled up while an upload behind the writer of a large new file waited
    for its VDI to be made: the file tore (its copy can never be whole) meanwhile, and the
    upload then moved it on as if it had not ("no transition TORN -> UPLOADING"), which
    ended the daemon. The copy fails; the VDI made for it is deleted again."""
    import errno

    from sheepfs.spool import StagedFile
    from tests.core_helpers import OBJ, mount, new_file

    backend = MemoryBackend()
    creating, go = trio.Event(), trio.Event()
    real_create = backend.create

    async def slow_create(name: bytes, size: int, layout=None) -> None:
        creating.set()
        await go.wait()
        await real_create(name, size, layout)

    monkeypatch.setattr(backend, "create", slow_create)
    async with mount(backend, tmp_path, write_behind_min=OBJ) as fs:
        fh = await new_file(fs, b"big")
        await write_all(fs, fh, random_bytes(2 * OBJ))
        with trio.fail_after(5):
            await creating.wait()  # the upload behind the writer is making the VDI
        monkeypatch.setattr(StagedFile, "pwrite", lambda *a: (_ for _ in ()).throw(
            OSError(errno.ENOSPC, "No space left on device")))  # fmt: skip
        with pytest.raises(OSError):
            await fs.write(fh, 2 * OBJ, b"more")
        go.set()
        await trio.sleep(0.1)
        with pytest.raises(OSError):
            await fs.flush(fh)
        await fs.release(fh)
    assert backend.info(b"big") is None
