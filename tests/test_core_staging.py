"""New files in the spool and their uploads: exact sizes, only objects with data written
(unwritten space is free in Sheepdog), empty files and a shell redirect's early flush,
writes after an upload, and spool files a previous run left behind."""

from __future__ import annotations

import logging

from sheepfs.spool import Spool
from tests.core_helpers import (
    OBJ,
    SMALL,
    MiB,
    mount,
    new_file,
    random_bytes,
    read_name,
    sparse,
    spool_dir,
    spool_files,
    write_all,
    write_file,
)
from tests.memory_backend import MemoryBackend


async def test_zero_objects_are_not_written_and_the_size_is_exact(tmp_path) -> None:
    backend = MemoryBackend()
    data = sparse(3 * OBJ + 5, (0, b"head"), (2 * OBJ + 1, random_bytes(1000)))
    async with mount(backend, tmp_path) as fs:
        await write_file(fs, b"thin", data)  # the zeros are written too, as cp would
    info = backend.info(b"thin")
    assert info.size == 3 * OBJ + 5 and info.object_size == OBJ
    assert backend.objects(b"thin") == {0, 2}
    assert backend.data(b"thin") == data


async def test_only_the_last_partial_object_holds_data(tmp_path) -> None:
    backend = MemoryBackend()
    data = sparse(2 * OBJ + 10, (2 * OBJ + 3, b"end"))
    async with mount(backend, tmp_path) as fs:
        await write_file(fs, b"tail", data)
    assert backend.objects(b"tail") == {2}
    assert backend.data(b"tail") == data


async def test_holes_left_by_seeking_stay_holes(tmp_path) -> None:
    backend = MemoryBackend()
    async with mount(backend, tmp_path) as fs:
        fh = await new_file(fs, b"holes", b"a")
        await fs.write(fh, 5 * OBJ - 1, b"z")
        assert (await fs.lookup(b"holes")).size == 5 * OBJ
        await fs.flush(fh)
        await fs.release(fh)
    assert backend.objects(b"holes") == {0, 4}
    assert backend.data(b"holes") == sparse(5 * OBJ, (0, b"a"), (5 * OBJ - 1, b"z"))


async def test_an_empty_new_file_becomes_an_empty_vdi_at_flush(tmp_path) -> None:
    backend = MemoryBackend()
    async with mount(backend, tmp_path) as fs:
        opened, attrs = await fs.create(b"touched")
        assert attrs.size == 0
        await fs.flush(opened.fh)
        assert backend.info(b"touched").size == 0  # there when close() returns
        await fs.release(opened.fh)
    assert backend.info(b"touched").size == 0 and backend.objects(b"touched") == set()
    assert backend.count("create") == 1 and backend.count("write") == 0


