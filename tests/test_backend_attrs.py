"""The attribute calls of every backend (get_attrs, set_attr, drop_attr): DogBackend on the
fake dog and on a real cluster, SheepBackend on the fake sheep and on a real cluster, and
LocalBackend. Each keeps values by the VDI's name, as Sheepdog does."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from sheepfs.backends.base import Backend
from sheepfs.backends.dog import DogBackend
from sheepfs.backends.dog.errors import MissingAttribute
from sheepfs.backends.local import LocalBackend
from sheepfs.backends.sheep import SheepBackend
from sheepfs.backends.sheep import attrs as wire
from sheepfs.backends.sheep.proto import FLAG_CREAT, Res
from sheepfs.errors import NotFound
from tests.fakedog import control
from tests.fakesheep import fake_cluster

pytestmark = pytest.mark.timeout(120)
KEY = b"sheepfs.times"
MiB = 1 << 20
REAL = pytest.mark.real


@pytest.fixture(
    params=[
        "fake dog",
        "local",
        "fake sheep",
        pytest.param("real dog", marks=REAL),
        pytest.param("real sheep", marks=REAL),
    ]
)
async def backend(request, tmp_path: Path, monkeypatch) -> AsyncIterator[Backend]:
    kind = request.param
    if kind == "fake sheep":
        async with fake_cluster(nodes=3) as fake:
            fake.control.set_knob("strict_client", True)
            async with SheepBackend([fake.address(0)], timeout=10) as b:
                yield b
            assert fake.events == []
        return
    if kind.startswith("real"):
        cluster = request.getfixturevalue("real_store").cluster
        where = (cluster.address, cluster.port)
        b: Backend = (
            SheepBackend([where], timeout=30)
            if kind == "real sheep"
            else DogBackend(str(cluster.dist.dog), *where, timeout=30)
        )
    elif kind == "fake dog":
        store = control.init_store(tmp_path / "store")
        monkeypatch.setenv("SHEEPDOG_FAKE_STORE", str(store))
        monkeypatch.setenv("SHEEPDOG_FAKE_PYTHON", sys.executable)
        b = DogBackend(control.dog_path(), timeout=30)
    else:
        (tmp_path / "local").mkdir()
        b = LocalBackend(tmp_path / "local")
    async with b:
        yield b


async def test_set_get_drop(backend: Backend) -> None:
    await backend.create(b"v", MiB)
    await backend.create(b"w", MiB)
    assert await backend.get_attrs(KEY, [b"v", b"w"]) == {}
    await backend.set_attr(b"v", KEY, b"v1 1 2 3")
    await backend.set_attr(b"v", KEY, b"v1 4 5 6")  # replaces it
    await backend.set_attr(b"w", KEY, b"v1 7 8 9")
    got = await backend.get_attrs(KEY, [b"v", b"w"])
    assert {n: a.value for n, a in got.items()} == {b"v": b"v1 4 5 6", b"w": b"v1 7 8 9"}
    assert (await backend.get_attrs(b"other.key", [b"v"])) == {}
    await backend.drop_attr(b"v", KEY)
    await backend.drop_attr(b"v", KEY)  # none left: no error
    assert set(await backend.get_attrs(KEY, [b"v", b"w"])) == {b"w"}


async def test_a_missing_vdi_has_no_attributes_to_set_or_drop(backend: Backend) -> None:
    with pytest.raises(NotFound):
        await backend.set_attr(b"nosuch", KEY, b"v1 1 2 3")
    with pytest.raises(NotFound):
        await backend.drop_attr(b"nosuch", KEY)


async def test_a_value_outlives_its_vdi_with_the_stamp_of_the_old_one(backend: Backend) -> None:
    """The trap the core guards against: the next VDI of the name finds the old value;
    where the store stamps values (the sheep, the local store) the stamp is the old VDI's."""
    await backend.create(b"img", MiB)
    old = await backend.lookup(b"img")
    await backend.set_attr(b"img", KEY, b"v1 1 2 3")
    got = (await backend.get_attrs(KEY, [b"img"]))[b"img"]
    assert got.vdi_ctime_ns == old.ctime_ns  # 0 and 0 for dog
    await backend.delete(b"img")
    await backend.create(b"img", 2 * MiB)
    new = await backend.lookup(b"img")
    again = (await backend.get_attrs(KEY, [b"img"]))[b"img"]
    assert again.value == b"v1 1 2 3"
    if new.ctime_ns:
        assert again.vdi_ctime_ns == old.ctime_ns != new.ctime_ns


