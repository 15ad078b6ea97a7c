"""Deletes wait while the cluster recovers (docs/SHEEPDOG.md F25; found by scripts/soak,
dog backend with sheep's debug logs: a file renamed twice, the second rename's deletes
made while a killed node rejoined and recovered; Sheepdog then removed an object the
renamed file still read, and it could never be read again).

Each backend asks the cluster as ``dog node recovery`` does (every node's STAT_RECOVERY);
the core's deletes (a file's, a rename's source, the snapshot a rename or a replace drops)
wait, up to the call deadline, for the recovery to end. The fake sheep (knob
``recovering``) and the fake dog (config ``recovering``: ids of nodes) report one on demand.
"""

from __future__ import annotations

import logging
import os
import sys

import pytest
import trio

from sheepfs.backends.dog import DogBackend
from sheepfs.backends.sheep import SheepBackend
from sheepfs.core import quiesce
from sheepfs.core.calls import BoundedBackend
from sheepfs.core.filesystem import CoreConfig, Filesystem
from sheepfs.errors import BackendError
from sheepfs.spool import Spool
from tests.fakedog import control
from tests.fakesheep import fake_cluster

pytestmark = pytest.mark.timeout(60)
MiB = 1 << 20


@pytest.fixture(autouse=True)
def quick_polls(monkeypatch) -> None:
    monkeypatch.setattr(quiesce, "POLL", 0.05)


async def test_the_sheep_backend_asks_every_node() -> None:
    async with fake_cluster(nodes=3) as fake:
        async with SheepBackend([fake.address()], timeout=10) as backend:
            assert await backend.recovering() is False
            fake.control.set_knob("recovering", True)
            assert await backend.recovering() is True
            counts = fake.control.op_counts()
            assert counts.get("STAT_RECOVERY", 0) >= 1 and counts.get("GET_NODE_LIST", 0) >= 1


async def test_the_dog_backend_reads_dog_node_recovery(tmp_path, monkeypatch) -> None:
    store = control.init_store(tmp_path / "store")
    monkeypatch.setenv("SHEEPDOG_FAKE_STORE", str(store))
    monkeypatch.setenv(
        "SHEEPDOG_FAKE_PYTHON", os.environ.get("SHEEPDOG_FAKE_PYTHON", sys.executable)
    )
    async with DogBackend(control.dog_path(), timeout=30) as backend:
        assert await backend.recovering() is False
        control.set_config(store, recovering=[2])
        assert await backend.recovering() is True


async def test_a_rename_deletes_nothing_until_the_recovery_ends(tmp_path) -> None:
    """The soak's case: ``mv a b`` while a node recovers. The snapshot and the clone are
    made (nothing is freed by them); the source and the snapshot are deleted only after."""
    async with fake_cluster(nodes=3) as fake:
        async with SheepBackend([fake.address()], timeout=10) as backend:
            await backend.create(b"a", MiB)
            await backend.write(b"a", 0, b"data of a")
            fs = Filesystem(backend, Spool(tmp_path / "spool"), CoreConfig(list_ttl=0))
            async with fs.running():
                fake.control.set_knob("recovering", True)
                before = fake.control.op_counts().get("DEL_VDI", 0)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(fs.rename, b"a", b"b")
                    await trio.sleep(1.0)
                    assert fake.control.op_counts().get("DEL_VDI", 0) == before
                    assert await backend.lookup(b"b") is not None  # the clone is there
                    fake.control.set_knob("recovering", False)
                assert fake.control.op_counts().get("DEL_VDI", 0) >= before + 2
                assert await backend.lookup(b"a") is None
                assert await backend.read(b"b", 0, 9) == b"data of a"
                assert [s.tag for s in await backend.snapshots(b"a")] == []


class Recovering(BoundedBackend):
    """A backend whose cluster recovers for ever, or cannot say."""

    def __init__(self, inner, timeout: float, answer: bool | BackendError) -> None:
        super().__init__(inner, timeout)
        self.answer = answer

    async def recovering(self) -> bool:
        if isinstance(self.answer, BackendError):
            raise self.answer
        return self.answer


async def test_past_the_deadline_deletes_go_on_until_the_cluster_settles(caplog) -> None:
    """A recovery can last hours, or never end (seen: a sheep retrying for ever an object
    it cannot recover): one delete waits the call deadline; the next ones go on at once
    until a look finds the cluster settled; then they wait again."""
    from tests.memory_backend import MemoryBackend

    async with MemoryBackend() as inner:
        for name in (b"v", b"w", b"x", b"y"):
            await inner.create(name, MiB)
        backend = Recovering(inner, timeout=0.3, answer=True)
        with caplog.at_level(logging.INFO, logger="sheepfs.core.quiesce"):
            start = trio.current_time()
            await backend.delete(b"v")
            assert trio.current_time() - start >= 0.3
            assert "still recovers after 0.3 s; deletes go on" in caplog.text
            with trio.fail_after(0.2):
                await backend.delete(b"w")  # gave up: at once
            backend.answer = False
            await backend.delete(b"x")  # settled: the next recovery is waited for again
            backend.answer = True
            start = trio.current_time()
            await backend.delete(b"y")
            assert trio.current_time() - start >= 0.3
        assert [await inner.lookup(n) for n in (b"v", b"w", b"x", b"y")] == [None] * 4
        await inner.create(b"z", MiB)
        backend.answer = BackendError("recovery", None, "no such command")  # collie, say
        with trio.fail_after(0.2):
            await backend.delete(b"z")  # cannot tell: at once
        assert await inner.lookup(b"z") is None
