"""The core through a real mount on the fake dog: listing, attributes, names, round trips,
dog-call costs, start-up checks, failing and hanging dog calls, unmount and SIGTERM."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import threading
import time

import pytest

from tests.fakedog import control
from tests.helpers import run_threads, sha
from tests.mounting import ROOT, mount_of

pytestmark = pytest.mark.timeout(120)
MiB = 1 << 20


@pytest.fixture
def store(dog_like_store):
    """The fake dog, then a real cluster: the behaviour tests run on both (``mnt`` is a
    mount of it)."""
    return dog_like_store


@pytest.fixture
def fake_mnt(dog_store, tmp_path):
    """A mount of the fake dog alone: for call counts, fault switches and its config."""
    with mount_of(dog_store, tmp_path) as m:
        yield m


def test_ls_shows_working_vdis_and_clones_with_their_sizes(store, mnt):
    store.create(b"zero", 0)
    store.create(b"odd", 12345)
    store.create(b"ten", 10 * MiB)
    store.dog_run("vdi", "snapshot", "-s", "snap1", "ten")
    store.dog_run("vdi", "clone", "-s", "snap1", "ten", "cl")
    time.sleep(1.2)  # the listing TTL
    out = subprocess.run(["ls", "-l", str(mnt.path)], capture_output=True, text=True, check=True)
    sizes = {line.split()[-1]: int(line.split()[4]) for line in out.stdout.splitlines()[1:]}
    assert sizes == {"zero": 0, "odd": 12345, "ten": 10 * MiB, "cl": 10 * MiB}


def test_attributes(store, mnt):
    store.create(b"a", 10 * MiB, b"x" * 100, offset=5 * MiB)
    info = next(r for r in store.vdis().items() if r[0] == b"a")
    st = os.stat(mnt.path / "a")
    assert st.st_mode == 0o100644 and os.stat(mnt.path).st_mode == 0o40755
    assert (st.st_uid, st.st_gid) == (os.getuid(), os.getgid())
    assert st.st_size == 10 * MiB
    assert st.st_blksize == 4 * MiB
    assert st.st_blocks * 512 == info[1][1] == 4 * MiB  # the used field
    ctime = int(store.dog_run("vdi", "list", "-r", "a").stdout.split()[6])
    assert int(st.st_mtime) == ctime == int(st.st_ctime)


@pytest.mark.parametrize(
    "offset, count",
    [(0, 4096), (4 * MiB - 100, 300), (3, 5), (10 * MiB - 10, 100), (10 * MiB, 10)],
)
def test_dd_ranges_match_the_backing_data(store, mnt, offset, count):
    data = os.urandom(10 * MiB)
    store.create(b"r", len(data), data)
    got = subprocess.run(
        ["dd", f"if={mnt.path / 'r'}", "bs=1", f"skip={offset}", f"count={count}",
         "iflag=skip_bytes,count_bytes", "status=none"],
        capture_output=True, check=True,
    ).stdout  # fmt: skip
    assert got == data[offset : offset + count]


@pytest.mark.parametrize("size", [0, 1, 4 * MiB - 1, 4 * MiB, 4 * MiB + 1, 20 * MiB])
def test_cp_round_trip(store, mnt, tmp_path, size):
    src = tmp_path / "src"
    src.write_bytes(os.urandom(size))
    subprocess.run(["cp", str(src), str(mnt.path / "img")], check=True)
    subprocess.run(["cp", str(mnt.path / "img"), str(tmp_path / "back")], check=True)
    assert sha((tmp_path / "back").read_bytes()) == sha(src.read_bytes())
    assert store.vdis()[b"img"][0] == size  # when close() returns, an empty file too
    assert sha(store.read(b"img")) == sha(src.read_bytes())


def test_sparse_64m_file_allocates_one_object(store, mnt, tmp_path):
    with open(mnt.path / "sparse", "wb") as f:
        f.seek(30 * MiB)
        f.write(b"sixsix")
        f.truncate(64 * MiB)
    assert store.vdis()[b"sparse"] == (64 * MiB, 4 * MiB)
    src = tmp_path / "sp"
    with open(src, "wb") as f:
        f.seek(50 * MiB)
        f.write(b"abcdef")
        f.truncate(64 * MiB)
    subprocess.run(["cp", "--sparse=always", str(src), str(mnt.path / "sp2")], check=True)
    assert store.vdis()[b"sp2"] == (64 * MiB, 4 * MiB)
    assert store.read(b"sp2")[50 * MiB : 50 * MiB + 6] == b"abcdef"


def test_write_into_existing_vdi_and_past_its_end(store, mnt):
    old = os.urandom(10 * MiB)
    store.create(b"w", len(old), old)
    with open(mnt.path / "w", "r+b") as f:
        f.seek(4 * MiB - 3)
        f.write(b"across")
        f.seek(12 * MiB)
        f.write(b"grown")
    want = bytearray(old)
    want[4 * MiB - 3 : 4 * MiB + 3] = b"across"
    want += bytes(2 * MiB) + b"grown"
    assert store.vdis()[b"w"][0] == len(want)
    assert store.read(b"w") == bytes(want)
    if store.kind == "dog":
        assert control.count_calls(store.path, "vdi", "resize") == 1


def test_rm(store, mnt):
    store.create(b"gone", MiB)
    os.unlink(mnt.path / "gone")
    assert b"gone" not in store.vdis()
    with pytest.raises(FileNotFoundError):
        os.unlink(mnt.path / "gone")
    with pytest.raises(FileNotFoundError):
        os.unlink(mnt.path / "never")


@pytest.mark.parametrize(
    "vdi, file",
    [(b"has space", "has space"), ("uni-ü-名前".encode(), "uni-ü-名前"), (b"sl/ash", "sl%2Fash"),
     (b"-dash", "-dash"), (b"new\nline", "new\nline"), (b".", "%2E"), (b"..", "%2E%2E"),
     (b"50%", "50%"), (b"%25", "%2525"), (b".snapshots", "%2Esnapshots"),
     (b"y" * 255, "y" * 255)],
)  # fmt: skip
def test_names_round_trip(store, mnt, vdi, file):
    # made through the mount
    (mnt.path / file).write_bytes(b"via mount")
    assert store.read(vdi) == b"via mount"
    os.unlink(mnt.path / file)
    assert vdi not in store.vdis()
    # made with dog, seen through the mount once the listing TTL has passed
    store.create(vdi, 4096, b"via dog")
    time.sleep(1.1)
    assert file in os.listdir(mnt.path)
    assert (mnt.path / file).read_bytes()[:7] == b"via dog"


def test_name_over_255_bytes(mnt):
    with pytest.raises(OSError) as e:
        (mnt.path / ("z" * 256)).write_bytes(b"x")
    assert e.value.errno == errno.ENAMETOOLONG
    # the limit is the VDI name's: 256 bytes of file name holding escapes are fewer
    (mnt.path / ("z" * 250 + "%2F%2F")).write_bytes(b"x")
    assert list(mnt.store.vdis()) == [b"z" * 250 + b"//"]


def test_four_readers_of_one_file(store, mnt):
    data = os.urandom(20 * MiB)
    store.create(b"shared", len(data), data)
    results: list[str] = []

    def reader() -> None:
        results.append(sha((mnt.path / "shared").read_bytes()))

    run_threads([threading.Thread(target=reader) for _ in range(4)])
    assert results == [sha(data)] * 4


def test_a_vdi_changed_by_another_client_is_read_fresh_on_the_next_open(store, mnt):
    store.create(b"img", 4 * MiB, b"A" * 4096)
    assert (mnt.path / "img").read_bytes()[:4096] == b"A" * 4096  # now in the page cache
    store.dog_run("vdi", "write", "img", "0", "4096", stdin=b"B" * 4096)  # another client
    assert (mnt.path / "img").read_bytes()[:4096] == b"B" * 4096


def resident_bytes(path) -> int:
    """How much of ``path`` is in the page cache (fincore opens it once more)."""
    out = subprocess.run(
        ["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return int(out.stdout)


def test_a_sequential_reader_leaves_few_pages_behind_and_reads_back_right(store, mnt):
    """Pages behind a sequential reader are dropped (the next open would drop them
    anyway); what a reader goes back to is fetched again, not lost."""
    data = os.urandom(160 * MiB)
    store.create(b"big", len(data), data)
    with open(mnt.path / "big", "rb", buffering=0) as f:
        got = bytearray()
        while piece := f.read(MiB):
            got += piece
        assert got == data
        # While this handle is open, fincore's own open keeps the pages, so it sees them.
        assert resident_bytes(mnt.path / "big") <= 48 * MiB
        f.seek(0)
        assert f.read(8 * MiB) == data[: 8 * MiB]
        f.seek(100 * MiB)
        assert f.read(MiB) == data[100 * MiB : 101 * MiB]
    with open(mnt.path / "big", "rb") as a, open(mnt.path / "big", "rb") as b:
        # Two handles share the file's pages: what ``a`` drops behind it, ``b`` (still at
        # the start) reads again from the daemon.
        assert a.read(50 * MiB) == data[: 50 * MiB]
        assert b.read() == data


@pytest.mark.parametrize("reader_first", [True, False])
def test_a_reader_and_a_writer_of_one_file_see_the_same_bytes(store, mnt, reader_first):
    """Writers bypass the page cache; a reader open at the same time must not keep stale
    pages, whichever of the two opened the file first."""
    store.create(b"img", 8 * MiB, b"A" * 8192)
    path = mnt.path / "img"
    first, second = ("rb", "r+b") if reader_first else ("r+b", "rb")
    with open(path, first, buffering=0) as a, open(path, second, buffering=0) as b:
        reader, writer = (a, b) if reader_first else (b, a)
        assert reader.read(8192) == b"A" * 8192  # now cached, if the reader caches
        writer.seek(4096)
        writer.write(b"B" * 4096)
        reader.seek(0)
        assert reader.read(8192) == b"A" * 4096 + b"B" * 4096


def test_direct_io_mount_round_trip(store, tmp_path):
    data = os.urandom(9 * MiB + 5)
    with mount_of(store, tmp_path, "-o", "direct_io") as m:
        (m.path / "d").write_bytes(data)
        got = subprocess.run(
            ["dd", f"if={m.path / 'd'}", "bs=1M", "status=none"], capture_output=True, check=True
        ).stdout
        assert got == data
        subprocess.run(
            ["dd", "if=/dev/zero", f"of={m.path / 'd'}", "bs=4096", "count=1", "seek=1",
             "conv=notrunc", "status=none"], check=True,
        )  # fmt: skip
        expect = data[:4096] + bytes(4096) + data[8192:]
        assert (m.path / "d").read_bytes() == expect
    assert store.read(b"d") == expect


def test_data_closed_before_unmount_is_saved(store, tmp_path):
    with mount_of(store, tmp_path) as m:
        store.create(b"old", 8 * MiB)
        data = os.urandom(6 * MiB)
        (m.path / "new").write_bytes(data)
        with open(m.path / "old", "r+b") as f:
            f.write(b"patched")
        assert m.unmount() == 0
    assert store.read(b"new") == data
    assert store.read(b"old")[:7] == b"patched"
    assert "all data saved" in m.log_text()


def test_sigterm_saves_open_files_then_unmounts(store, tmp_path):
    with mount_of(store, tmp_path) as m:
        f = open(m.path / "open", "wb")  # noqa: SIM115 - left open across the SIGTERM on purpose
        try:
            f.write(b"pending data")
            f.flush()
            assert m.terminate() == 0
            assert store.read(b"open") == b"pending data"
            assert not os.path.ismount(m.path)
        finally:
            try:
                f.close()
            except OSError:
                pass


def test_stat_twice_within_the_ttl_costs_no_dog_call(dog_store, tmp_path):
    dog_store.create(b"s", MiB)
    with mount_of(dog_store, tmp_path, "--list-ttl", "30") as m:
        os.stat(m.path / "s")
        before = dog_store.dog_calls()
        os.stat(m.path / "s")
        os.stat(m.path / "s")
        assert dog_store.dog_calls() == before


def test_an_overwrite_larger_than_the_cache_goes_out_in_long_calls(dog_store, tmp_path):
    """A writer that outruns Sheepdog gets one long write after the other (half the cache
    each), not the leftovers of a full cache flushed in short calls."""
    data = os.urandom(96 * MiB)
    dog_store.create(b"ow", len(data), bytes(len(data)))
    # Slower than the writer, whether or not the zeros above allocated the objects.
    control.set_config(dog_store.path, write_bandwidth=100 * MiB, alloc_bandwidth=100 * MiB)
    with mount_of(dog_store, tmp_path, "--cache-size", "16M") as m:
        before = len(control.calls(dog_store.path))
        with open(m.path / "ow", "r+b", buffering=0) as f:
            for at in range(0, len(data), MiB):
                f.write(data[at : at + MiB])
            os.fsync(f.fileno())
        writes = [c for c in control.calls(dog_store.path)[before:] if c[:2] == ["vdi", "write"]]
    assert dog_store.read(b"ow") == data
    lengths = [int(c[-1]) for c in writes]
    assert sum(lengths) == len(data)
    # The first call goes out as soon as one chunk is complete; the last takes the rest.
    assert all(n == 8 * MiB for n in lengths[2:-1]), lengths


def test_ls_l_of_many_vdis_costs_one_list(dog_store, fake_mnt):
    for i in range(50):
        dog_store.create(f"v{i:02d}".encode(), MiB)
    time.sleep(1.2)
    before = control.calls(dog_store.path)
    out = subprocess.run(
        ["ls", "-l", str(fake_mnt.path)], capture_output=True, text=True, check=True
    )
    assert len(out.stdout.splitlines()) == 51
    new = control.calls(dog_store.path)[len(before) :]
    assert new == [["vdi", "list", "-a", "127.0.0.1", "-p", "7000", "-r", "--"]] or new == [
        ["vdi", "list", "-r", "-a", "127.0.0.1", "-p", "7000", "--"]
    ], new


def test_statfs_reports_usable_space(store, mnt):
    """df shows what fits: the nodes' raw totals divided by the copies of each byte."""
    total = store.dog_run("node", "info", "-r").stdout.splitlines()[-1].split()
    policy = store.dog_run("cluster", "info", "-v", "-r").stdout.splitlines()[1].split()
    assert policy[:2] == [b"plain", b"with"] and policy[3:] == [b"redundancy", b"policy"]
    copies = int(policy[2])
    st = os.statvfs(mnt.path)
    size, avail = int(total[1]) // copies, int(total[3]) // copies
    # A real cluster's disks change a little between the two reads (other writers on the
    # same disks move its free space, and its size counts what the sheep hold plus that):
    # within 0.1%, far less than one copy more or less would make.
    slack = max(1 << 20, size // 1000)
    assert abs(st.f_blocks * st.f_frsize - size) < slack
    assert abs(st.f_bavail * st.f_frsize - avail) < slack
    assert st.f_namemax == 255


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda s: None, "not an executable"),
        (lambda s: control.set_config(s, reachable=False), "Connection refused"),
        (lambda s: control.set_config(s, port=7001), "Connection refused"),
        (lambda s: control.set_config(s, formatted=False), "not formatted"),
    ],
    ids=["missing-binary", "unreachable", "wrong-port", "unformatted"],
)
def test_refuses_to_start_with_one_clear_line(dog_store, tmp_path, setup, message):
    setup(dog_store.path)
    (tmp_path / "fake_mnt").mkdir()
    dog = str(tmp_path / "no-such-dog") if message == "not an executable" else dog_store.dog
    r = subprocess.run(
        [sys.executable, "-m", "sheepfs", str(tmp_path / "fake_mnt"), "-f", "--backend", "dog",
         "--dog", dog,
         "--spool-dir", str(tmp_path / "spool")],
        capture_output=True, text=True, env=dog_store.env(), cwd=ROOT, timeout=30,
    )  # fmt: skip
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], r.stderr
    assert not os.path.ismount(tmp_path / "fake_mnt")


