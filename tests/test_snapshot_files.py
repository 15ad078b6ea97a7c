"""Snapshots as read-only files under ``.snapshots/NAME/``, through real mounts: hidden from
the root's listing, read byte for byte as ``dog vdi read -s``, taken by ``touch`` (with what
was written just before), deleted by ``rm``, refused writes."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.mounting import Mount, Store, mount_of

pytestmark = pytest.mark.timeout(240)

MiB = 1 << 20
V = b"vm.img"
FIRST = bytes(range(256)) * 4096 * 2  # 2 MiB, every byte value
SECOND = b"written through the mount just before the snapshot" * 1000


def _snap_dir(m: Mount) -> Path:
    return m.path / ".snapshots" / os.fsdecode(V)


def _take_with_dog_or_mount(store: Store, base: Path) -> None:
    """Snapshot t1 of V taken outside this mount (dog), or through a first mount."""
    if store.speaks_dog:
        store.dog_run("vdi", "snapshot", "-s", "t1", "--", V)
        return
    with mount_of(store, base / "first") as m:
        (_snap_dir(m) / "t1").touch()


def _dog_read_snapshot(store: Store, tag: str) -> bytes:
    return store.dog_run("vdi", "read", "-s", tag, "--", V).stdout


def test_snapshots_read_take_and_delete_as_files(any_store, tmp_path) -> None:
    any_store.create(V, 4 * MiB, FIRST)
    _take_with_dog_or_mount(any_store, tmp_path)
    with mount_of(any_store, tmp_path) as m:
        assert ".snapshots" not in os.listdir(m.path)
        listed = subprocess.run(["ls", "-a", str(m.path)], capture_output=True, check=True)
        assert b".snapshots" not in listed.stdout.split()
        assert os.listdir(_snap_dir(m)) == ["t1"]
        t1 = (_snap_dir(m) / "t1").read_bytes()
        assert t1 == FIRST + bytes(2 * MiB)
        if any_store.speaks_dog:
            assert t1 == _dog_read_snapshot(any_store, "t1")
        assert (_snap_dir(m) / "t1").stat().st_size == 4 * MiB

        with open(m.path / os.fsdecode(V), "r+b") as f:  # not closed: still in the cache
            f.seek(MiB)
            f.write(SECOND)
            f.flush()
            (_snap_dir(m) / "t2").touch()
        assert (V, b"t2") in any_store.snapshots()
        t2 = (_snap_dir(m) / "t2").read_bytes()
        assert t2[MiB : MiB + len(SECOND)] == SECOND and t2[:MiB] == FIRST[:MiB]
        if any_store.speaks_dog:
            assert t2 == _dog_read_snapshot(any_store, "t2")
        assert sorted(os.listdir(_snap_dir(m))) == ["t1", "t2"]

        os.remove(_snap_dir(m) / "t2")
        assert (V, b"t2") not in any_store.snapshots()
        assert os.listdir(_snap_dir(m)) == ["t1"]
        assert (V, b"t1") in any_store.snapshots()

        shutil.copyfile(_snap_dir(m) / "t1", m.path / os.fsdecode(V))  # the README's restore
        assert (m.path / os.fsdecode(V)).read_bytes() == t1
        assert (_snap_dir(m) / "t1").read_bytes() == t1
        assert "Traceback" not in m.log_text()
    assert any_store.read(V) == t1


def _errno_of(call) -> int:
    with pytest.raises(OSError) as e:
        call()
    return e.value.errno


def test_what_a_snapshot_file_refuses(fast_mounted) -> None:
    m = fast_mounted
    m.store.create(V, MiB, b"x" * 100)
    (_snap_dir(m) / "keep").touch()
    snap = _snap_dir(m) / "keep"
    assert _errno_of(lambda: open(snap, "r+b")) == errno.EROFS
    assert _errno_of(lambda: os.truncate(snap, 0)) == errno.EROFS
    flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY
    assert _errno_of(lambda: os.open(snap, flags)) == errno.EEXIST
    assert _errno_of(lambda: (_snap_dir(m) / "12345").touch()) == errno.EINVAL
    assert _errno_of(lambda: os.rename(snap, _snap_dir(m) / "other")) == errno.EPERM
    assert _errno_of(lambda: (m.path / ".snapshots" / "nosuch").stat()) == errno.ENOENT
    assert _errno_of(lambda: os.rmdir(m.path / ".snapshots")) == errno.EPERM
    assert snap.read_bytes()[:100] == b"x" * 100
    assert os.listdir(m.path / ".snapshots") == [os.fsdecode(V)]


def test_a_snapshot_without_a_tag_is_named_by_its_id(dog_like_store, tmp_path) -> None:
    dog_like_store.create(V, MiB, b"untagged")
    dog_like_store.dog_run("vdi", "snapshot", "--", V)
    with mount_of(dog_like_store, tmp_path) as m:
        [name] = os.listdir(_snap_dir(m))
        assert name.isdigit()
        assert (_snap_dir(m) / name).read_bytes()[:8] == b"untagged"
        os.remove(_snap_dir(m) / name)
        assert os.listdir(_snap_dir(m)) == []
