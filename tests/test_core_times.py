"""Times that stick (core/times.py, timekeeper.py, filetimes.py): utimes and writes set
times that are kept with the VDI as an attribute, survive a remount, follow a rename, and
never come back from an earlier VDI of the same name (Sheepdog keeps attributes by name)."""

from __future__ import annotations

import time

import pytest
import trio

from sheepfs.backends.base import Hints
from sheepfs.core import timekeeper
from sheepfs.core.filetimes import snapshotted
from sheepfs.core.times import KEY, decode, encode
from sheepfs.errors import Unavailable
from tests.core_helpers import SMALL, MiB, mount, open_name, wait_for, write_all, write_file
from tests.memory_backend import MemoryBackend

#: As the sheep backend: attributes of a whole listing in one call, a cheap lookup, and
#: values stamped with their VDI's creation time in ns.
SHEEP = Hints(cheap_attrs=True, cheap_lookup=True)
T1 = 1_600_000_000_123_456_789  # a time in ns, with a part below the second
T2 = 1_500_000_000_987_654_321


def sheep_like() -> MemoryBackend:
    return MemoryBackend(SHEEP)


def dog_like() -> MemoryBackend:
    """As the dog backend: one name per call, lookups as dear as a listing, no stamps."""
    return MemoryBackend(stamps=False)


BACKENDS = [pytest.param(sheep_like, id="sheep-like"), pytest.param(dog_like, id="dog-like")]


def stored(backend: MemoryBackend, name: bytes) -> tuple[int, int, int] | None:
    """(ctime, mtime, atime) as stored for ``name``, or None."""
    raw = backend.attrs.get((name, KEY))
    got = decode(raw[0]) if raw else None
    return None if got is None else (got[0], got[1].mtime_ns, got[1].atime_ns)


async def touch(fs, name: bytes, atime: int | None, mtime: int | None) -> None:
    await fs.set_times(fs.ino_for(name), None, atime, mtime)


@pytest.mark.parametrize("make", BACKENDS)
async def test_utimes_of_a_closed_file_is_stored_and_survives_a_remount(tmp_path, make):
    backend = make()
    backend.put(b"img", b"data", block_size_shift=SMALL)
    created = backend.info(b"img").ctime
    async with mount(backend, tmp_path) as fs:
        assert (await fs.lookup(b"img")).mtime_ns == created * 10**9  # nothing kept yet
        await touch(fs, b"img", T2, T1)
        assert ((a := await fs.lookup(b"img")).mtime_ns, a.atime_ns) == (T1, T2)
    assert stored(backend, b"img") == (created, T1, T2)
    async with mount(backend, tmp_path) as fs:
        a = await fs.lookup(b"img")
        assert (a.mtime_ns, a.atime_ns, a.ctime) == (T1, T2, created)
        await touch(fs, b"img", None, T2)  # touch -m: the atime stays
    assert stored(backend, b"img") == (created, T2, T2)


async def test_the_epoch_itself_is_a_time_like_any_other(tmp_path):
    backend = sheep_like()
    backend.put(b"img", b"data", block_size_shift=SMALL)
    async with mount(backend, tmp_path) as fs:
        await touch(fs, b"img", 0, 0)  # touch -d @0
    async with mount(backend, tmp_path) as fs:
        a = await fs.lookup(b"img")
        assert (a.mtime_ns, a.atime_ns) == (0, 0) and a.ctime > 0


@pytest.mark.parametrize("make", BACKENDS)
async def test_a_new_file_gets_the_time_of_its_last_write_with_its_vdi(tmp_path, make):
    backend = make()
    async with mount(backend, tmp_path) as fs:
        before = time.time_ns()
        await write_file(fs, b"new", b"x" * 1000)
        after = time.time_ns()
        mtime = (await fs.lookup(b"new")).mtime_ns
        assert before <= mtime <= after
    ctime, kept, _ = stored(backend, b"new")
    assert kept == mtime and ctime == backend.info(b"new").ctime
    calls = [c[0] for c in backend.calls if c[1] == b"new" and c[0] != "get_attrs"]
    assert calls[calls.index("create") + 1 : calls.index("write")] in (
        ["set_attr"],
        ["lookup", "set_attr"],
    )  # set right after the VDI is created: no leftover of an earlier one shows


