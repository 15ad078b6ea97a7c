"""A delete the sheep answered SUCCESS but never wrote (docs/SHEEPDOG.md F23).

``delete_vdi_work`` does not check its write of the emptied inode: where that write is lost
(nodes going down as the cluster stops), DEL_VDI still answers SUCCESS and marks the vid
deleted in memory, but the inode keeps its name. The name is then still found by lookups
(a new VDI of it is refused as existing), and the next cluster start, which takes a vid for
deleted only where the inode's name is empty, lists the VDI again: an acknowledged ``rm``
undone. Found by ``scripts/soak`` (a removed file back after a cluster restart). The fake
sheep loses that write on demand (knob ``lost_inode_writes``) and restarts on demand.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from sheepfs.backends.dog import DogBackend
from sheepfs.backends.sheep import SheepBackend, proto
from sheepfs.backends.sheep.client import SheepClient
from sheepfs.backends.sheep.inode import find_vid
from sheepfs.errors import BackendError
from tests.fakesheep import RunningFake, fake_cluster
from tests.realcluster import Dist, find_sheepdog

pytestmark = pytest.mark.timeout(60)
MiB = 1 << 20


def names_listed(fake) -> set[str]:
    return {v["name"] for v in fake.control.vdis() if v["name"] and not v["deleted"]}


async def test_the_fake_loses_the_emptied_inode_as_a_real_sheep_can():
    """The fact the fix stands on: DEL_VDI answers SUCCESS, the name is still found, and
    the VDI is listed again after a restart."""
    async with fake_cluster(nodes=3) as fake:
        async with SheepBackend([fake.address()], timeout=10) as backend:
            await backend.create(b"v", 4 * MiB)
        fake.control.set_knob("lost_inode_writes", 1)
        async with SheepClient([fake.address()], timeout=10) as client:
            vid = await find_vid(client, "test", b"v")
            reply = await client.call(proto.vdi_request(proto.Op.DEL_VDI, b"v", b"", 0))
            assert reply.ok
            assert "v" not in names_listed(fake)  # deleted in memory
            assert await find_vid(client, "test", b"v") == vid  # but found by its name
            fake.control.restart()
            assert "v" in names_listed(fake)  # and back after the next start


async def test_a_delete_whose_inode_kept_its_name_is_finished_by_the_backend(caplog):
    async with fake_cluster(nodes=3) as fake:
        fake.control.set_knob("strict_client", True)
        async with SheepBackend([fake.address()], timeout=10) as backend:
            await backend.create(b"v", 4 * MiB)
            await backend.write(b"v", 0, b"old data")
            fake.control.set_knob("lost_inode_writes", 1)
            with caplog.at_level(logging.WARNING):
                await backend.delete(b"v")
            assert "the sheep kept its inode's name" in caplog.text
            assert await backend.lookup(b"v") is None
            fake.control.restart()
            assert "v" not in names_listed(fake)
            assert await backend.lookup(b"v") is None
            await backend.create(b"v", MiB)  # the name is free for a new VDI
            assert (await backend.lookup(b"v")).size == MiB
        assert fake.events == []


async def test_a_delete_that_cannot_be_finished_says_the_vdi_may_come_back():
    async with fake_cluster(nodes=3) as fake:
        async with SheepBackend([fake.address()], timeout=10) as backend:
            await backend.create(b"v", 4 * MiB)  # no object: the delete writes no index
            fake.control.set_knob("lost_inode_writes", 1)
            fake.control.inject("EIO", op="WRITE_OBJ")  # the emptying write fails too
            with pytest.raises(BackendError) as e:
                await backend.delete(b"v")
            assert "may come back when the cluster next starts" in str(e.value)


@pytest.mark.parametrize("then", ["lookup", "list", "create", "close"])
async def test_a_delete_not_checked_is_checked_again_later(then, caplog):
    """Found by scripts/soak (sheep backend): a replace's delete whose check timed out under
    a node kill; the replace went on, and the old VDI came back at the next cluster start.
    The backend keeps such deletes and checks them again: at the next lookup or create of
    the name, after a listing, and as it closes."""
    async with fake_cluster(nodes=3) as fake:
        async with SheepBackend([fake.address()], timeout=10) as backend:
            await backend.create(b"v", 4 * MiB)
            fake.control.set_knob("lost_inode_writes", 1)
            fake.control.inject("EIO", op="WRITE_OBJ")  # the emptying write fails too
            with pytest.raises(BackendError):
                await backend.delete(b"v")
            with caplog.at_level(logging.INFO):
                if then == "lookup":
                    assert await backend.lookup(b"v") is None
                elif then == "list":
                    assert b"v" not in await backend.list()
                elif then == "create":
                    await backend.create(b"v", MiB)
            if then != "close":
                assert "is checked now" in caplog.text
        fake.control.restart()
        async with SheepBackend([fake.address()], timeout=10) as backend:
            found = await backend.lookup(b"v")
            assert found is None if then != "create" else found.size == MiB  # not the old one
        assert fake.events == []


async def test_a_delete_that_landed_writes_nothing_more():
    async with fake_cluster(nodes=3) as fake:
        async with SheepBackend([fake.address()], timeout=10) as backend:
            await backend.create(b"v", 4 * MiB)
            before = fake.control.op_counts()
            await backend.delete(b"v")
            after = fake.control.op_counts()
        assert after.get("WRITE_OBJ", 0) == before.get("WRITE_OBJ", 0)
        assert "v" not in names_listed(fake)


DIST = find_sheepdog()
needs_dog = pytest.mark.skipif(not isinstance(DIST, Dist), reason=f"no Sheepdog build: {DIST}")


@asynccontextmanager
async def dog_losing_deletes(lost: int) -> AsyncIterator[tuple[RunningFake, DogBackend]]:
    """Real dog against the fake sheep, with a VDI ``v`` whose next ``lost`` deletes lose
    the write of its emptied inode."""
    assert isinstance(DIST, Dist)
    async with fake_cluster(nodes=3) as fake:
        host, port = fake.address()
        async with DogBackend(str(DIST.dog), host, port, timeout=30) as backend:
            await backend.create(b"v", 4 * MiB)
            fake.control.set_knob("lost_inode_writes", lost)
            yield fake, backend


@needs_dog
async def test_real_dog_loses_the_delete_and_the_dog_backend_deletes_again(caplog):
    """Real dog against the fake sheep: ``vdi delete`` exits 0 whatever the sheep lost."""
    async with dog_losing_deletes(1) as (fake, backend):
        with caplog.at_level(logging.WARNING):
            await backend.delete(b"v")
        assert "deleting it again" in caplog.text
        fake.control.restart()
        assert "v" not in names_listed(fake)
        assert await backend.lookup(b"v") is None
        await backend.create(b"v", MiB)  # the name is free for a new VDI


@needs_dog
async def test_the_dog_backend_says_so_when_the_delete_never_sticks():
    async with dog_losing_deletes(5) as (_, backend):
        with pytest.raises(BackendError) as e:
            await backend.delete(b"v")
        assert "may come back when the cluster next starts" in str(e.value)
