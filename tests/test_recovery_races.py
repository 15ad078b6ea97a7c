"""Spool recovery runs while the next mount already serves: found by scripts/soak.

Recovery took stock of the spool only once it got to it, after putting old data back,
which costs backend calls: a file the new mount had staged meanwhile was then taken for
one an earlier run left and uploaded a second time, its spool file removed under its
writer (the soak saw a ``dd`` just made undone). And old data being put back replaced a
file a user of the new mount had written meanwhile. Names recovery has to decide about now
wait for it; everything else is served at once.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from sheepfs.core.filesystem import Filesystem
from sheepfs.errors import NotFound, Unavailable
from tests.core_helpers import (
    SMALL,
    MiB,
    make_fs,
    new_file,
    open_name,
    random_bytes,
    wait_for,
    write_all,
)
from tests.memory_backend import MemoryBackend

pytestmark = pytest.mark.timeout(60)


async def _replace_cut_short(backend: MemoryBackend, tmp_path: Path, name: bytes) -> None:
    """An earlier run killed during a ``cp`` over ``name``, after its old data was set
    aside and before its VDI was made again: the spool tells the next mount to put it back."""
    fs = make_fs(backend, tmp_path)
    with trio.CancelScope() as crash:
        async with fs.running():
            fh = await open_name(fs, name, writing=True, truncate=True)
            await write_all(fs, fh, random_bytes(MiB))
            backend.fail("create")
            with pytest.raises(Unavailable):
                await fs.flush(fh)
            crash.cancel()
            await trio.sleep(0)
    backend.heal()
    assert backend.info(name) is None and list((tmp_path / "spool").glob("*.aside"))


def _gate_lookups(backend: MemoryBackend, monkeypatch, name: bytes) -> trio.Event:
    """Lookups of ``name`` (put-back asks first) wait for the returned event."""
    go, real = trio.Event(), backend.lookup

    async def gated(asked: bytes):
        if asked == name:
            await go.wait()
        return await real(asked)

    monkeypatch.setattr(backend, "lookup", gated)
    return go


def _recovered(fs: Filesystem, tmp_path: Path) -> bool:
    return not list((tmp_path / "spool").glob("*.aside")) and not fs.catalog._held


async def test_a_file_written_while_its_old_data_waits_to_be_put_back_keeps_what_was_written(
    tmp_path, monkeypatch
) -> None:
    backend = MemoryBackend()
    old, mine = random_bytes(2 * MiB), random_bytes(MiB)
    backend.put(b"v", old, block_size_shift=SMALL)
    await _replace_cut_short(backend, tmp_path, b"v")
    go = _gate_lookups(backend, monkeypatch, b"v")
    fs = make_fs(backend, tmp_path)
    async with fs.running(), trio.open_nursery() as nursery:
        fs.start_recovery()
        written = trio.Event()

        async def user() -> None:  # `cp new mnt/v` just after the mount
            try:
                fh = await open_name(fs, b"v", writing=True, truncate=True)
            except NotFound:
                fh = await new_file(fs, b"v")
            await write_all(fs, fh, mine)
            await fs.flush(fh)
            await fs.release(fh)
            written.set()

        nursery.start_soon(user)
        await trio.sleep(0.2)
        assert not written.is_set()  # it waits for the old data to be back first
        go.set()
        with trio.fail_after(5):
            await written.wait()
        await wait_for(lambda: _recovered(fs, tmp_path), "recovery")
    assert backend.data(b"v") == mine  # written after the put-back, so it stays


async def test_a_file_the_new_mount_stages_is_not_taken_for_a_leftover(
    tmp_path, monkeypatch
) -> None:
    backend = MemoryBackend()
    backend.put(b"old", random_bytes(MiB), block_size_shift=SMALL)
    await _replace_cut_short(backend, tmp_path, b"old")
    go = _gate_lookups(backend, monkeypatch, b"old")
    first, then = random_bytes(2 * MiB), random_bytes(MiB)
    fs = make_fs(backend, tmp_path)
    async with fs.running():
        fs.start_recovery()
        fh = await new_file(fs, b"new", first)  # served at once: nothing held it
        go.set()
        await wait_for(lambda: _recovered(fs, tmp_path), "recovery")
        await trio.sleep(0.1)  # a recovery that took it would be uploading it now
        await write_all(fs, fh, then, offset=len(first))
        await fs.flush(fh)
        await fs.release(fh)
    assert fs.saved
    assert backend.data(b"new") == first + then
    [kept] = (tmp_path / "spool").glob("*.json")  # only the earlier run's copy of "old"
    assert b'"replaces": true' in kept.read_bytes()


async def test_while_a_failed_renames_target_waits_for_its_old_data_it_is_eio_not_enoent(
    tmp_path, monkeypatch
) -> None:
    """A rename over a file failed once the target's old data was set aside (the cluster
    went away): until it is put back, the target answered ENOENT, so ``rsync --inplace``
    or ``cp`` made a new file of that name, which the put-back then had to give way to.
    Meanwhile the name now answers EIO: it is neither there nor gone."""
    from tests.core_helpers import mount, read_name
    from tests.test_soak_regressions import rename_over_a_file

    backend, old = rename_over_a_file(monkeypatch)
    async with mount(backend, tmp_path) as fs:
        backend.fail("clone", times=None)  # the cluster stays away
        with pytest.raises(Unavailable):
            await fs.rename(b"src", b"dst")
        await trio.sleep(0.2)  # a few tries to put it back have failed
        for act in (fs.lookup(b"dst"), fs.create(b"dst"), fs.unlink(b"dst")):
            with pytest.raises(Unavailable):
                await act
        backend.heal()
        await wait_for(lambda: b"dst" not in fs.catalog.restoring, "the put-back")
        assert await read_name(fs, b"dst") == old
    assert backend.data(b"dst") == old


async def test_old_data_the_mount_cannot_put_back_at_once_is_put_back_while_it_serves(
    tmp_path,
) -> None:
    """A put-back that failed at mount (the cluster still answered NO_OBJ for the name) was
    never tried again by that mount, and the name answered as if it were simply gone: the
    old data came back only at the next mount (found by scripts/soak, sheep seed 94315129).
    Now it is tried again in the background, and the name answers EIO meanwhile."""
    backend = MemoryBackend()
    old = random_bytes(2 * MiB)
    backend.put(b"v", old, block_size_shift=SMALL)
    await _replace_cut_short(backend, tmp_path, b"v")
    fs = make_fs(backend, tmp_path)
    async with fs.running():
        backend.fail("clone", times=None)  # the put-back cannot make the VDI yet
        fs.start_recovery()
        await wait_for(lambda: not fs.catalog._held, "recovery to let the name go")
        with pytest.raises(Unavailable):
            await fs.lookup(b"v")
        backend.heal()
        await wait_for(lambda: _recovered(fs, tmp_path), "the put-back", timeout=10)
        await fs.lookup(b"v")
    assert backend.data(b"v") == old
