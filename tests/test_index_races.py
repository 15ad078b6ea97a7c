"""A listing or lookup whose read of an index began before a write of ours allocated an
object must not make the sheep backend forget that object (found by scripts/soak, sheep
backend: an ``ls`` beside a ``cp`` over a file). The backend took the older index for the
newer one, so the next write to the object was a create from zeros (the object's data
gone but for that write) and reads meanwhile returned zeros."""

from __future__ import annotations

import pytest

from sheepfs.backends.sheep import SheepBackend
from sheepfs.backends.sheep import backend as backend_module
from tests.fakesheep import fake_cluster

pytestmark = pytest.mark.timeout(60)
MiB = 1 << 20
SECOND = 4 * MiB  # the second 4 MiB object


async def allocate_second_object_meanwhile(backend: SheepBackend, monkeypatch, what: str):
    """Make ``what`` (``list_vdis`` or ``load``) read, then let a write allocate the second
    object of "v" before the backend gets what was read."""
    real = getattr(backend_module, what)

    async def racing(*args, **kwargs):
        found = await real(*args, **kwargs)  # the index as it was: no second object
        monkeypatch.setattr(backend_module, what, real)
        await backend.write(b"v", SECOND, b"second object")
        return found

    monkeypatch.setattr(backend_module, what, racing)


@pytest.mark.parametrize("reader", ["list", "lookup"])
async def test_an_index_read_before_an_allocation_does_not_undo_it(monkeypatch, reader) -> None:
    async with fake_cluster(nodes=3) as fake:
        fake.control.set_knob("strict_client", True)
        async with SheepBackend([fake.address()], timeout=10) as backend:
            await backend.create(b"v", 8 * MiB)
            await backend.write(b"v", 0, b"first object")
            if reader == "list":
                await allocate_second_object_meanwhile(backend, monkeypatch, "list_vdis")
                await backend.list()
            else:
                await allocate_second_object_meanwhile(backend, monkeypatch, "load")
                await backend.lookup(b"v")
            assert bytes(await backend.read(b"v", SECOND, 13)) == b"second object"
            await backend.write(b"v", SECOND + 100, b"more")  # into the object, not over it
            assert bytes(await backend.read(b"v", SECOND, 13)) == b"second object"
            assert bytes(await backend.read(b"v", 0, 12)) == b"first object"
            await backend.list()  # a listing that began after the write takes its index
            assert bytes(await backend.read(b"v", SECOND, 13)) == b"second object"
        assert fake.events == []
