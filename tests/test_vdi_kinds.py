"""Kinds of VDI a cluster holds besides plain ones, through a real mount, on the fake dog
and on a real cluster: snapshots, clones, other object sizes, erasure coding, hyper
volumes, and new files that stay empty."""

from __future__ import annotations

import errno
import os
import subprocess

import pytest

from sheepfs.backends.dog.listing import parse_vdi_list
from tests.helpers import rand
from tests.mounting import wait_for

pytestmark = pytest.mark.timeout(180)
MiB = 1 << 20
TiB = 1 << 40


@pytest.fixture
def store(dog_like_store):
    """The fake dog, then a real cluster (``mnt`` is a mount of it)."""
    return dog_like_store


def row(store, name: bytes):
    """The working VDI's row of ``dog vdi list -r``."""
    rows = parse_vdi_list(store.dog_run("vdi", "list", "-r").stdout)
    return next(r for r in rows if r.name == name and r.kind != "s")


def wait_listed(mnt, file: str) -> None:
    """Wait out the listing TTL for a VDI made behind the mount's back."""
    wait_for(lambda: file in os.listdir(mnt.path), f"{file} to be listed", 5, interval=0.1)


def dd_patch(path, data: bytes, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)
        os.fsync(f.fileno())


def test_empty_new_files_are_vdis_when_close_returns(store, mnt, tmp_path):
    subprocess.run(["touch", str(mnt.path / "t")], check=True)
    listed = parse_vdi_list(store.dog_run("vdi", "list", "-r", "t").stdout)
    assert [(r.name, r.size) for r in listed] == [(b"t", 0)]  # at once, not after release
    (tmp_path / "empty").write_bytes(b"")
    subprocess.run(["cp", str(tmp_path / "empty"), str(mnt.path / "c")], check=True)
    assert store.vdis()[b"c"] == (0, 0)
    # A redirect's first flush comes before its data: no wrong size, no second VDI.
    subprocess.run(["sh", "-c", f"printf hello > '{mnt.path / 'r'}'"], check=True)
    subprocess.run(["sh", "-c", f": > '{mnt.path / 'z'}'"], check=True)
    assert store.vdis()[b"r"][0] == 5 and store.read(b"r") == b"hello"
    assert store.vdis()[b"z"] == (0, 0)
    assert sorted(store.vdis()) == [b"c", b"r", b"t", b"z"]
    assert store.snapshots() == []


def test_a_redirect_of_many_objects_stays_thin(store, mnt):
    """The size-0 VDI a redirect's first flush creates is filled like any new one: objects
    that only get zeros are not written."""
    script = f"head -c {8 * MiB} /dev/zero; printf tail"
    subprocess.run(["sh", "-c", f"({script}) > '{mnt.path / 'thin'}'"], check=True)
    size, used = store.vdis()[b"thin"]
    assert size == 8 * MiB + 4 and used == 4 * MiB  # only the object holding "tail"
    assert store.read(b"thin")[-4:] == b"tail"


def test_snapshots_stay_untouched_while_the_working_vdi_changes(store, mnt, tmp_path):
    old = rand(9 * MiB, 1)
    store.create(b"v", len(old), old)
    store.dog_run("vdi", "snapshot", "-s", "before", "v")
    wait_listed(mnt, "v")
    assert os.listdir(mnt.path) == ["v"]  # the snapshot is not a file
    assert (mnt.path / "v").read_bytes() == old
    dd_patch(mnt.path / "v", b"new bytes", 4 * MiB - 3)
    want = old[: 4 * MiB - 3] + b"new bytes" + old[4 * MiB + 6 :]
    assert store.read(b"v") == want
    assert store.dog_run("vdi", "read", "-s", "before", "v").stdout == old
    # replacing the working VDI (cp over it) keeps the user's snapshot too
    (tmp_path / "small").write_bytes(b"small")
    subprocess.run(["cp", str(tmp_path / "small"), str(mnt.path / "v")], check=True)
    assert store.read(b"v") == b"small"
    assert store.snapshots() == [(b"v", b"before")]
    assert store.dog_run("vdi", "read", "-s", "before", "v").stdout == old


def test_a_clone_is_a_file_of_its_own(store, mnt):
    data = rand(6 * MiB, 2)
    store.create(b"base", len(data), data)
    store.dog_run("vdi", "snapshot", "-s", "gold", "base")
    store.dog_run("vdi", "clone", "-s", "gold", "base", "clone")
    wait_listed(mnt, "clone")
    assert (mnt.path / "clone").read_bytes() == data
    dd_patch(mnt.path / "clone", b"CLONE", 5 * MiB)
    assert store.read(b"clone") == data[: 5 * MiB] + b"CLONE" + data[5 * MiB + 5 :]
    assert store.read(b"base") == data
    assert store.dog_run("vdi", "read", "-s", "gold", "base").stdout == data


