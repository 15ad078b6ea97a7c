"""A large new file is uploaded behind its writer: the VDI is created once enough complete
objects wait, grows with the file, and ends with the file's exact size and bytes. What the
writer does meanwhile (rewrites, zeros, a full spool, a failing or killed dog, SIGKILL of
sheepfs) never costs data, and never leaves a half-made VDI behind a failed copy."""

from __future__ import annotations

import errno
import os
import subprocess
import time

import pytest

from sheepfs.core.upload import WRITE_BEHIND_MIN
from tests.fakedog import control
from tests.mounting import mount_of, small_spool, wait_for

pytestmark = pytest.mark.timeout(120)
MiB = 1 << 20
OBJ = 4 * MiB


def uploading(m) -> bool:
    """Whether the daemon has uploaded objects of a file that is still open.

    Tests look at the daemon's log while a file is open, not at the store: starting a
    process (dog) closes the test's descriptors in the child, and each of those closes is a
    FUSE flush, which uploads the file as a close would.
    """
    return "uploaded while it is written" in m.log_text()


def test_upload_starts_before_close_and_ends_with_the_exact_file(mounted):
    store = mounted.store
    head = os.urandom(WRITE_BEHIND_MIN + OBJ)
    tail = os.urandom(3 * MiB + 5)
    with open(mounted.path / "img", "wb") as f:
        f.write(head)
        f.flush()
        wait_for(lambda: uploading(mounted), "the upload behind the writer")
        f.write(tail)
    assert store.vdis()[b"img"][0] == len(head) + len(tail)
    assert store.read(b"img") == head + tail
    assert list(mounted.spool.iterdir()) == []
    if store.kind == "dog":  # created with the size written so far, grown to the final one
        calls = control.calls(store.path)
        create = next(c for c in calls if c[:2] == ["vdi", "create"])
        assert WRITE_BEHIND_MIN <= int(create[-1]) <= len(head)
        assert ["vdi", "resize"] == next(c for c in calls if c[:2] == ["vdi", "resize"])[:2]


def test_small_files_are_still_created_at_close(mounted):
    data = os.urandom(WRITE_BEHIND_MIN - OBJ)
    with open(mounted.path / "small", "wb") as f:
        f.write(data)
        f.flush()
        time.sleep(0.5)
        assert not uploading(mounted)
        assert "vdi', 'create'" not in mounted.log_text()
    assert mounted.store.read(b"small") == data


def test_zero_objects_stay_unallocated_and_rewrites_land(mounted):
    """Zeros written behind the writer allocate nothing; objects rewritten after their
    upload (with data, or with zeros over data) end up with the final bytes."""
    store = mounted.store
    data = bytearray(WRITE_BEHIND_MIN + 2 * OBJ)
    data[OBJ : OBJ + 10] = b"0123456789"  # object 1 holds data, every other one is zero
    data[5 * OBJ : 6 * OBJ] = os.urandom(OBJ)  # and object 5
    with open(mounted.path / "thin", "wb") as f:
        f.write(data)
        f.flush()
        wait_for(lambda: uploading(mounted), "objects 1 and 5 to be uploaded")
        f.seek(5 * OBJ)
        f.write(bytes(OBJ))  # zeros over uploaded data
        data[5 * OBJ : 6 * OBJ] = bytes(OBJ)
        f.seek(2 * OBJ + 7)
        f.write(b"late")  # data into an object that was all zero
        data[2 * OBJ + 7 : 2 * OBJ + 11] = b"late"
    assert store.read(b"thin") == bytes(data)
    size, used = store.vdis()[b"thin"]
    assert size == len(data)
    assert used == 3 * OBJ  # objects 1, 2 and 5: nothing else was ever allocated