@pytest.mark.parametrize("make", BACKENDS)
async def test_cp_p_sets_times_on_the_open_file_before_its_vdi_exists(tmp_path, make):
    backend = make()
    async with mount(backend, tmp_path) as fs:
        opened, _ = await fs.create(b"copy")
        await write_all(fs, opened.fh, b"y" * (2 * MiB))
        await fs.set_times(fs.ino_for(b"copy"), opened.fh, T2, T1)  # futimens, then close
        assert backend.info(b"copy") is None  # still in the spool
        await fs.flush(opened.fh)
        await fs.release(opened.fh)
    assert stored(backend, b"copy")[1:] == (T1, T2)


@pytest.mark.parametrize("make", BACKENDS)
async def test_rsync_times_on_the_temporary_file_follow_the_rename(tmp_path, make):
    backend = make()
    backend.put(b"img", b"old", block_size_shift=SMALL)
    async with mount(backend, tmp_path) as fs:
        await write_file(fs, b".img.Xy12", b"new data")
        await touch(fs, b".img.Xy12", T1, T1)
        await fs.rename(b".img.Xy12", b"img")
        assert (await fs.lookup(b"img")).mtime_ns == T1
    assert (b".img.Xy12", KEY) not in backend.attrs  # dropped before its VDI went
    assert stored(backend, b"img")[0] == backend.info(b"img").ctime
    async with mount(backend, tmp_path) as fs:
        assert (await fs.lookup(b"img")).mtime_ns == T1
        assert [n for n, a in await fs.readdir()] == [b"img"]
        assert dict(await fs.readdir())[b"img"].mtime_ns == T1


@pytest.mark.parametrize("make", BACKENDS)
async def test_a_rename_keeps_the_time_of_a_vdi_with_none_kept(tmp_path, make):
    backend = make()
    backend.put(b"a", b"data", block_size_shift=SMALL)
    shown = backend.info(b"a").ctime * 10**9
    await trio.sleep(1.1)  # the clone is created a second later
    async with mount(backend, tmp_path) as fs:
        await fs.rename(b"a", b"b")
        assert (await fs.lookup(b"b")).mtime_ns == shown
    assert backend.info(b"b").ctime * 10**9 > shown and stored(backend, b"b")[1] == shown


@pytest.mark.parametrize("make", BACKENDS)
async def test_rm_then_cp_under_the_same_name_never_shows_the_old_time(tmp_path, make):
    backend = make()
    backend.put(b"img", b"one", block_size_shift=SMALL)
    async with mount(backend, tmp_path) as fs:
        await touch(fs, b"img", T2, T2)
        await fs.unlink(b"img")
        assert (b"img", KEY) not in backend.attrs
        await write_file(fs, b"img", b"two")
        assert (await fs.lookup(b"img")).mtime_ns > T1
    async with mount(backend, tmp_path) as fs:
        assert (await fs.lookup(b"img")).mtime_ns > T1
    drops = [i for i, c in enumerate(backend.calls) if c[:2] == ("drop_attr", b"img")]
    deletes = [i for i, c in enumerate(backend.calls) if c[:2] == ("delete", b"img")]
    assert drops and deletes and drops[0] < deletes[0]


async def test_a_leftover_of_a_vdi_deleted_by_others_in_the_same_second_is_not_trusted(tmp_path):
    """dog vdi delete leaves the attribute; a new VDI of the name, created within the same
    second, has the same ctime in seconds: the stamp in ns tells them apart."""
    backend = sheep_like()
    old = backend.put(b"img", b"one", block_size_shift=SMALL)
    backend.attrs[b"img", KEY] = (encode(old.ctime, _times(T1)), old.ctime_ns)
    del backend._vdis[b"img"]  # deleted by someone else, the attribute left
    new = backend.put(b"img", b"two", block_size_shift=SMALL)
    assert new.ctime == old.ctime and new.ctime_ns != old.ctime_ns
    async with mount(backend, tmp_path) as fs:
        assert (await fs.lookup(b"img")).mtime_ns == new.ctime * 10**9
        assert dict(await fs.readdir())[b"img"].mtime_ns == new.ctime * 10**9


