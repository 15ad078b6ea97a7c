"""Faults and bad input: nothing lost, nothing hangs.

Cases that need a failing cluster use the fake dog's fault switches; the others run on both
the fake dog and the local backend.
"""

from __future__ import annotations

import errno
import os
import subprocess
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import run_threads
from tests.mounting import FAKEDOG, make_store, mount_of, small_spool, wait_for

pytestmark = pytest.mark.timeout(120)
MiB = 1 << 20
needs_fake_dog = pytest.mark.skipif(not (FAKEDOG / "dog").exists(), reason="no fake dog")


def test_sigkill_during_cp_then_remount_uploads_the_spool(any_store, tmp_path):
    data = os.urandom(9 * MiB)
    with mount_of(any_store, tmp_path) as m:
        fd = os.open(m.path / "big", os.O_WRONLY | os.O_CREAT, 0o644)
        os.write(fd, data)  # staged, not yet closed: nothing is in the store
        m.crash(fd)
    leftovers = sorted(p.name for p in m.spool.iterdir())
    assert len(leftovers) == 2, leftovers  # the data and the sidecar naming its VDI
    assert b"big" not in any_store.vdis()
    with mount_of(any_store, tmp_path) as m2:
        wait_for(
            lambda: b"big" in any_store.vdis() and not any(m2.spool.iterdir()),
            "the spool to be uploaded",
            30,
            interval=0.1,
            detail=m2.log_text,
        )
        assert any_store.read(b"big") == data
        assert "uploading" in m2.log_text() and "left by an earlier run" in m2.log_text()


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
    with small_spool(tmp_path, 2 * MiB), mount_of(any_store, tmp_path) as m:
        with pytest.raises(OSError) as e:
            with open(m.path / "huge", "wb") as f:
                for _ in range(8):
                    f.write(os.urandom(MiB))
        assert e.value.errno == errno.ENOSPC
        assert b"huge" not in any_store.vdis()
        (m.path / "small").write_bytes(b"still works")  # the mount keeps working


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

    run_threads([threading.Thread(target=writer, args=(i,)) for i in range(4)])
    want = b"".join(parts) + bytes(4 * MiB)
    assert mounted.store.read(b"disk") == want
    results: list[bytes] = []
    readers = [
        threading.Thread(target=lambda: results.append((mounted.path / "disk").read_bytes()))
        for _ in range(4)
    ]
    run_threads(readers)
    assert results == [want] * 4


def test_two_files_written_in_parallel(mounted):
    blobs = {name: os.urandom(6 * MiB) for name in ("p1", "p2")}

    def write(name: str) -> None:
        (mounted.path / name).write_bytes(blobs[name])

    run_threads([threading.Thread(target=write, args=(n,)) for n in blobs])
    for name, data in blobs.items():
        assert mounted.store.read(name.encode()) == data


# Any bytes a path component can hold ("." and ".." are the directory itself, not names).
names = st.binary(min_size=1, max_size=300).filter(
    lambda b: b"\0" not in b and b"/" not in b and b not in (b".", b"..")
)


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(name=names)
def test_arbitrary_names_never_crash_the_daemon(fast_mounted, name):
    names_never_crash(fast_mounted, name)


@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
@given(name=names)
def test_arbitrary_names_never_crash_the_daemon_on_a_real_cluster(real_mounted, name):
    """Fewer examples: each costs several real VDI operations. Many more names go through
    the core in-process (tests/test_core_names.py)."""
    names_never_crash(real_mounted, name)


def names_never_crash(mounted, name: bytes) -> None:
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
            refusals = (errno.ENOENT, errno.EINVAL, errno.ENAMETOOLONG, errno.EEXIST)
            if name == b".snapshots":  # the snapshots directory, not a file
                refusals += (errno.EISDIR, errno.EPERM)
            assert e.errno in refusals, e
    assert mounted.proc.poll() is None, mounted.log_text()[-2000:]
    assert os.path.ismount(mounted.path)


# -- a failing cluster (fake dog switches) -----------------------------------------------------


