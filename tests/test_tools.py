"""Tools that only understand paths (issue: dd, cp over, rsync, truncate, rename, qemu-img).

Every test runs through a real mount, on the fake dog and on the local backend, and checks
the bytes and size of the VDI itself, not just what the mount shows.
"""

from __future__ import annotations

import errno
import os
import subprocess

import pytest

from tests.helpers import rand, sha
from tests.mounting import wait_for

pytestmark = pytest.mark.timeout(120)
MiB = 1 << 20


def sh(*argv: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, check=True, capture_output=True, timeout=90, **kw)


def assert_vdi(m, name: bytes, data: bytes) -> None:
    """The VDI holds exactly ``data``: same size, same bytes."""
    vdis = m.store.vdis()
    assert name in vdis, f"{name!r} not in {sorted(vdis)}"
    assert vdis[name][0] == len(data)
    assert sha(m.store.read(name)) == sha(data)


def no_leftovers(m, *names: bytes) -> None:
    """Only ``names`` exist and no snapshot or temporary VDI was left behind."""
    assert sorted(m.store.vdis()) == sorted(names)
    assert m.store.snapshots() == []


def test_dd_new_file(mounted, tmp_path):
    src = tmp_path / "src"
    src.write_bytes(rand(5 * MiB + 123))
    sh("dd", f"if={src}", f"of={mounted.path / 'new'}", "bs=1M", "status=none")
    assert_vdi(mounted, b"new", src.read_bytes())


def test_dd_in_place_changes_only_the_range(mounted, tmp_path):
    old = rand(12 * MiB, seed=2)
    mounted.store.create(b"disk", len(old), old)
    patch = tmp_path / "patch"
    patch.write_bytes(rand(2 * MiB, seed=3))
    sh("dd", f"if={patch}", f"of={mounted.path / 'disk'}", "bs=1M", "seek=5",
       "conv=notrunc,fsync", "status=none")  # fmt: skip
    want = old[: 5 * MiB] + patch.read_bytes() + old[7 * MiB :]
    assert_vdi(mounted, b"disk", want)


def test_small_unaligned_overwrite_across_objects(mounted, tmp_path):
    old = rand(10 * MiB, seed=4)
    mounted.store.create(b"disk", len(old), old)
    patch = tmp_path / "patch"
    patch.write_bytes(b"ABCDEFGH")
    off = 4 * MiB - 4
    sh("dd", f"if={patch}", f"of={mounted.path / 'disk'}", "bs=1", f"seek={off}",
       "conv=notrunc", "status=none")  # fmt: skip
    want = old[:off] + b"ABCDEFGH" + old[off + 8 :]
    assert_vdi(mounted, b"disk", want)


@pytest.mark.parametrize("new_size", [3000, 9 * MiB + 7, 0])
def test_cp_over_existing_file(mounted, tmp_path, new_size):
    old = rand(6 * MiB, seed=5)
    mounted.store.create(b"disk", len(old), old)
    src = tmp_path / "src"
    src.write_bytes(rand(new_size, seed=6))
    sh("cp", str(src), str(mounted.path / "disk"))
    assert_vdi(mounted, b"disk", src.read_bytes())
    assert (mounted.path / "disk").read_bytes() == src.read_bytes()
    no_leftovers(mounted, b"disk")


def test_truncate_bigger_and_smaller(mounted):
    old = rand(5 * MiB, seed=7)
    mounted.store.create(b"disk", len(old), old)
    sh("truncate", "-s", str(9 * MiB), str(mounted.path / "disk"))
    assert_vdi(mounted, b"disk", old + bytes(4 * MiB))
    sh("truncate", "-s", "1000", str(mounted.path / "disk"))
    assert os.stat(mounted.path / "disk").st_size == 1000
    assert_vdi(mounted, b"disk", old[:1000])
    no_leftovers(mounted, b"disk")


def test_rename_staged_file_is_free(mounted):
    with open(mounted.path / "tmpname", "wb") as f:
        f.write(b"staged data")
        f.flush()
        os.rename(mounted.path / "tmpname", mounted.path / "final")
    assert_vdi(mounted, b"final", b"staged data")
    no_leftovers(mounted, b"final")


def test_rename_vdi_keeps_data_without_copy(mounted):
    data = rand(5 * MiB, seed=8)
    mounted.store.create(b"a", len(data), data)
    os.rename(mounted.path / "a", mounted.path / "b")
    assert not (mounted.path / "a").exists()
    assert (mounted.path / "b").read_bytes() == data
    assert_vdi(mounted, b"b", data)
    no_leftovers(mounted, b"b")


def test_rename_over_existing_replaces_it(mounted):
    mounted.store.create(b"a", 4096, b"A" * 4096)
    mounted.store.create(b"b", 8192, b"B" * 8192)
    os.rename(mounted.path / "a", mounted.path / "b")
    assert_vdi(mounted, b"b", b"A" * 4096)
    no_leftovers(mounted, b"b")
    # and the renamed (cloned) file is an ordinary, writable file
    with open(mounted.path / "b", "r+b") as f:
        f.write(b"xy")
    assert_vdi(mounted, b"b", b"xy" + b"A" * 4094)


