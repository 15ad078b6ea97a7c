"""Faults and bad input: nothing lost, nothing hangs.

Cases that need a failing cluster use the fake dog's fault switches; the others run on both
the fake dog and the local backend.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.mounting import FAKEDOG, make_store, start_mount

pytestmark = pytest.mark.timeout(120)
MiB = 1 << 20
needs_fake_dog = pytest.mark.skipif(not (FAKEDOG / "dog").exists(), reason="no fake dog")


def test_sigkill_during_cp_then_remount_uploads_the_spool(any_store, tmp_path):
    data = os.urandom(9 * MiB)
    m = start_mount(any_store, tmp_path)
    try:
        fd = os.open(m.path / "big", os.O_WRONLY | os.O_CREAT, 0o644)
        os.write(fd, data)  # staged, not yet closed: nothing is in the store
        m.proc.send_signal(signal.SIGKILL)
        m.proc.wait(timeout=10)
        try:
            os.close(fd)
        except OSError:
            pass
    finally:
        m.cleanup()
    leftovers = sorted(p.name for p in m.spool.iterdir())
    assert len(leftovers) == 2, leftovers  # the data and the sidecar naming its VDI
    assert b"big" not in any_store.vdis()
    m2 = start_mount(any_store, tmp_path)
    try:
        deadline = time.monotonic() + 30
        while b"big" not in any_store.vdis() or any(m2.spool.iterdir()):
            assert time.monotonic() < deadline, m2.log_text()
            time.sleep(0.1)
        assert any_store.read(b"big") == data
        assert "uploading" in m2.log_text() and "left by an earlier run" in m2.log_text()
    finally:
        m2.cleanup()


def test_spool_must_be_private(tmp_path):
    store = make_store("local", tmp_path / "store")
    (tmp_path / "spool").mkdir(mode=0o755)
    os.chmod(tmp_path / "spool", 0o755)
    (tmp_path / "mnt").mkdir()
    r = subprocess.run(
        ["sheepfs", str(tmp_path / "mnt"), "--local", str(store.path), "-f",
         "--spool-dir", str(tmp_path / "spool")],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert r.returncode != 0
    assert "0700" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not os.path.ismount(tmp_path / "mnt")


def test_new_spool_is_0700(mounted):
    (mounted.path / "x").write_bytes(b"1")
    assert os.stat(mounted.spool).st_mode & 0o777 == 0o700


def test_spool_disk_full_gives_enospc_and_no_vdi(any_store, tmp_path):
    spool = tmp_path / "spool"
    spool.mkdir(mode=0o700)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2M,mode=0700", "tmpfs", str(spool)],
                   check=True)  # fmt: skip
    try:
        m = start_mount(any_store, tmp_path)
        try:
            with pytest.raises(OSError) as e:
                with open(m.path / "huge", "wb") as f:
                    for _ in range(8):
                        f.write(os.urandom(MiB))
            assert e.value.errno == errno.ENOSPC
            assert b"huge" not in any_store.vdis()
            (m.path / "small").write_bytes(b"still works")  # the mount keeps working
        finally:
            m.cleanup()
    finally:
        subprocess.run(["umount", "-l", str(spool)], check=False)


@pytest.mark.parametrize("size", [(4 << 40) + 1, 1 << 50])
def test_write_past_the_vdi_limit_is_efbig(mounted, size):
    fd = os.open(mounted.path / "f", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        with pytest.raises(OSError) as e:
            os.pwrite(fd, b"x", size)
        assert e.value.errno == errno.EFBIG
        with pytest.raises(OSError) as e:
            os.ftruncate(fd, size + 1)
        assert e.value.errno == errno.EFBIG
        os.pwrite(fd, b"end", (4 << 40) - 3)  # the last bytes of a 4 TiB VDI are fine
    finally:
        os.close(fd)
    assert os.stat(mounted.path / "f").st_size == 4 << 40


def test_four_writers_to_one_new_object_and_four_readers(mounted):
    """Concurrent first writes to one object lose data in Sheepdog unless serialized."""
    mounted.store.create(b"disk", 8 * MiB)
    parts = [os.urandom(MiB) for _ in range(4)]

    def writer(i: int) -> None:
        fd = os.open(mounted.path / "disk", os.O_WRONLY)
        try:
            os.pwrite(fd, parts[i], i * MiB)
            os.fsync(fd)
        finally:
            os.close(fd)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    want = b"".join(parts) + bytes(4 * MiB)
    assert mounted.store.read(b"disk") == want
    results: list[bytes] = []
    readers = [
        threading.Thread(target=lambda: results.append((mounted.path / "disk").read_bytes()))
        for _ in range(4)
    ]
    for t in readers:
        t.start()
    for t in readers:
        t.join(60)
    assert results == [want] * 4


def test_two_files_written_in_parallel(mounted):
    blobs = {name: os.urandom(6 * MiB) for name in ("p1", "p2")}

    def write(name: str) -> None:
        (mounted.path / name).write_bytes(blobs[name])

    threads = [threading.Thread(target=write, args=(n,)) for n in blobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for name, data in blobs.items():
        assert mounted.store.read(name.encode()) == data


names = st.binary(min_size=1, max_size=300).filter(lambda b: b"\0" not in b and b"/" not in b)


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(name=names)
def test_arbitrary_names_never_crash_the_daemon(mounted, name):
    path = os.path.join(os.fsencode(mounted.path), name)
    other = os.path.join(os.fsencode(mounted.path), b"renamed-" + name[:200])
    for op in (
        lambda: os.stat(path),
        lambda: open(path, "wb").close(),
        lambda: os.rename(path, other),
        lambda: os.unlink(other),
        lambda: os.unlink(path),
    ):
        try:
            op()
        except OSError as e:
            assert e.errno in (errno.ENOENT, errno.EINVAL, errno.ENAMETOOLONG, errno.EEXIST), e
    assert mounted.proc.poll() is None, mounted.log_text()[-2000:]
    assert os.path.ismount(mounted.path)
