"""Replacing a VDI's data with a shorter file (Sheepdog cannot shrink) and renaming (it has
no rename): both are done with snapshots, keep the VDI's layout, leave no snapshot behind
when they succeed, and keep the old data reachable (and say where) when they fail."""

from __future__ import annotations

import pytest

from sheepfs.backends.base import Layout, VdiKind
from sheepfs.core.openfile import State
from sheepfs.errors import Exists, NotFound, NotPermitted, Unavailable
from tests.core_helpers import (
    SMALL,
    MiB,
    mount,
    mutations,
    new_file,
    open_name,
    ops,
    random_bytes,
    read_name,
    sparse,
    spool_files,
    write_all,
    write_file,
)
from tests.memory_backend import MemoryBackend

EC = Layout(block_size_shift=SMALL, copies=2, parity=1)


def snapshot_tags(backend: MemoryBackend, since: int = 0) -> list[str]:
    return [c[2] for c in backend.calls[since:] if c[0] == "snapshot"]


async def test_overwriting_with_o_trunc_replaces_the_vdi_with_its_layout(tmp_path) -> None:
    backend = MemoryBackend()
    backend.put(b"img", random_bytes(3 * MiB), layout=EC)
    new = random_bytes(MiB + MiB // 2)
    async with mount(backend, tmp_path) as fs:
        fh = await open_name(fs, b"img", writing=True, truncate=True)
        await write_all(fs, fh, new, piece=128 << 10)
        start = len(backend.calls)
        await fs.flush(fh)
        await fs.release(fh)
        assert await read_name(fs, b"img") == new
    assert backend.data(b"img") == new
    assert backend.info(b"img").layout == EC
    assert backend.snapshot_tags(b"img") == []
    done = ops(backend, start)
    assert done[:3] == ["snapshot", "delete", "create"] and done[-1] == "delete_snapshot"
    assert set(done[3:-1]) == {"write"}
    [tag] = snapshot_tags(backend, start)
    assert tag.startswith("sheepfs-old-")
    assert backend.overlapping_ec_writes == 0 and backend.overlapping_first_writes == 0


async def test_truncating_a_closed_vdi_shorter_replaces_it(tmp_path) -> None:
    backend = MemoryBackend()
    old = random_bytes(3 * MiB)
    backend.put(b"v", old, block_size_shift=SMALL)
    async with mount(backend, tmp_path) as fs:
        attrs = await fs.truncate(fs.ino_for(b"v"), 1000)
        assert attrs.size == 1000
        assert (await fs.lookup(b"v")).size == 1000
        assert await read_name(fs, b"v") == old[:1000]
    assert backend.data(b"v") == old[:1000]
    assert backend.info(b"v").block_size_shift == SMALL
    assert backend.snapshot_tags(b"v") == [] and spool_files(tmp_path) == []
    assert fs.saved


async def test_a_file_truncated_shorter_then_written_past_its_end(tmp_path) -> None:
    backend = MemoryBackend()
    old = random_bytes(3 * MiB)
    backend.put(b"v", old, block_size_shift=SMALL)
    async with mount(backend, tmp_path) as fs:
        fh = await open_name(fs, b"v", writing=True)
        await fs.truncate(fs.ino_for(b"v"), MiB, fh=fh)
        await fs.write(fh, MiB + 10, b"x")
        await fs.flush(fh)
        await fs.release(fh)
    assert backend.data(b"v") == old[:MiB] + bytes(10) + b"x"
    assert backend.objects(b"v") == {0, 1}


async def test_a_replace_that_fails_says_where_the_old_and_new_data_are(tmp_path) -> None:
    backend = MemoryBackend()
    old = random_bytes(2 * MiB)
    backend.put(b"v", old, block_size_shift=SMALL)
    new = random_bytes(MiB // 2)
    async with mount(backend, tmp_path) as fs:
        fh = await open_name(fs, b"v", writing=True, truncate=True)
        await write_all(fs, fh, new)
        backend.fail("create")  # after the old data is set aside and the VDI deleted
        with pytest.raises(Unavailable) as caught:
            await fs.flush(fh)
        [tag] = backend.snapshot_tags(b"v")
        assert backend.info(b"v") is None
        assert backend.snapshot_data(b"v", tag) == old  # the old data is still reachable
        message = str(caught.value)
        assert tag in message
        [kept] = spool_files(tmp_path)
        assert str(kept) in message and kept.read_bytes() == new
        await fs.flush(fh)
        await fs.release(fh)
    assert backend.data(b"v") == new
    assert backend.snapshot_tags(b"v") == []
    assert backend.info(b"v").block_size_shift == SMALL


async def test_a_replace_whose_write_fails_is_finished_by_the_next_flush(tmp_path) -> None:
    backend = MemoryBackend()
    old = random_bytes(2 * MiB)
    backend.put(b"v", old, block_size_shift=SMALL)
    new = random_bytes(MiB + 3)
    async with mount(backend, tmp_path) as fs:
        fh = await open_name(fs, b"v", writing=True, truncate=True)
        await write_all(fs, fh, new)
        backend.fail("write")
        with pytest.raises(Unavailable) as caught:
            await fs.flush(fh)
        [tag] = backend.snapshot_tags(b"v")
        assert tag in str(caught.value) and backend.snapshot_data(b"v", tag) == old
        await fs.flush(fh)
        await fs.release(fh)
    assert backend.data(b"v") == new and backend.snapshot_tags(b"v") == []


async def test_o_trunc_of_an_empty_vdi_needs_no_replace(tmp_path) -> None:
    backend = MemoryBackend()
    backend.put(b"e", b"", block_size_shift=SMALL)
    async with mount(backend, tmp_path) as fs:
        fh = await open_name(fs, b"e", writing=True, truncate=True)
        assert fs.file(b"e").state is State.LIVE
        await fs.write(fh, 0, b"filled")
        await fs.flush(fh)
        await fs.release(fh)
    assert backend.data(b"e") == b"filled"
    assert backend.count("snapshot") == 0 and backend.count("delete") == 0


async def test_a_hyper_volume_is_never_shrunk(tmp_path) -> None:
    backend = MemoryBackend()
    size = (MiB << 20) + MiB  # more than 2^20 objects of 1 MiB
    backend.put(b"h", b"hyper", block_size_shift=SMALL, size=size, hyper=True)
    async with mount(backend, tmp_path) as fs:
        with pytest.raises(NotPermitted):
            await fs.truncate(fs.ino_for(b"h"), 10)
        assert (await fs.lookup(b"h")).size == size
    assert backend.info(b"h").size == size and backend.data(b"h", 0, 5) == b"hyper"
    assert backend.count("delete") == 0


async def test_renaming_a_staged_file_is_free(tmp_path) -> None:
    backend = MemoryBackend()
    async with mount(backend, tmp_path) as fs:
        fh = await new_file(fs, b"a", b"staged data")
        start = len(backend.calls)
        await fs.rename(b"a", b"b")
        assert mutations(backend, start) == []
        assert fs.file(b"b") is not None and fs.file(b"a") is None
        with pytest.raises(NotFound):
            await fs.lookup(b"a")
        assert [name for name, _ in await fs.readdir()] == [b"b"]
        await fs.write(fh, 11, b", then more")
        await fs.flush(fh)
        await fs.release(fh)
    assert backend.names() == [b"b"]
    assert backend.data(b"b") == b"staged data, then more"


async def test_renaming_a_vdi_clones_it_under_the_new_name(tmp_path) -> None:
    backend = MemoryBackend()
    data = random_bytes(2 * MiB)
    backend.put(b"a", data, block_size_shift=SMALL)
    async with mount(backend, tmp_path) as fs:
        ino = (await fs.lookup(b"a")).ino
        start = len(backend.calls)
        await fs.rename(b"a", b"b")
        assert ops(backend, start) == ["snapshot", "clone", "delete", "delete_snapshot"]
        with pytest.raises(NotFound):
            await fs.lookup(b"a")
        attrs = await fs.lookup(b"b")
        assert attrs.size == len(data) and attrs.ino == ino  # the inode moves with it
        assert await read_name(fs, b"b") == data
    assert backend.names() == [b"b"] and backend.data(b"b") == data
    assert backend.info(b"b").kind is VdiKind.CLONE
    assert backend.snapshot_tags(b"a") == [] and backend.snapshot_tags(b"b") == []
    assert backend.count("write") == 0  # no data is copied


async def test_renaming_over_an_existing_vdi_drops_its_data(tmp_path) -> None:
    backend = MemoryBackend()
    data = random_bytes(MiB + 1)
    backend.put(b"src", data, block_size_shift=SMALL)
    backend.put(b"dst", b"old destination", block_size_shift=SMALL)
    async with mount(backend, tmp_path) as fs:
        start = len(backend.calls)
        await fs.rename(b"src", b"dst")
        snapshotted = [c[1] for c in backend.calls[start:] if c[0] == "snapshot"]
        assert sorted(snapshotted) == [b"dst", b"src"]
        assert [name for name, _ in await fs.readdir()] == [b"dst"]
        assert await read_name(fs, b"dst") == data
    assert backend.names() == [b"dst"] and backend.data(b"dst") == data
    assert backend.snapshot_tags(b"src") == [] and backend.snapshot_tags(b"dst") == []


async def test_rename_with_noreplace_refuses_an_existing_name(tmp_path) -> None:
    backend = MemoryBackend()
    backend.put(b"a", b"aaa")
    backend.put(b"b", b"bbb")
    async with mount(backend, tmp_path) as fs:
        with pytest.raises(Exists):
            await fs.rename(b"a", b"b", noreplace=True)
        fh = await new_file(fs, b"new", b"n")
        with pytest.raises(Exists):
            await fs.rename(b"new", b"a", noreplace=True)
        await fs.rename(b"a", b"c", noreplace=True)  # a free name is fine
        await fs.flush(fh)
        await fs.release(fh)
    assert {n: backend.data(n) for n in backend.names()} == {
        b"b": b"bbb",
        b"c": b"aaa",
        b"new": b"n",
    }


async def test_an_open_vdi_renamed_then_written_keeps_every_write(tmp_path) -> None:
    backend = MemoryBackend()
    old = random_bytes(2 * MiB)
    backend.put(b"a", old, block_size_shift=SMALL)
    async with mount(backend, tmp_path) as fs:
        fh = await open_name(fs, b"a", writing=True)
        await fs.write(fh, 0, b"before")
        await fs.rename(b"a", b"b")
        assert fs.file(b"b").state is State.LIVE
        await fs.write(fh, MiB, b"after")
        await fs.write(fh, 2 * MiB, b"grown")
        await fs.flush(fh)
        await fs.release(fh)
    assert backend.names() == [b"b"]
    writes = [(0, old), (0, b"before"), (MiB, b"after"), (2 * MiB, b"grown")]
    assert backend.data(b"b") == sparse(2 * MiB + 5, *writes)
    assert backend.snapshot_tags(b"a") == [] and backend.snapshot_tags(b"b") == []


async def test_an_uploaded_file_renamed_then_written(tmp_path) -> None:
    backend = MemoryBackend()
    data = random_bytes(MiB)
    async with mount(backend, tmp_path) as fs:
        fh = await new_file(fs, b"a", data)
        await fs.flush(fh)
        await fs.rename(b"a", b"b")
        await fs.write(fh, len(data), b"tail")
        await fs.flush(fh)
        await fs.release(fh)
    assert backend.names() == [b"b"] and backend.data(b"b") == data + b"tail"
    assert backend.snapshot_tags(b"a") == [] and backend.snapshot_tags(b"b") == []


async def test_a_staged_file_renamed_over_a_vdi_replaces_it(tmp_path) -> None:
    backend = MemoryBackend()
    backend.put(b"dst", random_bytes(3 * MiB), block_size_shift=SMALL)
    async with mount(backend, tmp_path) as fs:
        await write_file(fs, b"tmp", b"placeholder")  # editors: write a temp file, rename it
        fh = await new_file(fs, b"tmp2", b"new content")
        await fs.rename(b"tmp2", b"dst")
        assert (await fs.lookup(b"dst")).size == len(b"new content")
        await fs.flush(fh)
        await fs.release(fh)
        assert await read_name(fs, b"dst") == b"new content"
    assert backend.data(b"dst") == b"new content" and backend.snapshot_tags(b"dst") == []
    assert backend.names() == [b"dst", b"tmp"]


async def test_a_hyper_volume_is_never_renamed(tmp_path) -> None:
    backend = MemoryBackend()
    size = (MiB << 20) + MiB
    backend.put(b"h", b"hyper", block_size_shift=SMALL, size=size, hyper=True)
    async with mount(backend, tmp_path) as fs:
        with pytest.raises(NotPermitted):
            await fs.rename(b"h", b"g")
        assert (await fs.lookup(b"h")).size == size
        with pytest.raises(NotFound):
            await fs.lookup(b"g")
    assert backend.names() == [b"h"] and backend.data(b"h", 0, 5) == b"hyper"