@pytest.mark.parametrize("make", BACKENDS)
async def test_a_leftover_of_an_earlier_vdi_is_not_trusted(tmp_path, make):
    backend = make()
    backend.attrs[b"img", KEY] = (encode(1_000_000, _times(T1)), 0)  # set for another VDI
    backend.put(b"img", b"two", block_size_shift=SMALL)
    async with mount(backend, tmp_path) as fs:
        assert (await fs.lookup(b"img")).mtime_ns == backend.info(b"img").ctime * 10**9


@pytest.mark.parametrize("make", BACKENDS)
async def test_replacing_a_vdi_drops_its_times_and_binds_new_ones(tmp_path, make):
    backend = make()
    backend.put(b"v", b"z" * MiB, block_size_shift=SMALL)
    async with mount(backend, tmp_path) as fs:
        await touch(fs, b"v", T2, T2)
        fh = await open_name(fs, b"v", writing=True, truncate=True)
        await fs.write(fh, 0, b"short")
        start = len(backend.calls)
        await fs.flush(fh)
        await fs.release(fh)
        ops = [c[0] for c in backend.calls[start:] if c[0] != "get_attrs"]
        assert ops.index("drop_attr") < ops.index("delete") < ops.index("create")
        assert ops.index("create") < ops.index("set_attr") < ops.index("write")
        assert (await fs.lookup(b"v")).mtime_ns > T1
    assert stored(backend, b"v")[0] == backend.info(b"v").ctime


@pytest.mark.parametrize("make", BACKENDS)
async def test_a_write_after_utimes_moves_mtime_at_close(tmp_path, make):
    backend = make()
    backend.put(b"v", b"z" * MiB, block_size_shift=SMALL)
    async with mount(backend, tmp_path) as fs:
        await touch(fs, b"v", T2, T2)
        fh = await open_name(fs, b"v", writing=True)
        await fs.write(fh, 10, b"patch")
        await fs.flush(fh)
        await fs.release(fh)
    _, mtime, atime = stored(backend, b"v")
    assert mtime > T1 and atime == T2  # a write is not an access


@pytest.mark.parametrize("make", BACKENDS)
@pytest.mark.parametrize("keep", [True, False], ids=["snapshotted", "not told"])
async def test_a_snapshot_that_keeps_the_working_vdi_keeps_its_times(tmp_path, make, keep):
    """A snapshot gives the working VDI a new inode and creation time: the times must be
    stored again for it (filetimes.snapshotted), or they fall back to that time."""
    backend = make()
    backend.put(b"v", b"z", block_size_shift=SMALL)
    async with mount(backend, tmp_path) as fs:
        await touch(fs, b"v", T1, T1)
        before = await fs.catalog.get(b"v")
        await trio.sleep(1.1)  # the new inode is created a second later
        await fs.backend.snapshot(b"v", "s1")
        if keep:
            await snapshotted(fs.files.times, before)
        await trio.sleep(1.1)  # the listing TTL
        after = await fs.catalog.get(b"v")
        assert after.ctime > before.ctime
        want = T1 if keep else after.ctime * 10**9
        assert (await fs.lookup(b"v")).mtime_ns == want
        assert dict(await fs.readdir())[b"v"].mtime_ns == want


async def test_times_that_cannot_be_stored_fail_no_close(tmp_path, caplog):
    """The data is in: close() succeeds, one line says the times were not stored, and the
    last release tries again."""
    backend = sheep_like()
    async with mount(backend, tmp_path) as fs:
        opened, _ = await fs.create(b"new")
        await fs.write(opened.fh, 0, b"data")
        backend.fail("set_attr", times=2)  # right after the create, and at close
        await fs.flush(opened.fh)
        assert backend.data(b"new") == b"data" and stored(backend, b"new") is None
        assert "times could not be stored" in caplog.text
        await fs.release(opened.fh)
        assert stored(backend, b"new")[1] == (await fs.lookup(b"new")).mtime_ns


