"""A NEW_VDI cut off when its gateway sheep died (docs/SHEEPDOG.md F24; found by
scripts/soak, sheep backend: a rename over a file, its clone cut off by a node kill).

The sheep gives the new vid its state on every node before it writes the inode; dead in
between, it leaves a state with no inode, which the next node to join marks in use. Every
lookup of a name of that hash chain then fails with NO_OBJ until every sheep restarts:
the rename's target, whose old data waits in a snapshot of that name, could not be put
back, nor read. The sheep backend remembers its NEW_VDIs that were cut off and gives such
a hole the inode of a deleted VDI, which lookups pass by. The fake sheep leaves the hole
on demand (knob ``inodeless_new_vdis``) and heals it at a restart, as real sheep do.
"""

from __future__ import annotations

import logging

import pytest
import trio

from sheepfs.backends.sheep import SheepBackend, proto
from sheepfs.backends.sheep.client import SheepClient
from sheepfs.backends.sheep.inode import find_vid
from sheepfs.core.filesystem import CoreConfig, Filesystem
from sheepfs.core.replace import take_snapshot
from sheepfs.errors import BackendError
from sheepfs.spool import Spool
from tests.fakesheep import fake_cluster

pytestmark = pytest.mark.timeout(60)
MiB = 1 << 20
TIMEOUT = 1.0  # the backend's: a hole is mended once this has passed since the cut-off


def cut_off_next_create(fake) -> None:
    """The next NEW_VDI (at node 0) takes its vid, writes no inode, and never answers."""
    fake.control.set_knob("inodeless_new_vdis", 1)
    fake.control.close_next_reply(0, "header", "NEW_VDI")


async def test_the_fake_breaks_the_chain_and_a_restart_heals_it() -> None:
    """The facts the fix stands on, as seen on a real cluster after the soak: lookups of
    the chain fail with NO_OBJ (the name and its snapshots alike), until every sheep
    restarts, when the vid without an inode is free again."""
    async with fake_cluster(nodes=3) as fake:
        async with SheepBackend([fake.address()], timeout=10) as backend:
            await backend.create(b"v", MiB)
            await backend.snapshot(b"v", "keep")
            await backend.delete(b"v")
            cut_off_next_create(fake)
            with pytest.raises(BackendError) as e:
                await backend.create(b"v", MiB)
            assert e.value.may_have_run
        async with SheepClient([fake.address()], timeout=10) as client:
            for tag in (b"", b"keep"):
                reply = await client.call(proto.vdi_request(proto.Op.GET_VDI_INFO, b"v", tag))
                assert reply.result == proto.Res.NO_OBJ
            fake.control.restart()
            assert await find_vid(client, "test", b"v") is None
            assert await find_vid(client, "test", b"v", b"keep") is not None
        assert fake.events == []


async def test_a_hole_left_by_our_cut_off_create_is_mended(caplog) -> None:
    async with fake_cluster(nodes=3) as fake:
        async with SheepBackend([fake.address()], timeout=TIMEOUT) as backend:
            await backend.create(b"v", MiB)
            await backend.write(b"v", 0, b"old data")
            await backend.snapshot(b"v", "keep")
            await backend.delete(b"v")
            cut_off_next_create(fake)
            with pytest.raises(BackendError):
                await backend.create(b"v", MiB)
            with pytest.raises(BackendError):
                await backend.lookup(b"v")  # too soon: its sheep may still write the inode
            await trio.sleep(TIMEOUT)
            with caplog.at_level(logging.WARNING):
                assert await backend.lookup(b"v") is None  # mended: the chain resolves
            assert "had no inode" in caplog.text
            await backend.clone(b"v", "keep", b"v")  # the old data, reachable again
            assert bytes(await backend.read(b"v", 0, 8)) == b"old data"
            assert b"v" in await backend.list()
        assert fake.events == []