@pytest.mark.parametrize("flags", [["-a"], ["-a", "--inplace"], ["-a", "--sparse"]])
def test_rsync(mounted, tmp_path, flags):
    src = tmp_path / "image.raw"
    data = bytearray(rand(9 * MiB, seed=9))
    data[2 * MiB : 6 * MiB] = bytes(4 * MiB)  # a hole for --sparse
    src.write_bytes(data)
    sh("rsync", *flags, str(src), str(mounted.path) + "/")
    assert_vdi(mounted, b"image.raw", bytes(data))
    # second run after changing 4 KiB: delta transfer onto the existing file
    data[7 * MiB : 7 * MiB + 4096] = rand(4096, seed=10)
    src.write_bytes(data)
    os.utime(src, (1, 1))  # a different mtime makes rsync look at the file
    sh("rsync", *flags, "--no-whole-file", str(src), str(mounted.path) + "/")
    assert_vdi(mounted, b"image.raw", bytes(data))
    no_leftovers(mounted, b"image.raw")


def test_chmod_chown_touch_succeed(mounted):
    mounted.store.create(b"disk", 4096, b"x" * 4096)
    p = mounted.path / "disk"
    os.chmod(p, 0o600)
    os.chown(p, 0, 0)
    os.utime(p, (1_000_000, 1_000_000))
    sh("touch", str(p))
    assert_vdi(mounted, b"disk", b"x" * 4096)


def test_qemu_img(mounted, tmp_path):
    src = tmp_path / "src.raw"
    src.write_bytes(rand(3 * MiB, seed=11))
    sh("qemu-img", "convert", "-f", "raw", "-O", "raw", str(src), str(mounted.path / "x"))
    assert_vdi(mounted, b"x", src.read_bytes())
    info = sh("qemu-img", "info", str(mounted.path / "x")).stdout.decode()
    assert "virtual size: 3 MiB" in info
    sh("qemu-img", "create", "-f", "qcow2", str(mounted.path / "y"), "64M")
    check = sh("qemu-img", "check", str(mounted.path / "y")).stdout.decode()
    assert "No errors were found" in check
    assert mounted.store.read(b"y")[:4] == b"QFI\xfb"


def test_fsync_returns_when_data_is_in_the_cluster(mounted):
    mounted.store.create(b"disk", 8 * MiB)
    fd = os.open(mounted.path / "disk", os.O_RDWR)
    try:
        os.pwrite(fd, b"durable", 5 * MiB)
        os.fsync(fd)
        # still open: only fsync can have put it there
        assert mounted.store.read(b"disk")[5 * MiB : 5 * MiB + 7] == b"durable"
    finally:
        os.close(fd)


def test_fsync_of_a_new_file_uploads_it(mounted):
    fd = os.open(mounted.path / "new", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"fresh")
        os.fsync(fd)
        assert_vdi(mounted, b"new", b"fresh")
    finally:
        os.close(fd)


@pytest.mark.parametrize(
    "op",
    [
        lambda p: os.mkdir(p / "dir"),
        lambda p: os.symlink("target", p / "link"),
        lambda p: os.link(p / "disk", p / "hard"),
        lambda p: os.mknod(p / "fifo", 0o600 | 0o010000),
    ],
    ids=["mkdir", "symlink", "link", "mknod"],
)
def test_unsupported_operations_fail_cleanly(mounted, op):
    mounted.store.create(b"disk", 4096, b"d" * 4096)
    with pytest.raises(OSError) as e:
        op(mounted.path)
    assert e.value.errno in (errno.EPERM, errno.ENOTSUP)
    assert (mounted.path / "disk").read_bytes() == b"d" * 4096  # still working
    (mounted.path / "after").write_bytes(b"ok")
    assert_vdi(mounted, b"after", b"ok")


def test_new_file_shrunk_after_its_upload(mounted):
    data = rand(9 * MiB, seed=12)
    fd = os.open(mounted.path / "grow-shrink", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)  # the VDI now exists with 9 MiB
        assert_vdi(mounted, b"grow-shrink", data)
        os.ftruncate(fd, 1000)
    finally:
        os.close(fd)
    assert_vdi(mounted, b"grow-shrink", data[:1000])
    no_leftovers(mounted, b"grow-shrink")


def test_dirty_data_is_written_back_without_fsync_within_seconds(mounted):
    """sync(1) cannot reach a FUSE daemon; dirty cached data still goes out by itself."""
    mounted.store.create(b"disk", 8 * MiB)
    fd = os.open(mounted.path / "disk", os.O_RDWR)
    try:
        os.pwrite(fd, b"eventually", 6 * MiB)
        wait_for(
            lambda: mounted.store.read(b"disk")[6 * MiB : 6 * MiB + 10] == b"eventually",
            "dirty data to be written back",
            15,
            interval=0.5,
        )
    finally:
        os.close(fd)