def set_reachable(store, up: bool) -> None:
    """Take the whole cluster away, or bring it back: the fake's switch, or a real stop
    (``dog cluster shutdown``) and start."""
    if store.cluster is not None:
        store.cluster.start() if up else store.cluster.stop()
    else:
        from tests.fakedog import control

        control.set_config(store.path, reachable=up)


def test_cluster_unreachable_while_mounted(dog_like_store, tmp_path):
    store = dog_like_store
    store.create(b"live", 8 * MiB, b"old")
    with mount_of(store, tmp_path, "--timeout", "5") as m:
        fd = os.open(m.path / "live", os.O_RDWR)
        set_reachable(store, False)
        os.pwrite(fd, b"dirty data", 100)
        start = time.monotonic()
        with pytest.raises(OSError) as e:
            os.fsync(fd)
        assert e.value.errno == errno.EIO
        with pytest.raises(OSError) as e:
            (m.path / "new").write_bytes(b"cannot go anywhere")
        assert e.value.errno == errno.EIO
        assert time.monotonic() - start < 10
        assert "Connection refused" in m.log_text()
        set_reachable(store, True)
        os.fsync(fd)  # the dirty data was kept and goes in now
        os.close(fd)
        assert store.read(b"live")[100:110] == b"dirty data"
        (m.path / "again").write_bytes(b"works again")
        assert store.read(b"again") == b"works again"
    assert m.proc.returncode == 0, m.log_text()[-3000:]


def test_a_hanging_call_does_not_block_other_files(dog_store, tmp_path):
    from tests.fakedog import control

    dog_store.create(b"stuck", MiB, b"s")
    dog_store.create(b"fine", MiB, b"f")
    with mount_of(dog_store, tmp_path, "--timeout", "4") as m:
        os.stat(m.path / "stuck")
        os.stat(m.path / "fine")
        control.add_fault(dog_store.path, {"match": ["vdi", "read"], "name": "stuck", "hang": True})
        errors: list[int] = []

        def read_stuck() -> None:
            try:
                (m.path / "stuck").read_bytes()
            except OSError as e:
                errors.append(e.errno)

        t = threading.Thread(target=read_stuck)
        t.start()
        time.sleep(0.5)
        start = time.monotonic()
        assert (m.path / "fine").read_bytes()[:1] == b"f"
        assert time.monotonic() - start < 2  # not queued behind the stuck call
        t.join(20)
        assert errors == [errno.EIO]
        pgrep = ["pgrep", "-f", f"{dog_store.dog} vdi read"]  # ours, not other dogs
        left = subprocess.run(pgrep, capture_output=True).stdout
        assert left == b"", left


def test_dog_killed_during_upload_then_unmount_finishes_it(dog_store, tmp_path):
    from tests.fakedog import control

    data = os.urandom(12 * MiB)
    control.add_fault(dog_store.path, {"match": ["vdi", "write"], "kill": True,
                                       "after_bytes": 4 * MiB, "times": 1})  # fmt: skip
    with mount_of(dog_store, tmp_path) as m:
        src = tmp_path / "src"
        src.write_bytes(data)
        r = subprocess.run(["cp", str(src), str(m.path / "big")], capture_output=True, text=True)
        assert r.returncode != 0 and "Input/output error" in r.stderr  # close() reported it
        spooled = [p for p in m.spool.iterdir() if p.suffix == ".data"]
        assert len(spooled) == 1 and spooled[0].read_bytes() == data
        assert f"kept in {spooled[0]}" in m.log_text()
        assert m.unmount() == 0  # the retry at unmount gets it in
    assert dog_store.read(b"big") == data
    assert list(m.spool.iterdir()) == []


def test_upload_that_keeps_failing_is_finished_by_the_next_mount(dog_store, tmp_path):
    from tests.fakedog import control

    data = os.urandom(6 * MiB)
    failure = {"match": ["vdi", "write"], "rc": 1, "stderr": "Failed to write object: I/O error\n"}
    control.add_fault(dog_store.path, failure)
    with mount_of(dog_store, tmp_path) as m:
        with pytest.raises(OSError) as e:
            with open(m.path / "img", "wb") as f:
                f.write(data)
        assert e.value.errno == errno.EIO
        code = m.unmount()
    assert code != 0  # data could not be saved: the exit code says so
    assert "SOME DATA COULD NOT BE SAVED" in m.log_text()
    control.clear_faults(dog_store.path)
    with mount_of(dog_store, tmp_path) as m2:
        wait_for(
            lambda: not any(m2.spool.iterdir()),
            "the spool to be uploaded",
            30,
            interval=0.1,
            detail=m2.log_text,
        )
        assert dog_store.read(b"img") == data