def test_failing_dog_read_gives_eio_and_the_mount_keeps_working(dog_store, fake_mnt):
    dog_store.create(b"bad", 8 * MiB, b"b" * 10)
    dog_store.create(b"good", MiB, b"g" * 10)
    control.add_fault(dog_store.path, {"match": ["vdi", "read"], "name": "bad", "rc": 1,
                                   "stderr": "Failed to read object 1: I/O error\n"})  # fmt: skip
    with pytest.raises(OSError) as e:
        (fake_mnt.path / "bad").read_bytes()
    assert e.value.errno == errno.EIO
    assert (fake_mnt.path / "good").read_bytes()[:10] == b"g" * 10
    assert "Failed to read object 1: I/O error" in fake_mnt.log_text()
    control.clear_faults(dog_store.path)
    assert (fake_mnt.path / "bad").read_bytes()[:10] == b"b" * 10


def test_hanging_dog_is_killed_at_the_timeout(dog_store, tmp_path):
    dog_store.create(b"h", MiB, b"h")
    with mount_of(dog_store, tmp_path, "--timeout", "2") as m:
        os.stat(m.path / "h")
        control.add_fault(dog_store.path, {"match": ["vdi", "read"], "hang": True})
        start = time.monotonic()
        with pytest.raises(OSError) as e:
            (m.path / "h").read_bytes()
        assert e.value.errno == errno.EIO
        assert time.monotonic() - start < 10
        left = subprocess.run(["pgrep", "-f", f"{dog_store.dog} vdi read"], capture_output=True)
        assert left.stdout == b"", "a dog process was left behind"
        assert "did not answer within 2 s" in m.log_text()


def test_collie_works_too(dog_store, tmp_path):
    dog_store.dog = control.collie_path()
    dog_store.create(b"old", MiB, b"collie")
    with mount_of(dog_store, tmp_path) as m:
        assert (m.path / "old").read_bytes()[:6] == b"collie"
        (m.path / "new").write_bytes(b"fresh")
        assert dog_store.read(b"new") == b"fresh"