async def test_a_failed_delete_puts_the_times_back(tmp_path):
    backend = sheep_like()
    backend.put(b"v", b"z", block_size_shift=SMALL)
    async with mount(backend, tmp_path) as fs:
        await touch(fs, b"v", T1, T1)
        backend.fail("delete")
        with pytest.raises(Unavailable):
            await fs.unlink(b"v")
        assert backend.info(b"v") is not None and stored(backend, b"v")[1] == T1


async def test_times_that_cannot_be_read_show_the_creation_time(tmp_path):
    backend = sheep_like()
    backend.put(b"v", b"z", block_size_shift=SMALL)
    backend.attrs[b"v", KEY] = (encode(backend.info(b"v").ctime, _times(T1)), 0)
    async with mount(backend, tmp_path) as fs:
        backend.fail("get_attrs", times=None)
        assert (await fs.lookup(b"v")).mtime_ns == backend.info(b"v").ctime * 10**9
        assert dict(await fs.readdir())[b"v"].mtime_ns == backend.info(b"v").ctime * 10**9
        backend.heal()
        await trio.sleep(1.1)  # the listing TTL
        assert (await fs.lookup(b"v")).mtime_ns == T1


async def test_a_listing_reads_every_vdis_times_in_one_call(tmp_path):
    backend = sheep_like()
    for k in range(50):
        backend.put(b"v%02d" % k, b"z", block_size_shift=SMALL)
    async with mount(backend, tmp_path) as fs:
        await touch(fs, b"v07", T1, T1)
        start = backend.count("get_attrs")
        entries = dict(await fs.readdir())
        assert backend.count("get_attrs") - start == 1
        assert entries[b"v07"].mtime_ns == T1
        await fs.readdir()
        await fs.lookup(b"v08")
        assert backend.count("get_attrs") - start == 1  # within the TTL: nothing more


async def test_a_listing_does_not_wait_for_times_it_has_read_before(tmp_path):
    """Times read more than a TTL ago are read again behind the listing, not before it."""
    backend = sheep_like()
    for k in range(10):
        backend.put(b"v%02d" % k, b"z", block_size_shift=SMALL)
    backend.attrs[b"v04", KEY] = (encode(backend.info(b"v04").ctime, _times(T1)), 0)
    async with mount(backend, tmp_path) as fs:
        await fs.readdir()
        await touch(fs, b"v03", T1, T1)
        backend.attrs[b"v04", KEY] = (encode(backend.info(b"v04").ctime, _times(T2)), 0)
        await trio.sleep(1.1)  # the listing TTL
        start = backend.count("get_attrs")
        gate = backend.gate("get_attrs")
        with trio.fail_after(1):
            entries = dict(await fs.readdir())  # the refresh is held: the listing is not
        assert entries[b"v03"].mtime_ns == T1 and entries[b"v04"].mtime_ns == T1
        await gate.wait_held(1)
        assert backend.count("get_attrs") == start + 1  # all of them, in one call
        gate.proceed()
        await wait_for(lambda: fs.files.times.known(backend.info(b"v04")) == _times(T2), "v04")
        assert dict(await fs.readdir())[b"v04"].mtime_ns == T2  # changed by someone else


