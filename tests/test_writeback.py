"""Write-back of scattered small writes into an existing VDI, through a real mount on the
fake dog: a chunk with many dirty runs goes out whole (its clean parts read back first), in
one call with its dirty neighbours, instead of one ``dog vdi write`` per run; a chunk with
one or two runs still writes just those; writes racing with a write-back are never lost."""

from __future__ import annotations

import os
import random
import subprocess
import threading
import time

import pytest

from tests.fakedog import control
from tests.mounting import make_store, mount_of

pytestmark = pytest.mark.timeout(180)
MiB = 1 << 20
OBJ = 4 * MiB
SIZE = 32 * MiB  # 8 chunks


@pytest.fixture
def store(tmp_path):
    return make_store("dog", tmp_path / "store")


def calls_since(store, before: int, *prefix: str) -> list[tuple[int, int]]:
    """(offset, length) of the ``dog vdi read/write NAME OFF LEN`` calls after the first
    ``before`` calls."""
    new = control.calls(store.path)[before:]
    return [(int(c[-2]), int(c[-1])) for c in new if c[: len(prefix)] == list(prefix)]


def fsync_within(m, fd: int, before: int, seconds: float) -> None:
    """fsync ``fd``, failing (with the count of write calls so far) if it takes longer than
    ``seconds``: one call per dirty run takes minutes here. Before such a failure the daemon
    is killed, as closing ``fd`` (which every process started meanwhile does, at exec)
    would wait for that write-back too."""
    done, errors = threading.Event(), []

    def run() -> None:
        try:
            os.fsync(fd)
        except OSError as e:
            errors.append(e)
        done.set()

    threading.Thread(target=run, daemon=True).start()
    if not done.wait(seconds):
        n = len(calls_since(m.store, before, "vdi", "write"))
        m.crash(fd)
        pytest.fail(f"fsync still busy after {seconds:g} s and {n} `dog vdi write` calls")
    if errors:
        raise errors[0]


def scatter(fd: int, want: bytearray, rng: random.Random, count: int) -> None:
    """``count`` 4 KiB pwrites at random (unaligned) offsets, recorded in ``want``."""
    for _ in range(count):
        at = rng.randrange(0, len(want) - 4096)
        data = rng.randbytes(4096)
        os.pwrite(fd, data, at)
        want[at : at + 4096] = data


