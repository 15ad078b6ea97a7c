"""The snapshot tree through the FUSE adapter, in-process: what the root lists, the VDI
named ``.snapshots``, a read-only mount, and snapshot reads straight from the backend."""

from __future__ import annotations

import errno
import os

import pyfuse3
import pytest

from sheepfs.fuse.adapter import Options, SheepFS
from tests.core_helpers import mount
from tests.memory_backend import MemoryBackend

ROOT = pyfuse3.ROOT_INODE


async def names_in(ops: SheepFS, inode: int, monkeypatch) -> list[bytes]:
    got: list[bytes] = []
    monkeypatch.setattr(pyfuse3, "readdir_reply", lambda token, name, e, i: got.append(name) or 1)
    fh = await ops.opendir(inode, None)
    await ops.readdir(fh, 0, None)
    await ops.releasedir(fh)
    return got


async def fuse_errno(call) -> int:
    with pytest.raises(pyfuse3.FUSEError) as e:
        await call
    return e.value.errno


async def test_the_root_lists_snapshots_only_when_told(tmp_path, monkeypatch) -> None:
    backend = MemoryBackend()
    backend.put(b"a", b"1")
    async with mount(backend, tmp_path) as fs:
        hidden, shown = SheepFS(fs, Options()), SheepFS(fs, Options(show_snapshots=True))
        assert await names_in(hidden, ROOT, monkeypatch) == [b"a"]
        assert await names_in(shown, ROOT, monkeypatch) == [b".snapshots", b"a"]
        top = await hidden.lookup(ROOT, b".snapshots")
        assert await names_in(hidden, top.st_ino, monkeypatch) == [b"a"]


async def test_a_vdi_named_dot_snapshots_stays_reachable(tmp_path, monkeypatch) -> None:
    backend = MemoryBackend()
    backend.put(b".snapshots", b"data")
    async with mount(backend, tmp_path) as fs:
        await backend.snapshot(b".snapshots", "s1")
        ops = SheepFS(fs, Options())
        assert await names_in(ops, ROOT, monkeypatch) == [b"%2Esnapshots"]
        entry = await ops.lookup(ROOT, b"%2Esnapshots")
        assert entry.st_size == 4
        top = await ops.lookup(ROOT, b".snapshots")
        assert top.st_ino != entry.st_ino
        its_dir = await ops.lookup(top.st_ino, b"%2Esnapshots")
        assert await names_in(ops, its_dir.st_ino, monkeypatch) == [b"s1"]


async def test_snapshot_files_read_from_the_backend(tmp_path) -> None:
    backend = MemoryBackend()
    backend.put(b"v", b"old bytes")
    async with mount(backend, tmp_path) as fs:
        await backend.snapshot(b"v", "before")
        await backend.write(b"v", 0, b"new bytes")
        ops = SheepFS(fs, Options())
        top = await ops.lookup(ROOT, b".snapshots")
        d = await ops.lookup(top.st_ino, b"v")
        snap = await ops.lookup(d.st_ino, b"before")
        assert snap.st_mode & 0o222 == 0  # read-only, whatever the umask
        info = await ops.open(snap.st_ino, os.O_RDONLY, None)
        assert info.keep_cache and not info.direct_io  # a snapshot never changes
        assert await ops.read(info.fh, 0, 100) == b"old bytes"
        assert await ops.read(info.fh, 9, 100) == b""
        await ops.release(info.fh)
        assert await fuse_errno(ops.open(snap.st_ino, os.O_WRONLY, None)) == errno.EROFS
        assert await fuse_errno(ops.lookup(d.st_ino, b"nosuch")) == errno.ENOENT


async def test_a_read_only_mount_takes_and_deletes_nothing(tmp_path) -> None:
    backend = MemoryBackend()
    backend.put(b"v", b"x")
    async with mount(backend, tmp_path, read_only=True) as fs:
        await backend.snapshot(b"v", "kept")
        ops = SheepFS(fs, Options())
        top = await ops.lookup(ROOT, b".snapshots")
        d = await ops.lookup(top.st_ino, b"v")
        new = ops.create(d.st_ino, b"t2", 0o644, os.O_WRONLY | os.O_CREAT, None)
        assert await fuse_errno(new) == errno.EROFS
        assert await fuse_errno(ops.unlink(d.st_ino, b"kept", None)) == errno.EROFS
        assert backend.snapshot_tags(b"v") == ["kept"]
        assert await fuse_errno(ops.create(top.st_ino, b"x", 0o644, 0, None)) == errno.EPERM


async def test_a_snapshot_holds_what_a_new_file_staged(tmp_path) -> None:
    """A file still being written (staged, no VDI yet) is uploaded before its snapshot."""
    backend = MemoryBackend()
    async with mount(backend, tmp_path) as fs:
        ops = SheepFS(fs, Options())
        info, entry = await ops.create(ROOT, b"new", 0o644, os.O_WRONLY | os.O_CREAT, None)
        await ops.write(info.fh, 0, b"staged data")
        top = await ops.lookup(ROOT, b".snapshots")
        d = await ops.lookup(top.st_ino, b"new")
        snap_info, snap = await ops.create(d.st_ino, b"t", 0o644, os.O_WRONLY, None)
        await ops.release(snap_info.fh)
        assert backend.snapshot_data(b"new", "t") == b"staged data"
        await ops.release(info.fh)


async def test_touching_a_snapshot_keeps_the_times_of_its_vdi(tmp_path) -> None:
    """The snapshot gives the working VDI a new inode and creation time; the times set on
    it before stay what it shows (an rsync must not see a change)."""
    backend = MemoryBackend()
    backend.put(b"v", b"data")
    async with mount(backend, tmp_path) as fs:
        ops = SheepFS(fs, Options())
        entry = await ops.lookup(ROOT, b"v")
        await fs.set_times(entry.st_ino, None, 10**18, 10**18)
        top = await ops.lookup(ROOT, b".snapshots")
        d = await ops.lookup(top.st_ino, b"v")
        info, _ = await ops.create(d.st_ino, b"t", 0o644, os.O_WRONLY, None)
        await ops.release(info.fh)
        fs.catalog.ttl = 0
        assert (await ops.getattr(entry.st_ino, None)).st_mtime_ns == 10**18
