"""The backends through the Backend interface in-process, without a mount: DogBackend on
the fake dog, LocalBackend on a directory, and SheepBackend (the wire protocol) on a
throwaway real cluster, each call and its errors."""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from sheepfs.backends.base import Backend, Layout, VdiKind
from sheepfs.backends.dog import DogBackend
from sheepfs.backends.local import LocalBackend
from sheepfs.backends.sheep import SheepBackend
from sheepfs.errors import (
    BackendError,
    Exists,
    InvalidArgument,
    NotFound,
    NotPermitted,
    Unavailable,
)
from tests.fakedog import control

pytestmark = pytest.mark.timeout(120)
MiB = 1 << 20


@pytest.fixture(params=["dog", "local", pytest.param("sheep", marks=pytest.mark.real)])
async def backend(request, tmp_path: Path, monkeypatch) -> AsyncIterator[Backend]:
    if request.param == "sheep":
        cluster = request.getfixturevalue("real_store").cluster
        b: Backend = SheepBackend([(cluster.address, cluster.port)], timeout=30)
    elif request.param == "dog":
        store = control.init_store(tmp_path / "store")
        monkeypatch.setenv("SHEEPDOG_FAKE_STORE", str(store))
        monkeypatch.setenv(
            "SHEEPDOG_FAKE_PYTHON", os.environ.get("SHEEPDOG_FAKE_PYTHON", sys.executable)
        )
        b = DogBackend(control.dog_path(), timeout=30)
    else:
        (tmp_path / "local").mkdir()
        b = LocalBackend(tmp_path / "local")
    async with b:
        yield b


def pattern(n: int, seed: int = 0) -> bytes:
    return bytes((i * 7 + seed) % 251 for i in range(n))


async def test_metadata_round_trip(backend: Backend) -> None:
    dog = isinstance(backend, DogBackend | SheepBackend)  # a cluster: layouts are kept
    await backend.create(b"v", 8 * MiB, Layout(block_size_shift=23, copies=2, parity=1))
    info = await backend.lookup(b"v")
    assert info is not None and info.name == b"v" and info.size == 8 * MiB
    assert info.kind is VdiKind.WORKING and info.is_file
    if dog:
        assert info.layout == Layout(23, 2, 1) and info.object_size == 8 * MiB
    else:
        assert info.layout == Layout(copies=1)
    assert (await backend.list()) == {b"v": info}

    await backend.resize(b"v", 16 * MiB)
    assert (await backend.lookup(b"v")).size == 16 * MiB
    with pytest.raises(InvalidArgument):
        await backend.resize(b"v", MiB)

    stats = await backend.statfs()
    assert stats.total > 0 and 0 <= stats.avail <= stats.total


async def test_data_round_trip(backend: Backend) -> None:
    await backend.create(b"d", 12 * MiB)
    head, body = pattern(1000, 1), bytearray(pattern(5 * MiB, 2))
    await backend.write_parts(b"d", 3 * MiB, [head, body, memoryview(b"tail")])
    whole = head + body + b"tail"
    assert await backend.read(b"d", 3 * MiB, len(whole)) == whole
    await backend.write(b"d", 0, b"start")
    assert await backend.read(b"d", 0, 5) == b"start"

    buf = bytearray(2 * MiB)
    assert await backend.read_into(b"d", 3 * MiB, memoryview(buf)) == len(buf)
    assert bytes(buf) == whole[: len(buf)]
    assert await backend.read(b"d", 12 * MiB - 10, 100) == bytes(10)  # short at the end

    got = bytearray()
    async with backend.read_stream(b"d", 3 * MiB, len(whole), piece_size=MiB) as pieces:
        async for piece in pieces:
            assert len(piece) <= MiB
            got += piece
    assert got == whole


async def test_write_extents_from_a_sparse_file(backend: Backend, tmp_path: Path) -> None:
    await backend.create(b"x", 16 * MiB)
    spool = tmp_path / "spool"
    extents = [(100, 5000), (6 * MiB - 10, 2 * MiB + 20), (15 * MiB, MiB)]
    with open(spool, "w+b") as f:
        f.truncate(16 * MiB)
        for i, (offset, length) in enumerate(extents):
            os.pwrite(f.fileno(), pattern(length, i), offset)
        f.seek(12345)
        assert await backend.write_extents(b"x", f.fileno(), extents) == sum(n for _, n in extents)
        assert f.tell() == 12345  # the caller's file position is its own
    for i, (offset, length) in enumerate(extents):
        assert await backend.read(b"x", offset, length) == pattern(length, i)
    assert await backend.read(b"x", 0, 100) == bytes(100)  # between extents: untouched
    if isinstance(backend, DogBackend):
        store = os.environ["SHEEPDOG_FAKE_STORE"]
        assert control.count_calls(store, "vdi", "write") == len(extents)


