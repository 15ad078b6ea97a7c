"""The sheep backend and the core over it, in-process, against the fake sheep: the faults
a real sheep cannot be made to show on demand (a sheep that never answers, a reply cut
in the middle, an injected result, someone else's snapshot), and the rules a client must
keep (no request that would crash a sheep, one allocating write per object). Every test
ends with the fake's list of broken rules empty."""

from __future__ import annotations

import logging
import os
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from sheepfs.backends.base import Layout
from sheepfs.backends.sheep import SheepBackend
from sheepfs.core.filesystem import CoreConfig, Filesystem
from sheepfs.errors import NoSpace, Timeout, Unavailable
from sheepfs.spool import Spool
from tests.fakesheep import RunningFake, fake_cluster

pytestmark = pytest.mark.timeout(60)
MiB = 1 << 20


@asynccontextmanager
async def fake_and_core(
    tmp_path: Path, addresses: int = 1, timeout: float = 10, **config
) -> AsyncIterator[tuple[RunningFake, Filesystem]]:
    async with fake_cluster(nodes=3) as fake:
        fake.control.set_knob("strict_client", True)  # the checks dog itself would fail too
        backend = SheepBackend([fake.address(i) for i in range(addresses)], timeout=timeout)
        config.setdefault("cache_size", 16 * MiB)
        fs = Filesystem(backend, Spool(tmp_path / "spool"), CoreConfig(**config))
        async with fs.running():
            yield fake, fs
        assert fake.events == []  # no request a real sheep would crash on or lose data by


async def write_new(fs: Filesystem, name: bytes, data: bytes) -> None:
    opened, _ = await fs.create(name)
    for at in range(0, len(data), MiB):
        await fs.write(opened.fh, at, data[at : at + MiB])
    await fs.flush(opened.fh)
    await fs.release(opened.fh)


async def read_back(fs: Filesystem, name: bytes) -> bytes:
    attrs = await fs.lookup(name)
    opened = await fs.open(attrs.ino, writing=False)
    out = bytearray()
    while len(out) < attrs.size:
        out += await fs.read(opened.fh, len(out), MiB)
    await fs.release(opened.fh)
    return bytes(out)


def stored(fake: RunningFake, name: bytes, size: int) -> bytes:
    return fake.control.read_vdi(name.decode(), 0, size)


async def test_a_new_file_is_its_vdi_and_zero_objects_stay_holes(tmp_path):
    data = os.urandom(MiB) + bytes(8 * MiB) + os.urandom(3 * MiB + 7)
    async with fake_and_core(tmp_path) as (fake, fs):
        await write_new(fs, b"img", data)
        assert stored(fake, b"img", len(data)) == data
        assert await read_back(fs, b"img") == data
        counts = fake.control.op_counts()
        # objects 0 and 2-3 hold data; object 1 (all zeros) is never created
        assert counts.get("CREATE_AND_WRITE_OBJ") == 3


async def test_an_overwrite_in_place_and_a_copy_on_write_after_a_snapshot(tmp_path):
    old = os.urandom(6 * MiB)
    async with fake_and_core(tmp_path) as (fake, fs):
        await write_new(fs, b"v", old)
        await fs.files.backend.snapshot(b"v", "before")
        attrs = await fs.lookup(b"v")
        opened = await fs.open(attrs.ino, writing=True)
        await fs.write(opened.fh, 5 * MiB, b"new bytes")
        await fs.flush(opened.fh)
        await fs.release(opened.fh)
        new = old[: 5 * MiB] + b"new bytes" + old[5 * MiB + 9 :]
        assert stored(fake, b"v", len(old)) == new
        assert fake.control.read_vdi("v", 0, len(old), tag="before") == old


