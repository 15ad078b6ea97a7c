"""Each state of an open file is reached through the public API, and what the state promises
about the spool and the VDI holds; plus the errors of names that are (not) there, the
read-only mount and the size limit."""

from __future__ import annotations

import pytest

from sheepfs.backends.base import Layout
from sheepfs.core.openfile import State
from sheepfs.errors import (
    BackendError,
    Exists,
    NotFound,
    ReadOnly,
    TooLarge,
)
from tests.core_helpers import (
    OBJ,
    SMALL,
    MiB,
    break_spool_file,
    mount,
    mutations,
    new_file,
    open_name,
    random_bytes,
    read_all,
    read_name,
    spool_files,
    wait_for,
    write_all,
)
from tests.memory_backend import MemoryBackend


async def test_a_new_file_is_staged_and_shown_before_any_upload(tmp_path) -> None:
    backend = MemoryBackend()
    backend.put(b"old", b"x")
    async with mount(backend, tmp_path) as fs:
        data = random_bytes(MiB + 7)
        fh = await new_file(fs, b"new", data)
        assert fs.file(b"new").state is State.STAGED
        assert backend.info(b"new") is None and mutations(backend) == []
        assert await read_all(fs, fh, len(data) + 10) == data
        attrs = await fs.lookup(b"new")
        assert attrs.size == len(data) and attrs.ino == fs.ino_for(b"new")
        assert (await fs.getattr(attrs.ino)).size == len(data)
        listing = await fs.readdir()
        assert [name for name, _ in listing] == [b"new", b"old"]
        assert dict(listing)[b"new"].size == len(data)
        await fs.release(fh)


async def test_flush_uploads_and_the_file_is_uploaded(tmp_path) -> None:
    backend = MemoryBackend()
    async with mount(backend, tmp_path) as fs:
        data = random_bytes(MiB)
        fh = await new_file(fs, b"f", data)
        await fs.flush(fh)
        assert fs.file(b"f").state is State.UPLOADED
        assert backend.data(b"f") == data
        await fs.release(fh)
        assert fs.file(b"f") is None  # closed with nothing left to save: forgotten
        assert spool_files(tmp_path) == []
        assert await read_name(fs, b"f") == data
    assert fs.saved


async def test_a_large_new_file_is_uploading_behind_its_writer(tmp_path) -> None:
    backend = MemoryBackend()
    async with mount(backend, tmp_path, write_behind_min=2 * OBJ) as fs:
        head = random_bytes(3 * OBJ)
        fh = await new_file(fs, b"big", head)
        await wait_for(lambda: backend.info(b"big") is not None, "the VDI behind the writer")
        assert fs.file(b"big").state is State.UPLOADING
        tail = random_bytes(MiB + 3)
        await write_all(fs, fh, tail, offset=len(head))
        await fs.flush(fh)
        assert fs.file(b"big").state is State.UPLOADED
        await fs.release(fh)
    assert backend.data(b"big") == head + tail
    assert backend.count("create") == 1
    assert backend.overlapping_first_writes == 0


async def test_an_existing_vdi_opens_live(tmp_path) -> None:
    backend = MemoryBackend()
    data = random_bytes(3 * MiB)
    backend.put(b"v", data, block_size_shift=SMALL)
    async with mount(backend, tmp_path) as fs:
        fh = await open_name(fs, b"v", writing=True)
        assert fs.file(b"v").state is State.LIVE
        assert await read_all(fs, fh, len(data)) == data
        await fs.write(fh, 5, b"live")
        await fs.flush(fh)
        assert backend.data(b"v")[:9] == data[:5] + b"live"
        assert spool_files(tmp_path) == []  # live files never go through the spool
        await fs.release(fh)


async def test_open_with_truncate_and_truncate_down_replace(tmp_path) -> None:
    backend = MemoryBackend()
    backend.put(b"a", b"old a", block_size_shift=SMALL)
    backend.put(b"b", b"old b", block_size_shift=SMALL)
    async with mount(backend, tmp_path) as fs:
        fh_a = await open_name(fs, b"a", writing=True, truncate=True)
        assert fs.file(b"a").state is State.REPLACING and fs.file(b"a").size == 0
        fh_b = await open_name(fs, b"b", writing=True)
        attrs = await fs.truncate(fs.ino_for(b"b"), 2, fh=fh_b)
        assert attrs.size == 2 and fs.file(b"b").state is State.REPLACING
        # Nothing is replaced before the upload: the old data is still the VDI's.
        assert backend.data(b"a") == b"old a" and backend.data(b"b") == b"old b"
        for fh in (fh_a, fh_b):
            await fs.flush(fh)
            await fs.release(fh)
    assert backend.data(b"a") == b"" and backend.data(b"b") == b"ol"