async def test_a_snapshot_mends_the_hole_its_own_cut_off_left(caplog) -> None:
    """A ``cp`` over a file: the replace's snapshot of it cut off by a node kill. Only
    lookups mended a hole, and the close's tries of the snapshot each failed with NO_OBJ
    until that mount ended; no later mount can mend it (found by scripts/soak, sheep seed
    690556163). Now every call that looks a name up mends it."""
    async with fake_cluster(nodes=3) as fake:
        async with SheepBackend([fake.address()], timeout=TIMEOUT) as backend:
            await backend.create(b"v", MiB)
            await backend.write(b"v", 0, b"old data")
            cut_off_next_create(fake)
            with pytest.raises(BackendError):
                await backend.snapshot(b"v", "old")  # its new working vid has no inode
            await trio.sleep(TIMEOUT)
            with caplog.at_level(logging.WARNING):
                await take_snapshot(backend, b"v", "old")  # the close's next try goes on
            assert "had no inode" in caplog.text
            await backend.clone(b"v", "old", b"copy")  # the old data is in the snapshot
            assert bytes(await backend.read(b"copy", 0, 8)) == b"old data"
        assert fake.events == []


async def test_a_create_answered_vdi_write_may_leave_a_hole_too() -> None:
    """VDI_WRITE: the gateway lived, but the inode's write failed after the vid had its
    state (nodes going down); the backend mends that hole as it does a cut-off's."""
    async with fake_cluster(nodes=3) as fake:
        async with SheepBackend([fake.address()], timeout=TIMEOUT) as backend:
            await backend.create(b"v", MiB)
            await backend.snapshot(b"v", "keep")
            fake.control.set_knob("inodeless_result", "VDI_WRITE")
            fake.control.set_knob("inodeless_new_vdis", 1)
            with pytest.raises(BackendError):
                await backend.snapshot(b"v", "again")
            await trio.sleep(TIMEOUT)
            assert (await backend.lookup(b"v")).size == MiB  # the chain resolves again
        assert fake.events == []


async def test_a_hole_another_client_left_is_not_touched() -> None:
    """Only a chain where a create of ours was cut off: a hole there is ours; another
    client's may be an inode that is only out of reach."""
    async with fake_cluster(nodes=3) as fake:
        async with SheepBackend([fake.address()], timeout=TIMEOUT) as other:
            await other.create(b"v", MiB)
            await other.delete(b"v")
            cut_off_next_create(fake)
            with pytest.raises(BackendError):
                await other.create(b"v", MiB)
        async with SheepBackend([fake.address()], timeout=TIMEOUT) as backend:
            await trio.sleep(TIMEOUT)
            with pytest.raises(BackendError):
                await backend.lookup(b"v")
        async with SheepClient([fake.address()], timeout=10) as client:  # still a hole
            reply = await client.call(proto.vdi_request(proto.Op.GET_VDI_INFO, b"v"))
            assert reply.result == proto.Res.NO_OBJ


async def test_a_rename_whose_clone_was_cut_off_gets_its_target_back(tmp_path, monkeypatch):
    """The soak's case: ``mv src dst`` over a file; dst's old data is in its snapshot, its
    VDI deleted, and the clone of src as dst cut off by the death of its sheep. The rename
    fails, and dst gets its old data back once the hole in its chain is mended."""
    async with fake_cluster(nodes=3) as fake:
        async with SheepBackend([fake.address()], timeout=TIMEOUT) as backend:
            for name, data in ((b"src", b"new data"), (b"dst", b"old data")):
                await backend.create(name, MiB)
                await backend.write(name, 0, data)
            real_clone = backend.clone

            async def cut_off_clone(name: bytes, tag: str, new_name: bytes) -> None:
                monkeypatch.setattr(backend, "clone", real_clone)
                cut_off_next_create(fake)
                await real_clone(name, tag, new_name)

            monkeypatch.setattr(backend, "clone", cut_off_clone)
            fs = Filesystem(backend, Spool(tmp_path / "spool"), CoreConfig(list_ttl=0))
            async with fs.running():
                with pytest.raises(BackendError):
                    await fs.rename(b"src", b"dst")
                with trio.fail_after(30):
                    while True:
                        try:
                            attrs = await fs.lookup(b"dst")
                            break
                        except BackendError:  # EIO until its old data is back
                            await trio.sleep(0.2)
                assert attrs.size == MiB
                assert bytes(await backend.read(b"dst", 0, 8)) == b"old data"
                assert bytes(await backend.read(b"src", 0, 8)) == b"new data"
        assert fake.events == []
