"""A listing that could not read every VDI is partial, never "those are all" (found by
scripts/soak; docs/SHEEPDOG.md F21).

While a node is down or the cluster restarts, dog's ``vdi list`` skips a VDI whose inode it
cannot read and still exits 0; sheepfs took that for the whole truth, so an existing file
was "not there": ``sha256sum`` got ENOENT, ``rsync --inplace`` made the file again and
failed at close with EEXIST, and SIGTERM could then not save it. Now what such a listing
shows is served, and a name it lacks answers EIO until a listing is whole again.
"""

from __future__ import annotations

import os
import sys

import pytest

from sheepfs.backends.dog import DogBackend
from sheepfs.backends.sheep import SheepBackend
from sheepfs.core.filesystem import CoreConfig, Filesystem
from sheepfs.errors import PartialListing, Unavailable
from sheepfs.spool import Spool
from tests.fakedog import control
from tests.fakesheep import fake_cluster

pytestmark = pytest.mark.timeout(60)
MiB = 1 << 20


@pytest.fixture
async def dog(tmp_path, monkeypatch):
    store = control.init_store(tmp_path / "store")
    monkeypatch.setenv("SHEEPDOG_FAKE_STORE", str(store))
    monkeypatch.setenv(
        "SHEEPDOG_FAKE_PYTHON", os.environ.get("SHEEPDOG_FAKE_PYTHON", sys.executable)
    )
    async with DogBackend(control.dog_path(), timeout=30) as b:
        for name in (b"a", b"b"):
            await b.create(name, MiB)
        yield store, b


def test_the_fake_dog_skips_an_unreadable_vdi_as_dog_does(tmp_path) -> None:
    store = control.init_store(tmp_path / "store")
    for name in ("a", "b"):
        assert control.run(store, "vdi", "create", "--", name, "1M").returncode == 0
    control.set_config(store, unreadable=["b"])
    p = control.run(store, "vdi", "list", "-r")
    assert p.returncode == 0 and p.stdout.startswith(b"= a ") and b"= b " not in p.stdout
    assert b"Failed to read inode header" in p.stderr


async def test_dog_backend_list_and_lookup_say_partial(dog) -> None:
    store, b = dog
    control.set_config(store, unreadable=["b"])
    with pytest.raises(PartialListing) as e:
        await b.list()
    assert set(e.value.found) == {b"a"} and "Failed to read inode header" in str(e.value)
    with pytest.raises(Unavailable):
        await b.lookup(b"b")  # it may be the one dog could not read
    with pytest.raises(Unavailable):
        await b.lookup(b"nosuch")
    assert (await b.lookup(b"a")) is not None  # found is found
    control.set_config(store, unreadable=[])
    assert set(await b.list()) == {b"a", b"b"} and await b.lookup(b"nosuch") is None


async def test_through_the_core_a_name_a_partial_listing_lacks_is_eio_not_enoent(
    dog, tmp_path
) -> None:
    store, b = dog
    fs = Filesystem(b, Spool(tmp_path / "spool"), CoreConfig(list_ttl=0))
    async with fs.running():
        control.set_config(store, unreadable=["b"])
        assert [n for n, _ in await fs.readdir()] == [b"a"]  # what it could read is served
        for act in (fs.lookup(b"b"), fs.create(b"b")):
            with pytest.raises(Unavailable) as e:
                await act  # never ENOENT, never a second VDI made of that name
            assert e.value.errno == 5
        assert (await fs.lookup(b"a")).size == MiB
        control.set_config(store, unreadable=[])
        assert (await fs.lookup(b"b")).size == MiB
    assert control.count_calls(store, "vdi", "create") == 2


async def test_sheep_backend_a_header_that_cannot_be_read_makes_the_listing_partial() -> None:
    async with fake_cluster(nodes=3) as fake:
        async with SheepBackend([fake.address(0)], timeout=10) as b:
            for name in (b"a", b"b", b"c"):
                await b.create(name, MiB)
            fake.control.inject("EIO", op="READ_OBJ", count=1)
            with pytest.raises(PartialListing) as e:
                await b.list()
            assert len(e.value.found) == 2 and "could not be read" in str(e.value)
            assert set(await b.list()) == {b"a", b"b", b"c"}