async def test_snapshot_clone_and_deletes(backend: Backend) -> None:
    await backend.create(b"base", 4 * MiB)
    await backend.write(b"base", 0, b"frozen")
    await backend.snapshot(b"base", "t1")
    await backend.write(b"base", 0, b"CHANGED")
    await backend.clone(b"base", "t1", b"copy")
    copy = await backend.lookup(b"copy")
    kind = VdiKind.CLONE if isinstance(backend, DogBackend | SheepBackend) else VdiKind.WORKING
    assert copy is not None and copy.kind is kind and copy.size == 4 * MiB
    assert await backend.read(b"copy", 0, 6) == b"frozen"
    assert set(await backend.list()) == {b"base", b"copy"}  # snapshots are no files

    await backend.delete_snapshot(b"base", "t1")
    assert await backend.read(b"copy", 0, 6) == b"frozen"
    await backend.delete(b"copy")
    await backend.delete(b"base")
    assert await backend.list() == {}
    assert await backend.lookup(b"base") is None


async def test_errors(backend: Backend) -> None:
    assert await backend.lookup(b"missing") is None
    await backend.create(b"e", MiB)
    with pytest.raises(Exists):
        await backend.create(b"e", MiB)
    with pytest.raises(NotFound):
        await backend.delete(b"missing")
    with pytest.raises(NotFound):
        await backend.clone(b"e", "no-such-tag", b"f")
    with pytest.raises(NotFound):
        await backend.delete_snapshot(b"e", "no-such-tag")
    with pytest.raises(NotFound):
        await backend.read(b"missing", 0, 1)
    with pytest.raises(InvalidArgument):
        await backend.write(b"e", 2 * MiB, b"x")  # an offset past the end


async def test_dog_lookup_lists_one_name(tmp_path: Path, monkeypatch) -> None:
    store = control.init_store(tmp_path / "store")
    monkeypatch.setenv("SHEEPDOG_FAKE_STORE", str(store))
    async with DogBackend(control.dog_path()) as b:
        await b.create(b"-odd name", MiB, Layout(22, 3))
        await b.snapshot(b"-odd name", "s")
        info = await b.lookup(b"-odd name")
    assert info is not None and info.kind is VdiKind.WORKING and info.layout == Layout(22, 3)
    calls = control.calls(store)
    assert calls[0][:3] == ["node", "list", "-r"] and calls[1][:3] == ["cluster", "info", "-r"]
    assert calls[2][:6] == ["vdi", "create", "-z", "22", "-c", "3"]
    assert calls[-1][:3] == ["vdi", "list", "-r"] and calls[-1][-2:] == ["--", "-odd name"]


async def test_dog_refuses_to_delete_a_hyper_volume(tmp_path: Path, monkeypatch) -> None:
    store = control.init_store(tmp_path / "store")
    monkeypatch.setenv("SHEEPDOG_FAKE_STORE", str(store))
    assert control.run(store, "vdi", "create", "-y", "--", "h", str(8 << 40)).returncode == 0
    async with DogBackend(control.dog_path()) as b:
        with pytest.raises(NotPermitted):
            await b.delete(b"h")
        assert (await b.lookup(b"h")).hyper
    assert control.count_calls(store, "vdi", "delete") == 0


async def test_dog_open_fails_on_an_unformatted_cluster(tmp_path: Path, monkeypatch) -> None:
    store = control.init_store(tmp_path / "store", formatted=False)
    monkeypatch.setenv("SHEEPDOG_FAKE_STORE", str(store))
    with pytest.raises(Unavailable):
        async with DogBackend(control.dog_path()):
            pass


async def test_local_open_fails_without_its_directory(tmp_path: Path) -> None:
    with pytest.raises(BackendError, match="not a directory"):
        async with LocalBackend(tmp_path / "absent"):
            pass


async def test_a_settled_cluster_is_not_recovering(backend: Backend) -> None:
    """Deletes ask this first (docs/SHEEPDOG.md F25): on a real cluster, every node's
    STAT_RECOVERY (sheep) or ``dog node recovery -r`` (dog, the fake) says none recovers
    once the cluster has settled."""
    with trio.fail_after(60):
        while await backend.recovering():  # a throwaway cluster may still settle
            await trio.sleep(0.5)
    assert await backend.recovering() is False


async def test_a_failed_stream_raises_the_error_itself(backend: Backend) -> None:
    """Not an exception group: callers (the write-back's loads) catch BackendError, and a
    group escaping them ended the mount (found by scripts/soak, sheep seed 638511713)."""
    with pytest.raises(BackendError) as caught:
        async with backend.read_stream(b"nothing-here", 0, 4 * MiB, piece_size=MiB) as pieces:
            async for _ in pieces:
                pass
    assert isinstance(caught.value, NotFound)