async def test_nothing_kept_is_read_again_only_after_a_minute(tmp_path, monkeypatch):
    """Each read of a missing attribute object costs the gateway sheep error lines in its
    log: VDIs with no times are not read again behind every listing (a lookup of one, the
    file someone looks at, still reads it again after the TTL)."""
    backend = sheep_like()
    for k in range(10):
        backend.put(b"v%02d" % k, b"z", block_size_shift=SMALL)
    async with mount(backend, tmp_path) as fs:
        await fs.readdir()
        start = backend.count("get_attrs")
        await trio.sleep(1.1)  # the listing TTL
        await fs.readdir()
        await trio.sleep(0.1)  # what would have been read behind the listing
        assert backend.count("get_attrs") == start
        await fs.lookup(b"v05")
        assert backend.count("get_attrs") == start + 1
        start += 1
        monkeypatch.setattr(timekeeper, "REFRESH_AFTER", 1.0)
        backend.attrs[b"v05", KEY] = (encode(backend.info(b"v05").ctime, _times(T1)), 0)
        await trio.sleep(1.1)
        await fs.readdir()
        await wait_for(lambda: fs.files.times.known(backend.info(b"v05")) is not None, "v05")
        assert backend.count("get_attrs") == start + 1


async def test_a_vdi_new_since_the_first_listing_is_read_behind_the_next(tmp_path):
    """After one listing's times are read, names the mount has not read (VDIs made by
    others since) are shown at once with their creation time and read behind; a lookup of
    one waits for that read."""
    backend = sheep_like()
    backend.put(b"old", b"z", block_size_shift=SMALL)
    async with mount(backend, tmp_path) as fs:
        await fs.readdir()
        for k in range(5):
            backend.put(b"new%d" % k, b"z", block_size_shift=SMALL)
        ctime = backend.info(b"new3").ctime
        backend.attrs[b"new3", KEY] = (encode(ctime, _times(T1)), 0)
        await trio.sleep(1.1)  # the listing TTL
        gate = backend.gate("get_attrs")
        with trio.fail_after(1):
            entries = dict(await fs.readdir())
        assert entries[b"new3"].mtime_ns == ctime * 10**9
        await gate.wait_held(1)
        async with trio.open_nursery() as nursery:
            looked: list = []
            nursery.start_soon(lambda: _append(looked, fs.lookup(b"new3")))
            await trio.sleep(0.1)
            assert not looked  # it waits for the read under way, and makes no other call
            assert backend.count("get_attrs") == 2
            gate.proceed()
        assert looked[0].mtime_ns == T1 and backend.count("get_attrs") == 2


async def test_the_mount_reads_the_first_listings_times_as_it_starts(tmp_path):
    backend = sheep_like()
    for k in range(5):
        backend.put(b"v%d" % k, b"z", block_size_shift=SMALL)
    backend.attrs[b"v2", KEY] = (encode(backend.info(b"v2").ctime, _times(T1)), 0)
    async with mount(backend, tmp_path) as fs:
        fs.warm_up()
        await wait_for(lambda: backend.count("get_attrs") == 1, "the read at mount")
        await wait_for(lambda: fs.files.times.known(backend.info(b"v2")) is not None, "v2")
        assert dict(await fs.readdir())[b"v2"].mtime_ns == T1
        assert backend.count("get_attrs") == 1


async def _append(into: list, call) -> None:
    into.append(await call)


async def test_a_listing_of_a_dog_like_backend_never_waits_for_times(tmp_path):
    backend = dog_like()
    for k in range(20):
        backend.put(b"v%02d" % k, b"z", block_size_shift=SMALL)
    ctime = backend.info(b"v03").ctime
    backend.attrs[b"v03", KEY] = (encode(ctime, _times(T1)), 0)
    async with mount(backend, tmp_path) as fs:
        gate = backend.gate("get_attrs")
        with trio.fail_after(2):
            entries = dict(await fs.readdir())  # reads are held: the listing goes on
        assert entries[b"v03"].mtime_ns == ctime * 10**9
        await gate.wait_held(2)
        assert backend.max_in_flight_ops["get_attrs"] <= 2  # a few at once, in the background
        gate.proceed()
        await wait_for(lambda: backend.count("get_attrs") >= 20, "the background reads")
        await wait_for(lambda: fs.files.times.known(backend.info(b"v03")) is not None, "v03")
        assert dict(await fs.readdir())[b"v03"].mtime_ns == T1
        calls = backend.count("get_attrs")
        await fs.lookup(b"v05")
        assert backend.count("get_attrs") == calls  # read already: no call