async def test_someone_elses_snapshot_is_survived_with_every_write_kept(tmp_path):
    """READONLY after an external snapshot: the backend moves to the new working vid,
    and writes before and after the snapshot are all there (P8)."""
    data = os.urandom(8 * MiB)
    async with fake_and_core(tmp_path) as (fake, fs):
        await write_new(fs, b"w", data)
        attrs = await fs.lookup(b"w")
        opened = await fs.open(attrs.ino, writing=True)
        await fs.write(opened.fh, 0, b"first")
        await fs.fsync(opened.fh)
        await fake.control.snapshot("w", "theirs")
        await fs.write(opened.fh, 4 * MiB, b"second")
        await fs.flush(opened.fh)
        await fs.release(opened.fh)
        want = b"first" + data[5 : 4 * MiB] + b"second" + data[4 * MiB + 6 :]
        assert stored(fake, b"w", len(data)) == want
        assert fake.control.read_vdi("w", 0, 5, tag="theirs") == b"first"


async def test_a_sheep_that_never_answers_ends_at_the_deadline(tmp_path):
    async with fake_and_core(tmp_path, timeout=1) as (fake, fs):
        opened, _ = await fs.create(b"h")
        await fs.write(opened.fh, 0, b"data")
        fake.control.hang(0)
        with trio.fail_after(10):
            with pytest.raises(Timeout):
                await fs.flush(opened.fh)
        fake.control.hang(0, on=False)
        await fs.flush(opened.fh)  # the next flush, on a new connection, saves it
        await fs.release(opened.fh)
        assert stored(fake, b"h", 4) == b"data"


async def test_with_two_addresses_the_next_sheep_takes_over(tmp_path, caplog):
    data = os.urandom(2 * MiB)
    async with fake_and_core(tmp_path, addresses=2, timeout=3) as (fake, fs):
        await write_new(fs, b"a", data)
        fake.control.node_down(0)
        await write_new(fs, b"b", data)
        assert stored(fake, b"b", len(data)) == data
    assert sum("stopped answering" in r.getMessage() for r in caplog.records) == 1


async def test_a_reply_cut_in_the_middle_is_read_again(tmp_path):
    data = os.urandom(4 * MiB)
    async with fake_and_core(tmp_path) as (fake, fs):
        await write_new(fs, b"r", data)
        backend = fs.files.backend
        fake.control.close_next_reply(0, where="payload", op="READ_OBJ")
        assert await backend.read(b"r", 0, len(data)) == data


async def test_an_injected_no_space_reaches_close_and_the_data_waits(tmp_path):
    data = os.urandom(MiB)
    async with fake_and_core(tmp_path) as (fake, fs):
        opened, _ = await fs.create(b"full")
        await fs.write(opened.fh, 0, data)
        fake.control.inject("NO_SPACE", op="CREATE_AND_WRITE_OBJ", count=1)
        with pytest.raises(NoSpace):
            await fs.flush(opened.fh)
        assert len(list((tmp_path / "spool").glob("*.data"))) == 1
        await fs.flush(opened.fh)
        await fs.release(opened.fh)
        assert stored(fake, b"full", len(data)) == data


async def test_many_writes_into_one_hole_make_one_create(tmp_path):
    """Rule 12: the pieces of one object never race to allocate it."""
    async with fake_and_core(tmp_path) as (fake, fs):
        backend = fs.files.backend
        await backend.create(b"hole", 8 * MiB)
        parts = [bytes([i]) * 4096 for i in range(64)]
        await backend.write_parts(b"hole", 0, parts)
        assert fake.control.op_counts().get("CREATE_AND_WRITE_OBJ") == 1
        assert await backend.read(b"hole", 0, 64 * 4096) == b"".join(parts)


async def test_layouts_are_kept_and_listing_matches(tmp_path):
    async with fake_and_core(tmp_path) as (fake, fs):
        backend = fs.files.backend
        await backend.create(b"ec", 16 * MiB, Layout(23, 2, 1))
        await backend.create(b"plain", 4 * MiB)
        listed = await backend.list()
        assert listed[b"ec"].layout == Layout(23, 2, 1) and listed[b"ec"].size == 16 * MiB
        assert listed[b"plain"].layout.block_size_shift == 22
        await backend.delete(b"ec")
        assert set(await backend.list()) == {b"plain"}


async def test_space_is_what_fits_not_the_raw_sum(tmp_path):
    """df: the nodes' raw space (STAT_SHEEP of each) divided by the 2 copies."""
    async with fake_and_core(tmp_path) as (fake, fs):
        stats = await fs.statfs()
        raw = sum(node.space for node in fake.state.nodes)
        assert stats.total == raw // 2 and 0 < stats.avail <= stats.total