async def test_a_failed_spool_write_tears_the_file_and_nothing_is_uploaded(tmp_path) -> None:
    backend = MemoryBackend()
    async with mount(backend, tmp_path) as fs:
        fh = await new_file(fs, b"t", b"first part")
        f = fs.file(b"t")
        break_spool_file(f.staged.path, f.staged.fd)
        with pytest.raises(OSError):
            await fs.write(fh, 10, b"second part")
        assert fs.file(b"t").state is State.TORN
        with pytest.raises((OSError, BackendError)):
            await fs.flush(fh)
        await fs.release(fh)  # never raises
        assert backend.info(b"t") is None
        assert mutations(backend) == []


async def test_a_torn_file_loses_the_vdi_made_behind_its_writer(tmp_path) -> None:
    backend = MemoryBackend()
    async with mount(backend, tmp_path, write_behind_min=2 * OBJ) as fs:
        fh = await new_file(fs, b"t", random_bytes(3 * OBJ))
        await wait_for(lambda: backend.count("write", b"t") > 0, "the upload behind the writer")
        f = fs.file(b"t")
        break_spool_file(f.staged.path, f.staged.fd)
        with pytest.raises(OSError):
            await fs.write(fh, 3 * OBJ, b"more")
        assert fs.file(b"t").state is State.TORN
        with pytest.raises((OSError, BackendError)):
            await fs.flush(fh)
        await fs.release(fh)
        assert backend.info(b"t") is None  # no half-made VDI is left behind
        with pytest.raises(NotFound):
            await fs.lookup(b"t")


async def test_unlinking_a_new_file_leaves_nothing(tmp_path) -> None:
    backend = MemoryBackend()
    async with mount(backend, tmp_path) as fs:
        fh = await new_file(fs, b"gone", b"data")
        f = fs.file(b"gone")
        await fs.unlink(b"gone")
        assert f.state is State.UNLINKED
        with pytest.raises(NotFound):
            await fs.lookup(b"gone")
        await fs.write(fh, 4, b"more")  # an unlinked file still takes writes
        await fs.flush(fh)
        await fs.release(fh)
    assert backend.names() == [] and mutations(backend) == []
    assert spool_files(tmp_path) == []
    assert fs.saved


async def test_unlinking_an_open_vdi_deletes_it_and_saves_nothing_more(tmp_path) -> None:
    backend = MemoryBackend()
    backend.put(b"v", b"old data", block_size_shift=SMALL)
    async with mount(backend, tmp_path) as fs:
        fh = await open_name(fs, b"v", writing=True)
        f = fs.file(b"v")
        await fs.write(fh, 0, b"new")
        await fs.unlink(b"v")
        assert f.state is State.UNLINKED and backend.info(b"v") is None
        await fs.write(fh, 3, b"more")
        await fs.flush(fh)
        await fs.release(fh)
        assert [name for name, _ in await fs.readdir()] == []
    assert backend.names() == []
    assert backend.count("write") == 0 and backend.count("create") == 0


async def test_an_uploaded_file_truncated_shorter_is_replaced(tmp_path) -> None:
    """Sheepdog cannot shrink: an uploaded file cut shorter gets a new VDI at the next
    upload, of its exact size."""
    backend = MemoryBackend()
    async with mount(backend, tmp_path) as fs:
        data = random_bytes(OBJ + 100)
        fh = await new_file(fs, b"f", data)
        await fs.flush(fh)
        assert fs.file(b"f").state is State.UPLOADED
        assert (await fs.truncate(fs.ino_for(b"f"), 10, fh=fh)).size == 10
        await fs.flush(fh)
        assert backend.data(b"f") == data[:10]
        assert backend.snapshot_tags(b"f") == []
        await fs.release(fh)