async def test_many_names_in_one_call(backend: Backend) -> None:
    names = [b"n%02d" % k for k in range(12)]
    for name in names:
        await backend.create(name, MiB)
    for name in names[::3]:
        await backend.set_attr(name, KEY, b"v1 0 0 " + name)
    got = await backend.get_attrs(KEY, names)
    assert {n: a.value for n, a in got.items()} == {n: b"v1 0 0 " + n for n in names[::3]}


@pytest.mark.parametrize("backend", ["fake sheep", pytest.param("real sheep", marks=REAL)],
                         indirect=True)  # fmt: skip
async def test_reads_probe_past_a_slot_another_client_left(backend: SheepBackend) -> None:
    """A delete leaves the slot with its name zeroed; an exclusive set of someone else's
    then goes to the next slot: the direct read finds it there, and a drop removes both."""
    await backend.create(b"img", MiB)
    await backend.set_attr(b"img", KEY, b"v1 1 1 1")
    await backend.drop_attr(b"img", KEY)
    excl = wire._request(b"img", KEY, FLAG_CREAT | wire.FLAG_EXCL, b"v1 2 2 2")
    reply = await backend.client.call(excl)
    assert reply.result == Res.SUCCESS
    assert reply.body[28 - 20 : 32 - 20] != bytes(4)  # attr_id: the slot it took
    assert (await backend.get_attrs(KEY, [b"img"]))[b"img"].value == b"v1 2 2 2"
    await backend.set_attr(b"img", KEY, b"v1 3 3 3")  # the hash slot again
    await backend.drop_attr(b"img", KEY)
    assert await backend.get_attrs(KEY, [b"img"]) == {}


def test_the_attribute_object_is_where_the_sheep_put_it() -> None:
    """The oid of the recorded ``dog vdi setattr wdata key1`` (wire transcript step 39)."""
    assert wire.attr_oid(b"wdata", b"key1") == 0x2056CEF636ABE438
    assert len(wire.payload(b"wdata", b"key1", b"value1")) == wire.ATTR_SIZE == 66_320


def test_dog_never_sees_a_name_as_an_option(monkeypatch) -> None:
    seen: list[list] = []

    async def run(op, name, argv, stdin=b""):
        seen.append(argv)
        if "-d" in argv:
            raise MissingAttribute(op, name, "Attribute 'sheepfs.times' not found")
        return b"", b""

    b = DogBackend("dog")
    monkeypatch.setattr(b, "_run", run)
    trio.run(b.set_attr, b"-d", KEY, b"v1 1 2 3")
    trio.run(b.drop_attr, b"-x", KEY)
    trio.run(b.get_attrs, KEY, [b"--help"])
    assert [a[a.index("--") + 1 :] for a in seen] == [
        [b"-d", KEY, b"v1 1 2 3"], [b"-x", KEY], [b"--help", KEY]
    ]  # fmt: skip
    assert "-d" in seen[1][: seen[1].index("--")]


async def test_the_core_sends_only_attribute_requests_a_sheep_survives(tmp_path) -> None:
    """Through the core on the fake sheep: every GET_VDI_ATTR is WRITE|CREAT or WRITE|DEL
    (never EXCL) with the whole 66,320-byte payload, deletes go on until NO_OBJ, and a VDI's
    key is deleted before the VDI is (rule 36)."""
    from sheepfs.core.filesystem import CoreConfig, Filesystem
    from sheepfs.spool import Spool

    async with fake_cluster(nodes=3) as fake:
        fake.control.set_knob("strict_client", True)
        core = Filesystem(SheepBackend([fake.address(0)], timeout=10), Spool(tmp_path / "s"),
                          CoreConfig(cache_size=8 * MiB))  # fmt: skip
        async with core.running() as fs:
            opened, _ = await fs.create(b"tmp")
            await fs.write(opened.fh, 0, b"data")
            await fs.flush(opened.fh)
            await fs.release(opened.fh)
            await fs.set_times(fs.ino_for(b"tmp"), None, 10**18, 10**18)
            await fs.rename(b"tmp", b"img")
            assert (await fs.lookup(b"img")).mtime_ns == 10**18
            await fs.unlink(b"img")
        seen = fake.control.requests()
        assert fake.events == []
    attr = [r for r in seen if r["op"] == "GET_VDI_ATTR"]
    assert attr and all(r["data_length"] == wire.ATTR_SIZE for r in attr)
    assert {r["flags"] for r in attr} == {0x0101, 0x0401}
    dels = [k for k, r in enumerate(seen) if r["op"] == "GET_VDI_ATTR" and r["flags"] == 0x0401]
    assert seen[dels[-1]]["result"] == "NO_OBJ"
    del_vdi = [k for k, r in enumerate(seen) if r["op"] == "DEL_VDI"]
    assert all(any(d < v for d in dels) for v in del_vdi)
