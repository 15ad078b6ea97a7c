"""A snapshot cut off by a fault (found by scripts/soak, dog backend): ``dog vdi snapshot``
writes our tag into the inode, makes it the snapshot, then the new working VDI; cut off in
between, the name has the snapshot only. A replace and a rename over a file record the old
data before they snapshot it, take an earlier try's snapshot for what it is, and a put-back
never deletes a file for a snapshot that was never made."""

from __future__ import annotations

import pytest

from sheepfs.core.filesystem import Filesystem
from sheepfs.errors import BackendError, Unavailable
from tests.core_helpers import SMALL, MiB, make_fs, open_name, random_bytes, write_all
from tests.memory_backend import MemoryBackend
from tests.test_soak_regressions import crashed, remounted

pytestmark = pytest.mark.timeout(60)


def cut_off_once(backend: MemoryBackend, monkeypatch, why: str) -> None:
    """The next snapshot is cut off as by a cluster restart: it lands, the working VDI is
    gone (only the snapshot is left), and the call fails with ``why``."""
    real_snapshot, real_delete = backend.snapshot, backend.delete

    async def cut_off(name: bytes, tag: str) -> None:
        await real_snapshot(name, tag)
        await real_delete(name)  # no working VDI left: only the snapshot
        monkeypatch.setattr(backend, "snapshot", real_snapshot)
        raise Unavailable("snapshot", name, why)

    monkeypatch.setattr(backend, "snapshot", cut_off)


async def test_a_replace_whose_snapshot_was_cut_off_leaving_only_it_goes_on(
    tmp_path, monkeypatch
) -> None:
    """``dog vdi snapshot`` cut off by a cluster restart under ``cp`` over a file: it had
    written our tag into the inode and made it the snapshot, but not the new working VDI,
    so the name had only the snapshot. Every later try took a new snapshot ("No VDI
    found") and SIGTERM exited 1; now the earlier try's snapshot is taken for what it is."""
    from tests.core_helpers import mount

    backend = MemoryBackend()
    old, new = random_bytes(2 * MiB), random_bytes(MiB)
    backend.put(b"v", old, block_size_shift=SMALL)
    cut_off_once(backend, monkeypatch, "failed to read a response")
    async with mount(backend, tmp_path) as fs:
        fh = await open_name(fs, b"v", writing=True, truncate=True)
        await write_all(fs, fh, new)
        with pytest.raises(Unavailable):
            await fs.flush(fh)
        await fs.flush(fh)  # the next try goes on from the snapshot that landed
        await fs.release(fh)
    assert fs.saved and backend.data(b"v") == new and backend.snapshot_tags(b"v") == []


async def test_a_crash_before_the_snapshot_of_a_replace_leaves_the_file_alone(
    tmp_path, monkeypatch
) -> None:
    """The record of old data set aside is written before the snapshot (which, cut off,
    may leave only itself): a crash between the two must not make the next mount delete
    the file to put back a snapshot that was never made."""
    backend = MemoryBackend()
    old = random_bytes(2 * MiB)
    backend.put(b"v", old, block_size_shift=SMALL)

    async def never(name: bytes, tag: str) -> None:
        raise Unavailable("snapshot", name, "the cluster went away")

    async def replace(fs: Filesystem) -> None:
        monkeypatch.setattr(backend, "snapshot", never)
        fh = await open_name(fs, b"v", writing=True, truncate=True)
        await write_all(fs, fh, random_bytes(MiB))
        with pytest.raises(Unavailable):
            await fs.flush(fh)
        assert list((tmp_path / "spool").glob("*.aside"))

    await crashed(make_fs(backend, tmp_path), replace)
    monkeypatch.undo()
    await remounted(backend, tmp_path)
    assert backend.data(b"v") == old and not list((tmp_path / "spool").glob("*.aside"))


async def test_sheep_backend_a_snapshot_cut_off_is_seen_by_the_next_look() -> None:
    """A snapshot whose reply came too late may have landed: the snapshot listing the
    backend keeps for a second must not hide it from the check that follows."""
    import trio

    from sheepfs.backends.sheep import SheepBackend
    from tests.fakesheep import fake_cluster

    async with fake_cluster(nodes=3) as fake:
        async with SheepBackend([fake.address(0)], timeout=0.4) as b:
            await b.create(b"v", MiB)
            assert await b.snapshots(b"v") == []  # listed: kept for a second
            fake.control.delay(0.6, op="NEW_VDI")
            with pytest.raises(BackendError):
                await b.snapshot(b"v", "t")
            await trio.sleep(0.4)  # it lands meanwhile
            fake.control.delay(0, op="NEW_VDI")
            assert [s.tag for s in await b.snapshots(b"v")] == [b"t"]


async def test_a_rename_whose_source_snapshot_was_cut_off_keeps_the_source(
    tmp_path, monkeypatch
) -> None:
    """Found by scripts/soak (dog backend): ``mv a b`` failed with EIO as the cluster
    stopped, and ``a`` was gone, because its snapshot had made the old inode the snapshot
    but no new working VDI. Now the source is recorded before its snapshot and, the
    snapshot failing, given its data back from it."""
    from tests.core_helpers import mount, wait_for

    backend = MemoryBackend()
    data = random_bytes(2 * MiB)
    backend.put(b"a", data, block_size_shift=SMALL)
    cut_off_once(backend, monkeypatch, "Failed to write to base VDI")
    async with mount(backend, tmp_path) as fs:
        with pytest.raises(Unavailable):
            await fs.rename(b"a", b"b")
        await wait_for(lambda: backend.info(b"a") is not None, "the source back")
        await wait_for(lambda: b"a" not in fs.catalog.restoring, "the put-back to end")
        assert (await fs.lookup(b"a")).size == len(data)
    assert backend.data(b"a") == data and backend.info(b"b") is None
    assert backend.snapshot_tags(b"a") == [] and not list((tmp_path / "spool").glob("*.aside"))


async def test_a_crash_during_the_source_snapshot_of_a_rename_loses_nothing(
    tmp_path, monkeypatch
) -> None:
    backend = MemoryBackend()
    data = random_bytes(2 * MiB)
    backend.put(b"a", data, block_size_shift=SMALL)
    real_snapshot, real_delete = backend.snapshot, backend.delete

    async def rename(fs: Filesystem) -> None:
        async def cut_off(name: bytes, tag: str) -> None:
            await real_snapshot(name, tag)
            await real_delete(name)
            raise BackendError("snapshot", name, "killed")

        monkeypatch.setattr(backend, "snapshot", cut_off)
        monkeypatch.setattr(fs.files.uploader.tasks, "start", lambda *a, **k: False)  # dies now
        with pytest.raises(BackendError):
            await fs.rename(b"a", b"b")
        assert list((tmp_path / "spool").glob("*.aside"))

    await crashed(make_fs(backend, tmp_path), rename)
    monkeypatch.undo()
    await remounted(backend, tmp_path)
    assert backend.data(b"a") == data and backend.info(b"b") is None
    assert not list((tmp_path / "spool").glob("*.aside"))