async def test_writes_to_a_snapshot_vid_are_refused(tmp_path):
    """After our own snapshot the next write goes to the new working vid (not rule 29)."""
    async with fake_and_core(tmp_path) as (fake, fs):
        backend = fs.files.backend
        await backend.create(b"s", 4 * MiB)
        await backend.write(b"s", 0, b"x")  # caches the index
        await backend.snapshot(b"s", "t")
        await backend.write(b"s", 0, b"y")  # our own snapshot: the cache moved on
        assert await backend.read(b"s", 0, 1) == b"y"
        assert fake.control.read_vdi("s", 0, 1, tag="t") == b"x"


async def test_a_failure_among_many_pieces_is_raised_as_itself(tmp_path):
    """Pieces run at once; one failing is raised as its own error (with its errno), not as
    an exception group the FUSE side could only report as EIO."""
    async with fake_and_core(tmp_path) as (fake, fs):
        backend = fs.files.backend
        await backend.create(b"m", 16 * MiB)
        fake.control.inject("NO_SPACE", op="CREATE_AND_WRITE_OBJ", count=1)
        with pytest.raises(NoSpace):
            await backend.write(b"m", 0, os.urandom(12 * MiB))
        await backend.write(b"m", 0, b"fine")  # the next write has room again
        assert await backend.read(b"m", 0, 4) == b"fine"


async def test_a_cut_off_create_holds_back_the_next_write_to_its_object(tmp_path, caplog):
    """Rule 22: a create whose reply was lost may still run; no other write goes to that
    object for one more deadline (a late create would replace it), others go at once."""
    caplog.set_level(logging.INFO, logger="sheepfs")
    first, second, other = os.urandom(MiB), os.urandom(MiB), os.urandom(MiB)
    async with fake_and_core(tmp_path, timeout=1.0) as (fake, fs):
        backend = fs.files.backend
        await backend.create(b"q", 8 * MiB)
        fake.control.close_next_reply(0, where="header", op="CREATE_AND_WRITE_OBJ")
        with pytest.raises(Unavailable, match="may or may not have run"):
            await backend.write(b"q", 0, first)
        began = trio.current_time()
        await backend.write(b"q", 4 * MiB, other)  # another object: not held back
        assert trio.current_time() - began < 0.5
        await backend.write(b"q", 0, second)
        assert trio.current_time() - began >= 0.8
        assert stored(fake, b"q", MiB) == second
        assert fake.control.read_vdi("q", 4 * MiB, MiB) == other
    assert any("may still run (rule 22)" in r.getMessage() for r in caplog.records)


async def test_a_corrupt_hyper_volume_does_not_hide_the_others_from_a_listing(caplog):
    """Its index is read only for the space it uses: a corrupt one (root depth 3, rule
    35) is listed with nothing used and a warning, and every other VDI is still listed."""
    from tests.test_sheep_rules_data import BTREE_MAGIC, S, fake_and_backend, raw, set_root

    async with fake_and_backend() as (fake, backend):
        async with await raw(fake) as conn:
            vid = (await conn.new_vdi("bad", 8 * S, store=1)).vdi_id
            await set_root(conn, vid, struct.pack("<HHI", BTREE_MAGIC, 3, 5))
        await backend.create(b"fine", S)
        listed = await backend.list()
    assert set(listed) == {b"bad", b"fine"} and listed[b"bad"].used == 0
    assert any("shown with nothing used" in r.getMessage() for r in caplog.records)


async def test_an_attribute_read_that_fails_is_not_taken_for_none_kept(tmp_path):
    """Only NO_OBJ means "no times": any other failed read raises, so that nothing is
    cached for the name (the core shows the creation time and reads it again)."""
    async with fake_and_core(tmp_path) as (fake, fs):
        await write_new(fs, b"v", b"data")
        backend = fs.backend.inner
        assert await backend.get_attrs(b"sheepfs.times", [b"v"])
        fake.control.inject("EIO", op="READ_OBJ")
        with pytest.raises(Unavailable):
            await backend.get_attrs(b"sheepfs.times", [b"v"])
