"""A listing or lookup whose read of an index began before a write of ours allocated an
object must not make the sheep backend forget that object (found by scripts/soak, sheep
backend: an ``ls`` beside a ``cp`` over a file). The backend took the older index for the
newer one, so the next write to the object was a create from zeros (the object's data
gone but for that write) and reads meanwhile returned zeros."""

from __future__ import annotations

import os

import pytest

from sheepfs.backends.sheep import SheepBackend
from sheepfs.backends.sheep import backend as backend_module
from tests.fakesheep import fake_cluster

pytestmark = pytest.mark.timeout(60)
MiB = 1 << 20
SECOND = 4 * MiB  # the second 4 MiB object


async def allocate_second_object_meanwhile(
    backend: SheepBackend, monkeypatch, what: str, name: bytes
) -> None:
    """Make ``what`` (``list_vdis`` or ``load``) read, then let a write allocate the second
    object of ``name`` before the backend gets what was read."""
    real = getattr(backend_module, what)

    async def racing(*args, **kwargs):
        found = await real(*args, **kwargs)  # the index as it was: no second object
        monkeypatch.setattr(backend_module, what, real)
        await backend.write(name, SECOND, b"second object")
        return found

    monkeypatch.setattr(backend_module, what, racing)


async def race_and_check(backend: SheepBackend, monkeypatch, reader: str, name: bytes) -> None:
    """The race on a VDI ``name`` of two objects, then what each object must still hold."""
    await backend.create(name, 8 * MiB)
    await backend.write(name, 0, b"first object")
    if reader == "list":
        await allocate_second_object_meanwhile(backend, monkeypatch, "list_vdis", name)
        await backend.list()
    else:
        await allocate_second_object_meanwhile(backend, monkeypatch, "load", name)
        await backend.lookup(name)
    assert bytes(await backend.read(name, SECOND, 13)) == b"second object"
    await backend.write(name, SECOND + 100, b"more")  # into the object, not over it
    assert bytes(await backend.read(name, SECOND, 13)) == b"second object"
    assert bytes(await backend.read(name, 0, 12)) == b"first object"
    await backend.list()  # a listing that began after the write takes its index
    assert bytes(await backend.read(name, SECOND, 13)) == b"second object"


@pytest.mark.parametrize("reader", ["list", "lookup"])
async def test_an_index_read_before_an_allocation_does_not_undo_it(monkeypatch, reader) -> None:
    async with fake_cluster(nodes=3) as fake:
        fake.control.set_knob("strict_client", True)
        async with SheepBackend([fake.address()], timeout=10) as backend:
            await race_and_check(backend, monkeypatch, reader, b"v")
        assert fake.events == []


@pytest.mark.real
@pytest.mark.timeout(120)
@pytest.mark.parametrize("reader", ["list", "lookup"])
async def test_the_same_race_on_a_real_cluster(real_cluster, monkeypatch, reader) -> None:
    name = f"index-race-{reader}-{os.getpid()}".encode()
    address = (real_cluster.address, real_cluster.port)
    async with SheepBackend([address], timeout=30) as backend:
        try:
            await race_and_check(backend, monkeypatch, reader, name)
        finally:
            await backend.delete(name)