async def test_a_redirect_flushes_before_its_data_and_the_vdi_grows(tmp_path) -> None:
    backend = MemoryBackend()
    async with mount(backend, tmp_path) as fs:
        opened, _ = await fs.create(b"out")
        await fs.flush(opened.fh)  # `cmd > out`: the shell's dup2 flushes first
        assert backend.info(b"out").size == 0
        data = random_bytes(OBJ + MiB // 2)
        await write_all(fs, opened.fh, data)
        await fs.flush(opened.fh)
        assert backend.data(b"out") == data
        await fs.release(opened.fh)
    assert backend.count("create") == 1 and backend.count("resize") >= 1
    assert backend.info(b"out").size == len(data)
    assert spool_files(tmp_path) == []


async def test_writes_after_the_first_flush_go_out_at_the_next(tmp_path) -> None:
    backend = MemoryBackend()
    first = random_bytes(2 * OBJ)
    async with mount(backend, tmp_path) as fs:
        fh = await new_file(fs, b"f", first)
        await fs.flush(fh)
        assert backend.data(b"f") == first
        await fs.write(fh, 10, b"rewritten")
        await fs.write(fh, OBJ, bytes(OBJ))  # zeros over uploaded data must land too
        tail = random_bytes(1234)
        await fs.write(fh, 2 * OBJ, tail)
        await fs.flush(fh)
        await fs.release(fh)
    expect = bytearray(first[:OBJ]) + bytes(OBJ) + tail
    expect[10:19] = b"rewritten"
    assert backend.data(b"f") == bytes(expect)
    assert backend.count("create") == 1 and backend.snapshot_tags(b"f") == []


async def test_a_new_file_truncated_longer_uploads_no_zeros(tmp_path) -> None:
    backend = MemoryBackend()
    async with mount(backend, tmp_path) as fs:
        fh = await new_file(fs, b"f", b"x")
        attrs = await fs.truncate(fs.ino_for(b"f"), 2 * OBJ + 1, fh=fh)
        assert attrs.size == 2 * OBJ + 1
        await fs.flush(fh)
        await fs.release(fh)
    assert backend.info(b"f").size == 2 * OBJ + 1 and backend.objects(b"f") == {0}
    assert backend.data(b"f") == sparse(2 * OBJ + 1, (0, b"x"))


async def test_a_new_file_truncated_shorter_before_upload_is_just_shorter(tmp_path) -> None:
    backend = MemoryBackend()
    data = random_bytes(2 * OBJ)
    async with mount(backend, tmp_path) as fs:
        fh = await new_file(fs, b"f", data)
        await fs.truncate(fs.ino_for(b"f"), 100, fh=fh)
        await fs.flush(fh)
        await fs.release(fh)
    assert backend.data(b"f") == data[:100] and backend.objects(b"f") == {0}
    assert backend.count("snapshot") == 0 and backend.count("delete") == 0


async def test_two_handles_on_a_new_file_upload_everything_at_the_last_close(tmp_path) -> None:
    backend = MemoryBackend()
    async with mount(backend, tmp_path) as fs:
        opened, attrs = await fs.create(b"f")
        other = await fs.open(attrs.ino, writing=True)
        await fs.write(opened.fh, 0, b"one ")
        await fs.flush(opened.fh)
        await fs.release(opened.fh)
        assert fs.file(b"f") is not None  # still open through the other handle
        await fs.write(other.fh, 4, b"two")
        await fs.flush(other.fh)
        await fs.release(other.fh)
        assert await read_name(fs, b"f") == b"one two"
    assert backend.data(b"f") == b"one two"


async def test_fsync_uploads_a_new_file(tmp_path) -> None:
    backend = MemoryBackend()
    data = random_bytes(MiB)
    async with mount(backend, tmp_path) as fs:
        fh = await new_file(fs, b"f", data)
        await fs.fsync(fh)
        assert backend.data(b"f") == data
        await fs.release(fh)


def leave_in_spool(tmp_path, name: bytes, data: bytes, created: bool = False, **kw) -> None:
    """A spool file as a crashed earlier run leaves it."""
    spool = Spool(spool_dir(tmp_path))
    spool.prepare()
    staged = spool.new(name)
    staged.pwrite(0, data)
    staged.created = created
    staged.replaces = kw.get("replaces", False)
    staged.save_meta()
    staged.close()


async def test_recovery_uploads_a_file_whose_vdi_was_never_made(tmp_path) -> None:
    backend = MemoryBackend()
    data = sparse(OBJ + 9, (OBJ, b"late data"))
    leave_in_spool(tmp_path, b"left", data)
    async with mount(backend, tmp_path) as fs:
        await fs.recover_spool()
        assert backend.data(b"left") == data
        assert await read_name(fs, b"left") == data
    assert backend.objects(b"left") == {1}
    assert spool_files(tmp_path) == []


async def test_recovery_finishes_a_vdi_the_spool_file_created(tmp_path) -> None:
    backend = MemoryBackend()
    data = random_bytes(2 * OBJ + 17)
    backend.put(b"half", data[:OBJ], size=OBJ)  # the upload behind the writer got this far
    leave_in_spool(tmp_path, b"half", data, created=True)
    async with mount(backend, tmp_path) as fs:
        await fs.recover_spool()
    assert backend.data(b"half") == data
    assert spool_files(tmp_path) == []


async def test_recovery_keeps_a_file_that_would_replace_other_data(tmp_path, caplog) -> None:
    backend = MemoryBackend()
    backend.put(b"theirs", b"someone else's data", block_size_shift=SMALL)
    backend.put(b"replaced", b"old data", block_size_shift=SMALL)
    leave_in_spool(tmp_path, b"theirs", b"ours")
    leave_in_spool(tmp_path, b"replaced", b"new", created=False, replaces=True)
    with caplog.at_level(logging.ERROR):
        async with mount(backend, tmp_path) as fs:
            await fs.recover_spool()
    assert backend.data(b"theirs") == b"someone else's data"
    assert backend.data(b"replaced") == b"old data"
    assert sorted(p.read_bytes() for p in spool_files(tmp_path)) == [b"new", b"ours"]
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) >= 2
