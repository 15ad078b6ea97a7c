"""A rename whose delete of its source was cut off (found by scripts/soak, sheep backend).

A node died with the rename's DEL_VDI of the source in flight. The rename answered EIO
though its clone already held the data under the new name, and ``mv``, seeing the source
still there, renamed it again, over the new name: the source, its index zeroed by the
delete cut off, replaced the data with zeros. Answering success instead left the old name
listed after a rename that succeeded (dog seeds 454490412 and 60491967, sheep 310615649: a
sheep that held its replies, a cluster restart, a node kill), so the delete is tried again
while the rename waits; only a delete that keeps failing leaves the old name behind.
"""

from __future__ import annotations

import logging

import pytest
import trio

from sheepfs.backends.dog import DogBackend
from sheepfs.backends.sheep import SheepBackend
from sheepfs.core import rename
from sheepfs.errors import NotFound, Unavailable
from tests.core_helpers import SMALL, MiB, mount, random_bytes, read_name, write_file
from tests.memory_backend import MemoryBackend

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("zeroed", [True, False])
async def test_a_rename_whose_source_delete_keeps_failing_keeps_the_data_renamed(
    tmp_path, monkeypatch, caplog, zeroed
) -> None:
    monkeypatch.setattr(rename, "SOURCE_DELETE_FOR", 0.3)
    monkeypatch.setattr(rename, "RETRY", 0.1)
    backend = MemoryBackend()
    data = random_bytes(MiB + 5)
    backend.put(b"src", data, block_size_shift=SMALL)
    real_delete = backend.delete

    async def cut_off(name: bytes) -> None:
        if name != b"src":
            return await real_delete(name)
        if zeroed:  # the delete ran as far as zeroing the index; its reply was lost
            await real_delete(name)
            backend.put(b"src", bytes(len(data)), block_size_shift=SMALL)
        raise Unavailable("delete", name, "the connection broke with the request in flight")

    monkeypatch.setattr(backend, "delete", cut_off)
    caplog.set_level(logging.WARNING)
    async with mount(backend, tmp_path) as fs:
        await fs.rename(b"src", b"dst")  # the data is renamed: what the user asked for
        assert await read_name(fs, b"dst") == data
        monkeypatch.setattr(backend, "delete", real_delete)
        await fs.unlink(b"src")  # what is left of the old name goes as any file does
        assert await read_name(fs, b"dst") == data
    assert backend.data(b"dst") == data and b"src" not in backend.names()
    assert "deleting the old name failed" in caplog.text


@pytest.mark.parametrize("zeroed", [True, False])
async def test_a_source_delete_cut_off_is_tried_again_until_the_old_name_is_gone(
    tmp_path, monkeypatch, caplog, zeroed
) -> None:
    monkeypatch.setattr(rename, "RETRY", 0.05)
    backend = MemoryBackend()
    data = random_bytes(MiB + 5)
    backend.put(b"src", data, block_size_shift=SMALL)
    real_delete = backend.delete
    failures = []

    async def cut_off_twice(name: bytes) -> None:
        if name != b"src" or len(failures) == 2:
            return await real_delete(name)
        if zeroed and not failures:  # the first try zeroed the index; its reply was lost
            await real_delete(name)
            backend.put(b"src", bytes(len(data)), block_size_shift=SMALL)
        failures.append(name)
        raise Unavailable("delete", name, "the connection broke with the request in flight")

    monkeypatch.setattr(backend, "delete", cut_off_twice)
    caplog.set_level(logging.INFO)
    async with mount(backend, tmp_path) as fs:
        await fs.rename(b"src", b"dst")
        assert len(failures) == 2  # the rename waited for the third try
        with pytest.raises(NotFound):
            await fs.lookup(b"src")
        assert b"src" not in [name for name, _ in await fs.readdir()]
        assert await read_name(fs, b"dst") == data
    assert backend.data(b"dst") == data and b"src" not in backend.names()
    assert "deleting the old name failed" in caplog.text  # each failed try, at INFO
    assert "may stay" not in caplog.text


@pytest.mark.real
@pytest.mark.parametrize("kind", ["dog", "sheep"])
async def test_on_a_real_cluster_a_source_delete_whose_reply_was_lost_ends_the_rename(
    request, tmp_path, monkeypatch, caplog, kind
) -> None:
    """The delete landed on the cluster and its reply was lost: the next try must take the
    VDI's absence for success (its times' key is gone with it, a real Sheepdog says how),
    not retry it for a minute and then report the old name as left behind."""
    cluster = request.getfixturevalue("real_store").cluster
    where = (cluster.address, cluster.port)
    backend = (
        SheepBackend([where], timeout=30)
        if kind == "sheep"
        else DogBackend(str(cluster.dist.dog), *where, timeout=30)
    )
    monkeypatch.setattr(rename, "RETRY", 0.2)
    monkeypatch.setattr(rename, "SOURCE_DELETE_FOR", 20.0)
    data = random_bytes(MiB + 5)
    real_delete, lost = backend.delete, []

    async def reply_lost(name: bytes) -> None:
        await real_delete(name)
        if name == b"src" and not lost:
            lost.append(name)
            raise Unavailable("delete", name, "the reply was lost")

    caplog.set_level(logging.INFO)
    async with mount(backend, tmp_path) as fs:
        await write_file(fs, b"src", data)
        monkeypatch.setattr(backend, "delete", reply_lost)
        started = trio.current_time()
        await fs.rename(b"src", b"dst")
        assert lost and trio.current_time() - started < 15  # one retry, not the minute
        with pytest.raises(NotFound):
            await fs.lookup(b"src")
        assert await read_name(fs, b"dst") == data
        assert await backend.lookup(b"src") is None
        await fs.unlink(b"dst")
    assert "may stay" not in caplog.text