async def test_a_lookup_of_a_dog_like_backend_reads_that_one_name(tmp_path):
    backend = dog_like()
    backend.put(b"a", b"z", block_size_shift=SMALL)
    backend.put(b"b", b"z", block_size_shift=SMALL)
    backend.attrs[b"a", KEY] = (encode(backend.info(b"a").ctime, _times(T1)), 0)
    async with mount(backend, tmp_path) as fs:
        assert (await fs.lookup(b"a")).mtime_ns == T1
        assert [c[1] for c in backend.calls if c[0] == "get_attrs"] == [b"a"]


async def test_a_guessed_creation_time_is_bound_again_to_the_listed_one(tmp_path, monkeypatch):
    """Where the creation time cannot be read back cheaply (dog), the times of a new VDI
    are bound to the clock; a listing showing another time binds them again."""
    backend = dog_like()
    real = time.time
    monkeypatch.setattr("sheepfs.core.timekeeper.time.time", lambda: real() + 3)
    async with mount(backend, tmp_path) as fs:
        await write_file(fs, b"new", b"data")
        assert stored(backend, b"new")[0] == backend.info(b"new").ctime + 3
        await trio.sleep(1.1)
        await fs.readdir()
        await wait_for(lambda: stored(backend, b"new")[0] == backend.info(b"new").ctime,
                       "the times bound again")  # fmt: skip
        mtime = (await fs.lookup(b"new")).mtime_ns
    async with mount(backend, tmp_path) as fs:
        assert (await fs.lookup(b"new")).mtime_ns == mtime


async def test_a_file_open_while_its_guess_is_corrected_keeps_the_listed_time(
    tmp_path, monkeypatch
):
    backend = dog_like()
    real = time.time
    monkeypatch.setattr("sheepfs.core.timekeeper.time.time", lambda: real() + 3)
    async with mount(backend, tmp_path) as fs:
        opened, _ = await fs.create(b"new")
        await fs.write(opened.fh, 0, b"data")
        await fs.flush(opened.fh)  # created, its times bound to the guess
        await trio.sleep(1.1)
        await fs.readdir()
        listed = backend.info(b"new").ctime
        await wait_for(lambda: stored(backend, b"new")[0] == listed, "the times bound again")
        await fs.write(opened.fh, 4, b"more")
        await fs.flush(opened.fh)
        await fs.release(opened.fh)
        assert stored(backend, b"new")[0] == listed


async def test_unmount_binds_guessed_creation_times_that_were_never_listed(tmp_path, monkeypatch):
    backend = dog_like()
    real = time.time
    monkeypatch.setattr("sheepfs.core.timekeeper.time.time", lambda: real() + 3)
    async with mount(backend, tmp_path) as fs:
        await write_file(fs, b"new", b"data")
    assert stored(backend, b"new")[0] == backend.info(b"new").ctime


def _times(ns: int):
    from sheepfs.core.times import Times

    return Times(ns, ns)


@pytest.mark.parametrize("rename", [False, True], ids=["created", "renamed"])
async def test_our_own_record_of_a_guess_never_confirms_it(tmp_path, monkeypatch, rename):
    """The listing a readdir or lookup is served within its TTL holds our own record of a
    new VDI, with the guessed creation time: only a listing read from the backend may
    confirm the guess (else it stays bound to the guess, and the next mount shows the
    creation time: ``rsync -a`` copies the image again)."""
    backend = dog_like()
    real = time.time
    monkeypatch.setattr("sheepfs.core.timekeeper.time.time", lambda: real() + 3)
    async with mount(backend, tmp_path) as fs:
        await fs.readdir()  # the listing in use: read before the file is made
        await write_file(fs, b"new", b"data")
        if rename:
            await fs.rename(b"new", b"moved")
        name = b"moved" if rename else b"new"
        await touch(fs, name, T2, T1)
        assert (await fs.lookup(name)).mtime_ns == T1
        await fs.readdir()
    assert stored(backend, name)[0] == backend.info(name).ctime
    async with mount(backend, tmp_path) as fs:
        assert (await fs.lookup(name)).mtime_ns == T1