async def test_names_that_are_not_there_or_are_there(tmp_path) -> None:
    backend = MemoryBackend()
    backend.put(b"v", b"x")
    async with mount(backend, tmp_path) as fs:
        with pytest.raises(NotFound):
            await fs.lookup(b"missing")
        with pytest.raises(NotFound):
            await fs.getattr(fs.ino_for(b"v") + 1000)
        with pytest.raises(NotFound):
            await fs.unlink(b"missing")
        with pytest.raises(NotFound):
            await fs.rename(b"missing", b"other")
        with pytest.raises(Exists):
            await fs.create(b"v")
        fh = await new_file(fs, b"open", b"")
        with pytest.raises(Exists):
            await fs.create(b"open")  # a new file counts before it has a VDI
        await fs.flush(fh)
        await fs.release(fh)
        with pytest.raises(Exists):
            await fs.create(b"open")  # and after, with its (empty) VDI
    assert backend.data(b"v") == b"x" and backend.data(b"open") == b""


async def test_a_read_only_mount_refuses_every_change(tmp_path) -> None:
    backend = MemoryBackend()
    backend.put(b"v", b"data")
    backend.put(b"w", b"more")
    async with mount(backend, tmp_path, read_only=True) as fs:
        ino = (await fs.lookup(b"v")).ino
        with pytest.raises(ReadOnly):
            await fs.create(b"new")
        with pytest.raises(ReadOnly):
            await fs.open(ino, writing=True)
        with pytest.raises(ReadOnly):
            await fs.truncate(ino, 1)
        with pytest.raises(ReadOnly):
            await fs.unlink(b"v")
        with pytest.raises(ReadOnly):
            await fs.rename(b"v", b"x")
        with pytest.raises(ReadOnly):
            await fs.rename(b"v", b"w")
        assert await read_name(fs, b"v") == b"data"
    assert mutations(backend) == []
    assert (backend.data(b"v"), backend.data(b"w")) == (b"data", b"more")


async def test_writes_past_the_vdi_size_limit_are_too_large(tmp_path) -> None:
    backend = MemoryBackend()
    backend.put(b"v", b"x", layout=Layout(block_size_shift=SMALL))
    flat_max = MiB << 20  # 2^20 objects of 1 MiB
    async with mount(backend, tmp_path) as fs:
        fh = await open_name(fs, b"v", writing=True)
        with pytest.raises(TooLarge):
            await fs.write(fh, flat_max - 1, b"ab")
        with pytest.raises(TooLarge):
            await fs.truncate(fs.ino_for(b"v"), flat_max + 1, fh=fh)
        await fs.release(fh)
        fh = await new_file(fs, b"new", b"n")
        with pytest.raises(TooLarge):
            await fs.write(fh, (OBJ << 20) - 1, b"ab")  # new files: 4 MiB objects
        assert (await fs.lookup(b"new")).size == 1
        await fs.release(fh)
    assert backend.data(b"v") == b"x" and backend.data(b"new") == b"n"


async def test_statfs_and_attributes_follow_the_store(tmp_path) -> None:
    backend = MemoryBackend(total=64 * MiB)
    backend.put(b"v", random_bytes(2 * MiB), block_size_shift=SMALL)
    async with mount(backend, tmp_path) as fs:
        stats = await fs.statfs()
        assert (stats.total, stats.used, stats.avail) == (64 * MiB, 2 * MiB, 62 * MiB)
        attrs = await fs.lookup(b"v")
        assert (attrs.size, attrs.used, attrs.object_size) == (2 * MiB, 2 * MiB, MiB)
        await fs.unlink(b"v")
        assert (await fs.statfs()).used == 0


async def test_a_file_deleted_while_open_can_still_be_truncated(tmp_path) -> None:
    """Its handles still see it; nothing of it is saved, and nothing fails."""
    backend = MemoryBackend()
    backend.put(b"gone", bytes(3 * MiB), block_size_shift=SMALL)
    async with mount(backend, tmp_path) as fs:
        attrs = await fs.lookup(b"gone")
        opened = await fs.open(attrs.ino, writing=True)
        await fs.unlink(b"gone")
        attrs = await fs.truncate(attrs.ino, MiB, opened.fh)
        assert attrs.size == MiB and fs.file(b"gone") is None
        await fs.release(opened.fh)
    assert backend.names() == [] and fs.saved