@pytest.mark.parametrize(
    "options, object_size, copies",
    [(["-z", "20"], 1 * MiB, "2"), (["-z", "23"], 8 * MiB, "2"), (["-c", "2:1"], 4 * MiB, "2:1")],
    ids=["z20", "z23", "ec2:1"],
)
def test_other_layouts_read_write_and_keep_their_layout(
    store, mnt, tmp_path, options, object_size, copies
):
    old = rand(3 * object_size + 123, 3)
    store.dog_run("vdi", "create", *options, "--", "lay", str(len(old)))
    store.dog_run("vdi", "write", "--", "lay", "0", str(len(old)), stdin=old)
    wait_listed(mnt, "lay")
    path = mnt.path / "lay"
    assert os.stat(path).st_blksize == object_size
    assert path.read_bytes() == old
    dd_patch(path, b"across", object_size - 3)  # across an object boundary
    want = old[: object_size - 3] + b"across" + old[object_size + 3 :]
    assert store.read(b"lay") == want
    os.truncate(path, 5 * object_size)  # grows: dog vdi resize
    assert store.read(b"lay") == want + bytes(5 * object_size - len(want))
    # Sheepdog cannot shrink: a shorter copy is a new VDI, with the old one's layout
    new = rand(object_size + 7, 4)
    (tmp_path / "new").write_bytes(new)
    subprocess.run(["cp", str(tmp_path / "new"), str(path)], check=True)
    assert store.read(b"lay") == new
    r = row(store, b"lay")
    assert (r.object_size, r.copies, r.size) == (object_size, copies, len(new))
    assert store.snapshots() == []


def test_a_hyper_volume_is_never_deleted_and_takes_writes(store, mnt):
    """dog vdi delete of a hyper volume wipes its B-tree root and the cluster goes down
    (the fake dog does the same); a write far inside it works, as with dog vdi write."""
    if store.kind == "sheep":
        pytest.skip("the sheep backend deletes hyper volumes safely: see the next test")
    store.dog_run("vdi", "create", "-y", "big", "5T")
    wait_listed(mnt, "big")
    with pytest.raises(OSError) as e:
        os.unlink(mnt.path / "big")
    assert e.value.errno == errno.EPERM
    assert "hyper volume" in mnt.log_text()
    assert b"big" in store.vdis()  # still there, and the cluster still answers
    offset = 4608 * (TiB >> 10)  # 4.5 TiB
    dd_patch(mnt.path / "big", b"far away", offset)
    assert store.dog_run("vdi", "read", "big", str(offset), "8").stdout == b"far away"
    with open(mnt.path / "big", "rb") as f:
        f.seek(offset - 2)
        assert f.read(12) == b"\0\0far away\0\0"
    assert os.stat(mnt.path / "big").st_size == 5 * TiB
    # replacing it would mean deleting it; renaming it means a snapshot, which Sheepdog
    # refuses for hyper volumes: both fail cleanly
    for op in (lambda: open(mnt.path / "big", "wb"), lambda: os.truncate(mnt.path / "big", 1),
               lambda: os.rename(mnt.path / "big", mnt.path / "other")):  # fmt: skip
        with pytest.raises(OSError) as e:
            op()
        assert e.value.errno == errno.EPERM
    assert sorted(store.vdis()) == [b"big"] and store.snapshots() == []
    assert store.dog_run("vdi", "read", "big", str(offset), "8").stdout == b"far away"


def test_a_hyper_volume_through_the_sheep_backend_is_read_only_and_deletable(store, mnt):
    """Over the wire a hyper volume's B-tree index is read (data dog wrote far inside it
    reads back), writes are refused with EROFS and a log line, and rm deletes it with
    DEL_VDI alone, which leaves every sheep running (the fixture checks)."""
    if store.kind != "sheep":
        pytest.skip("through dog a hyper volume is never deleted: see the test above")
    store.dog_run("vdi", "create", "-y", "big", "5T")
    offset = 4608 * (TiB >> 10)  # 4.5 TiB
    store.dog_run("vdi", "write", "big", str(offset), "8", stdin=b"far away")
    wait_listed(mnt, "big")
    assert os.stat(mnt.path / "big").st_size == 5 * TiB
    with open(mnt.path / "big", "rb") as f:
        f.seek(offset - 2)
        assert f.read(12) == b"\0\0far away\0\0"
    with pytest.raises(OSError) as e:
        dd_patch(mnt.path / "big", b"near", 0)
    assert e.value.errno == errno.EROFS
    assert "hyper volumes are read-only" in mnt.log_text()
    assert store.dog_run("vdi", "read", "big", "0", "4").stdout == bytes(4)
    os.unlink(mnt.path / "big")
    assert store.vdis() == {} and store.snapshots() == []