def test_spool_full_after_the_upload_began_leaves_no_vdi(any_store, tmp_path):
    with (
        small_spool(tmp_path, WRITE_BEHIND_MIN + 4 * OBJ) as spool,
        mount_of(any_store, tmp_path) as m,
    ):
        with pytest.raises(OSError) as e:
            with open(m.path / "huge", "wb") as f:
                for _ in range((WRITE_BEHIND_MIN + OBJ) // MiB):  # fits in the spool
                    f.write(os.urandom(MiB))
                f.flush()
                wait_for(lambda: uploading(m), "the upload behind the writer")
                for _ in range(4 * OBJ // MiB):  # does not
                    f.write(os.urandom(MiB))
        assert e.value.errno == errno.ENOSPC
        assert b"huge" not in any_store.vdis()  # gone when close() returns
        wait_for(lambda: not any(spool.iterdir()), "release to drop the torn copy")
        assert "partly uploaded" not in m.log_text()  # deleting it worked


def test_a_failing_upload_behind_the_writer_is_retried_at_close(dog_store, tmp_path):
    failure = {"match": ["vdi", "write"], "rc": 1, "times": 1,
               "stderr": "Failed to write object: I/O error\n"}  # fmt: skip
    control.add_fault(dog_store.path, failure)
    data = os.urandom(WRITE_BEHIND_MIN + 3 * OBJ + 1)
    with mount_of(dog_store, tmp_path) as m:
        with open(m.path / "retry", "wb") as f:
            f.write(data[: WRITE_BEHIND_MIN + OBJ])
            f.flush()
            wait_for(lambda: "while it is written failed" in m.log_text(), "the failed upload")
            f.write(data[WRITE_BEHIND_MIN + OBJ :])
        assert dog_store.read(b"retry") == data
        assert list(m.spool.iterdir()) == []


def test_sigkill_after_the_upload_began_then_remount_finishes_it(dog_store, tmp_path):
    data = os.urandom(WRITE_BEHIND_MIN + 2 * OBJ + 77)
    with mount_of(dog_store, tmp_path) as m:
        fd = os.open(m.path / "big", os.O_WRONLY | os.O_CREAT, 0o644)
        os.write(fd, data)
        wait_for(lambda: uploading(m), "the upload behind the writer")
        m.crash(fd)
    with mount_of(dog_store, tmp_path) as m2:
        wait_for(lambda: not any(m2.spool.iterdir()), "the spool to be uploaded")
        assert dog_store.read(b"big") == data
        assert "left by an earlier run" in m2.log_text()


def test_dog_calls_of_a_large_copy(dog_store, tmp_path):
    """Uploading behind the writer costs a few extra calls (resizes), not one per object."""
    data = os.urandom(4 * WRITE_BEHIND_MIN)
    src = tmp_path / "src"
    src.write_bytes(data)
    with mount_of(dog_store, tmp_path) as m:
        before = control.calls(dog_store.path)
        subprocess.run(["cp", str(src), str(m.path / "copy")], check=True)
        calls = control.calls(dog_store.path)[len(before) :]
    assert dog_store.read(b"copy") == data
    creates = [c for c in calls if c[:2] == ["vdi", "create"]]
    writes = [c for c in calls if c[:2] == ["vdi", "write"]]
    resizes = [c for c in calls if c[:2] == ["vdi", "resize"]]
    assert len(creates) == 1
    assert 1 <= len(writes) <= len(data) // WRITE_BEHIND_MIN + 1
    assert len(resizes) <= len(writes)


def test_shrunk_after_the_upload_began(mounted):
    """Sheepdog cannot shrink the VDI begun behind the writer: close replaces it."""
    data = os.urandom(WRITE_BEHIND_MIN + 2 * OBJ)
    keep = 10 * MiB + 3
    with open(mounted.path / "cut", "wb") as f:
        f.write(data)
        f.flush()
        wait_for(lambda: uploading(mounted), "the upload behind the writer")
        f.truncate(keep)
    assert mounted.store.vdis()[b"cut"][0] == keep
    assert mounted.store.read(b"cut") == data[:keep]
    assert mounted.store.snapshots() == []  # the old VDI's snapshot is dropped