def test_sigterm_during_an_upload_waits_for_it(dog_store, tmp_path):
    from tests.fakedog import control

    data = os.urandom(5 * MiB)
    control.add_fault(dog_store.path, {"match": ["vdi", "write"], "sleep": 2, "times": 1})
    with mount_of(dog_store, tmp_path) as m:
        src = tmp_path / "src"
        src.write_bytes(data)
        cp = subprocess.Popen(["cp", str(src), str(m.path / "slow")])
        wait_for(
            lambda: control.count_calls(dog_store.path, "vdi", "write") != 0,
            "the first `dog vdi write`",
            10,
            interval=0.02,
        )
        assert m.terminate() == 0
        assert cp.wait(10) == 0
    assert dog_store.read(b"slow") == data


def test_cluster_full_gives_enospc_and_keeps_the_spool(dog_store, tmp_path):
    from tests.fakedog import control

    control.add_fault(dog_store.path, {"match": ["vdi", "write"], "nospace": True})
    with mount_of(dog_store, tmp_path) as m:
        with pytest.raises(OSError) as e:
            with open(m.path / "full", "wb") as f:
                f.write(b"z" * MiB)
        assert e.value.errno == errno.ENOSPC
        spooled = [p for p in m.spool.iterdir() if p.suffix == ".data"]
        assert len(spooled) == 1 and spooled[0].read_bytes() == b"z" * MiB
        assert "Server has no space for new objects" in m.log_text()
        control.clear_faults(dog_store.path)
        assert m.unmount() == 0
    assert dog_store.read(b"full") == b"z" * MiB


def test_names_reach_dog_as_argv_after_double_dash(dog_store, tmp_path):
    from tests.fakedog import control

    with mount_of(dog_store, tmp_path) as m:
        for name in ("-rf", "--help", "$(touch pwned)", "a;b", "'q'"):
            (m.path / name).write_bytes(b"x")
            assert dog_store.read(name.encode()) == b"x"
    assert not (tmp_path / "pwned").exists() and not os.path.exists("pwned")
    for argv in control.calls(dog_store.path):
        if argv[:2] in (["vdi", "create"], ["vdi", "write"]):
            assert "--" in argv and argv.index("--") < len(argv) - 1


def test_failed_replace_keeps_the_old_data_reachable(dog_store, tmp_path):
    """cp over an existing VDI, and the create of its replacement fails: nothing is gone."""
    from tests.fakedog import control

    old = os.urandom(5 * MiB)
    dog_store.create(b"disk", len(old), old)
    failure = {"rc": 1, "stderr": "Failed to create VDI disk: I/O error\n"}
    control.add_fault(dog_store.path, {"match": ["vdi", "create"], "name": "disk", **failure})
    with mount_of(dog_store, tmp_path) as m:
        new = os.urandom(1000)
        src = tmp_path / "src"
        src.write_bytes(new)
        r = subprocess.run(["cp", str(src), str(m.path / "disk")], capture_output=True)
        assert r.returncode != 0  # close() reported the failure
        snaps = dog_store.snapshots()
        assert len(snaps) == 1 and snaps[0][0] == b"disk"
        tag = snaps[0][1]
        assert dog_store.dog_run("vdi", "read", "-s", tag, "--", "disk").stdout == old
        assert f"snapshot {tag.decode()}" in m.log_text()
        spooled = [p for p in m.spool.iterdir() if p.suffix == ".data"]
        assert len(spooled) == 1 and spooled[0].read_bytes() == new
        control.clear_faults(dog_store.path)
        assert m.unmount() == 0  # the retry at unmount finishes the replace
    assert dog_store.read(b"disk") == new
    assert dog_store.snapshots() == []