def test_thousands_of_scattered_writes_go_out_as_whole_chunks(store, tmp_path):
    rng = random.Random(20261201)
    old = rng.randbytes(SIZE)
    store.create(b"rw", SIZE, old)
    want = bytearray(old)
    with mount_of(store, tmp_path) as m:
        before = len(control.calls(store.path))
        fd = os.open(m.path / "rw", os.O_RDWR)
        scatter(fd, want, rng, 3000)
        fsync_within(m, fd, before, 60)
        writes = calls_since(store, before, "vdi", "write")
        reads = calls_since(store, before, "vdi", "read")
        os.close(fd)
    assert store.read(b"rw") == want
    assert 1 <= len(writes) <= SIZE // OBJ, writes
    # Whole chunks, and every chunk: each was dirtied many times over.
    assert all(off % OBJ == 0 and n % OBJ == 0 for off, n in writes), writes
    covered = {i for off, n in writes for i in range(off // OBJ, (off + n) // OBJ)}
    assert covered == set(range(SIZE // OBJ))
    # The clean parts were read back with few calls too (consecutive chunks in one).
    assert 1 <= len(reads) <= SIZE // OBJ, reads


def test_a_chunk_with_one_or_two_runs_writes_just_those(store, tmp_path):
    rng = random.Random(7)
    old = rng.randbytes(SIZE)
    store.create(b"few", SIZE, old)
    want = bytearray(old)
    patches = [
        (5 * MiB + 123, 100),  # chunk 1: one run
        (16 * MiB + 10, 50),  # chunk 4: two runs
        (17 * MiB, 4096),
        (24 * MiB + 1, 10),  # chunk 6: three runs, so it goes out whole
        (25 * MiB, 10),
        (27 * MiB + 7, 10),
    ]
    with mount_of(store, tmp_path) as m:
        before = len(control.calls(store.path))
        fd = os.open(m.path / "few", os.O_RDWR)
        for at, n in patches:
            data = rng.randbytes(n)
            os.pwrite(fd, data, at)
            want[at : at + n] = data
        os.fsync(fd)
        writes = calls_since(store, before, "vdi", "write")
        reads = calls_since(store, before, "vdi", "read")
        os.close(fd)
    assert writes == [*patches[:3], (24 * MiB, OBJ)]
    assert reads == [(24 * MiB, OBJ)]  # only the whole chunk's clean parts are read
    assert store.read(b"few") == want


def test_writes_racing_with_a_whole_chunk_write_back_are_kept(store, tmp_path):
    """A writer keeps writing while another handle's close writes chunks back whole (slow
    reads and writes, so the race covers both the read-back and the write)."""
    rng = random.Random(99)
    old = rng.randbytes(SIZE)
    store.create(b"race", SIZE, old)
    want = bytearray(old)
    control.set_config(store.path, read_bandwidth=16 * MiB, write_bandwidth=16 * MiB)
    state = {"flushing": False, "raced": 0, "done": 0}
    stop = threading.Event()

    def writer(fd: int) -> None:
        wrng = random.Random(100)
        while not stop.is_set():
            flushing = state["flushing"]
            scatter(fd, want, wrng, 1)
            state["done"] += 1
            state["raced"] += flushing and state["flushing"]

    with mount_of(store, tmp_path) as m:
        fd = os.open(m.path / "race", os.O_RDWR)
        t = threading.Thread(target=writer, args=(fd,), daemon=True)
        t.start()
        while state["done"] < 500:  # every chunk holds many runs by then
            time.sleep(0.01)
        other = os.open(m.path / "race", os.O_RDONLY)
        state["flushing"] = True
        start = time.monotonic()
        os.close(other)  # FUSE flush: writes the file back, whole chunks
        took = time.monotonic() - start
        state["flushing"] = False
        stop.set()
        t.join(30)
        control.set_config(store.path, read_bandwidth=0, write_bandwidth=0)
        os.fsync(fd)
        os.close(fd)
    assert took > 1 and state["raced"] > 100, (took, state)
    assert store.read(b"race") == want


def test_scattered_writes_past_the_end_grow_the_vdi_and_go_out_whole(store, tmp_path):
    """Chunks reaching past the VDI's end are read back as far as it goes (zeros after),
    and written whole only as far as the file now goes."""
    rng = random.Random(5)
    old = rng.randbytes(10 * MiB)
    store.create(b"grow", len(old), old)
    want = bytearray(old)
    with mount_of(store, tmp_path) as m:
        before = len(control.calls(store.path))
        fd = os.open(m.path / "grow", os.O_RDWR)
        for _ in range(400):  # 6 MiB .. 18 MiB + 5: chunks 1 to 4, the last one partial
            at = rng.randrange(6 * MiB, 18 * MiB + 5 - 4096)
            data = rng.randbytes(4096)
            os.pwrite(fd, data, at)
            want[len(want) : at] = bytes(max(0, at - len(want)))
            want[at : at + 4096] = data
        os.fsync(fd)
        writes = calls_since(store, before, "vdi", "write")
        os.close(fd)
    assert store.vdis()[b"grow"][0] == len(want)
    assert store.read(b"grow") == want
    assert writes == [(OBJ, len(want) - OBJ)], writes  # chunks 1-4 in one call, exactly


def test_a_file_growing_while_its_vdi_is_resized_loses_nothing(store, tmp_path):
    """Writes go on while a write-back resizes the VDI; dog cuts a write at the VDI's end
    without a word, so the VDI must cover every byte planned before it is written (qemu-img
    create lost its refcount table this way)."""
    store.create(b"grow", 0)
    control.add_fault(store.path, {"match": ["vdi", "resize"], "sleep": 1.0, "times": 1})
    with mount_of(store, tmp_path) as m:
        fd = os.open(m.path / "grow", os.O_RDWR)
        try:
            # A complete chunk: written behind the writer, after a resize to 64 KiB. (An
            # fsync would hold the kernel's inode lock and keep the next write out.)
            os.pwrite(fd, b"A" * 65536, 0)
            time.sleep(0.5)  # that resize is on its way
            os.pwrite(fd, b"B" * 65536, 65536)
            os.fsync(fd)
        finally:
            os.close(fd)
    assert store.vdis()[b"grow"][0] == 2 * 65536
    assert store.read(b"grow") == b"A" * 65536 + b"B" * 65536


def test_cp_of_a_sparse_file_over_an_empty_one_keeps_every_extent(dog_like_store, tmp_path):
    """Found by scripts/soak, the exact shape it copied: an empty file (``cp /dev/null``),
    then ``cp`` of a sparse file over it, which writes its two extents with a hole between
    and ends the file with ``ftruncate``. The second extent landed in a chunk write-behind
    was writing back, and was dropped: the VDI read zeros there."""
    rng = random.Random(302382327)
    src = tmp_path / "sparse.img"
    with open(src, "wb") as f:
        for at, length in ((3989504, 1646592), (5660672, 90112)):
            os.pwrite(f.fileno(), rng.randbytes(length), at)
        f.truncate(5787347)
    with mount_of(dog_like_store, tmp_path) as m:
        subprocess.run(["cp", "/dev/null", str(m.path / "e")], check=True)
        subprocess.run(["cp", "--", str(src), str(m.path / "e")], check=True)
        assert dog_like_store.read(b"e") == src.read_bytes()
