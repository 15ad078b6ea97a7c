"""The memory backend keeps Sheepdog's rules, and its faults and probes do what tests of the
core rely on: a probe that never fires would let those tests pass on a broken core."""

from __future__ import annotations

import os

import pytest
import trio

from sheepfs.backends.base import MAX_HYPER_SIZE, Layout, VdiKind
from sheepfs.errors import (
    Exists,
    InvalidArgument,
    NameTooLong,
    NoSpace,
    NotFound,
    NotPermitted,
    Timeout,
    TooLarge,
    Unavailable,
)
from tests.memory_backend import MemoryBackend

MiB = 1 << 20


@pytest.fixture
async def store():
    backend = MemoryBackend()
    async with backend:
        yield backend


# -- Sheepdog's rules ----------------------------------------------------------------------


async def test_create_keeps_size_and_layout(store: MemoryBackend) -> None:
    await store.create(b"ec", 5 * MiB + 3, Layout(block_size_shift=20, copies=2, parity=1))
    await store.create(b"plain", 7)
    info = await store.lookup(b"ec")
    assert info is not None
    assert (info.size, info.layout, info.kind) == (
        5 * MiB + 3,
        Layout(20, 2, 1),
        VdiKind.WORKING,
    )
    assert info.object_size == MiB and info.used == 0
    listed = await store.list()
    assert sorted(listed) == [b"ec", b"plain"]
    assert listed[b"plain"].layout == Layout()
    assert await store.lookup(b"missing") is None


async def test_names_are_checked(store: MemoryBackend) -> None:
    with pytest.raises(InvalidArgument):
        await store.create(b"", 1)
    with pytest.raises(InvalidArgument):
        await store.create(b"a\0b", 1)
    with pytest.raises(NameTooLong):
        await store.create(b"x" * 256, 1)
    await store.create(b"x" * 255, 1)
    with pytest.raises(Exists):
        await store.create(b"x" * 255, 1)


async def test_sizes_only_grow_and_have_limits(store: MemoryBackend) -> None:
    await store.create(b"v", 10, Layout(block_size_shift=20))
    await store.resize(b"v", 10)  # the same size is fine
    await store.resize(b"v", 3 * MiB)
    assert store.info(b"v").size == 3 * MiB
    with pytest.raises(InvalidArgument, match="Shrinking"):
        await store.resize(b"v", MiB)
    with pytest.raises(TooLarge):
        await store.resize(b"v", (MiB << 20) + 1)
    await store.resize(b"v", MiB << 20)
    with pytest.raises(TooLarge):
        await store.create(b"big", (4 * MiB << 20) + 1)
    with pytest.raises(NotFound):
        await store.resize(b"nothing", 1)
    with pytest.raises(InvalidArgument):
        await store.create(b"tiny", 1, Layout(block_size_shift=19))


async def test_writes_must_lie_inside_and_reads_stop_at_the_end(store: MemoryBackend) -> None:
    await store.create(b"v", 100)
    await store.write(b"v", 90, b"0123456789")
    with pytest.raises(InvalidArgument):
        await store.write(b"v", 95, b"0123456789")
    with pytest.raises(InvalidArgument):
        await store.read(b"v", 101, 1)
    assert await store.read(b"v", 100, 5) == b""
    assert await store.read(b"v", 85, 100) == bytes(5) + b"0123456789"
    assert store.data(b"v") == bytes(90) + b"0123456789"
    with pytest.raises(NotFound):
        await store.write(b"nothing", 0, b"x")


async def test_unwritten_space_is_free_and_used_counts_objects(store: MemoryBackend) -> None:
    await store.create(b"v", 10 * MiB, Layout(block_size_shift=20))
    await store.write_parts(b"v", 3 * MiB - 2, [b"ab", memoryview(b"cd")])  # objects 2 and 3
    await store.write(b"v", 7 * MiB, bytes(10))  # a write of zeros allocates, as dog's does
    assert store.objects(b"v") == {2, 3, 7}
    assert store.info(b"v").used == 3 * MiB
    assert (await store.statfs()).used == 3 * MiB
    data = store.data(b"v")
    assert len(data) == 10 * MiB and data[3 * MiB - 2 : 3 * MiB + 2] == b"abcd"
    assert data.count(0) == len(data) - 4


async def test_snapshots_freeze_data_and_share_objects(store: MemoryBackend) -> None:
    store.put(b"v", b"old" + bytes(MiB) + b"tail", block_size_shift=20)
    await store.snapshot(b"v", "before")
    assert store.snapshot_tags(b"v") == ["before"]
    assert store.info(b"v").used == 0  # every object is the snapshot's now
    await store.write(b"v", 0, b"new")
    assert store.data(b"v")[:3] == b"new"
    assert store.snapshot_data(b"v", "before")[:3] == b"old"
    assert (await store.statfs()).used == 3 * MiB  # two objects shared, one copied
    with pytest.raises(Exists):
        await store.snapshot(b"v", "before")
    with pytest.raises(InvalidArgument):
        await store.snapshot(b"v", "123")
    with pytest.raises(NotFound):
        await store.snapshot(b"nothing", "t")


async def test_clones_outlive_their_snapshot_and_snapshots_their_vdi(
    store: MemoryBackend,
) -> None:
    layout = Layout(block_size_shift=21, copies=3)
    store.put(b"v", b"data", layout=layout)
    await store.snapshot(b"v", "s")
    await store.clone(b"v", "s", b"c")
    assert store.info(b"c").kind is VdiKind.CLONE and store.info(b"c").layout == layout
    await store.delete_snapshot(b"v", "s")
    assert store.snapshot_tags(b"v") == []
    with pytest.raises(InvalidArgument):
        await store.write(b"c", 4, b"!")  # the clone has the snapshot's size
    await store.resize(b"c", 10)
    await store.write(b"c", 4, b"!")
    assert store.data(b"c") == b"data!" + bytes(5) and store.data(b"v") == b"data"
    await store.snapshot(b"v", "kept")
    await store.delete(b"v")
    assert store.info(b"v") is None and store.snapshot_tags(b"v") == ["kept"]
    await store.create(b"v", 2)  # a new VDI of the name, beside the old one's snapshot
    await store.clone(b"v", "kept", b"back")
    assert store.data(b"back") == b"data"
    with pytest.raises(NotFound):
        await store.clone(b"v", "gone", b"x")
    with pytest.raises(Exists):
        await store.clone(b"v", "kept", b"back")
    with pytest.raises(NotFound):
        await store.delete_snapshot(b"v", "gone")
    with pytest.raises(NotFound):
        await store.delete(b"gone")


async def test_hyper_volumes_cannot_be_snapshotted_or_deleted(store: MemoryBackend) -> None:
    size = (4 * MiB << 20) + 4 * MiB
    info = store.put(b"h", b"x", size=size, hyper=True)
    assert info.hyper and info.max_size == MAX_HYPER_SIZE
    with pytest.raises(NotPermitted):
        await store.snapshot(b"h", "s")
    with pytest.raises(NotPermitted):
        await store.delete(b"h")
    await store.resize(b"h", size * 2)
    await store.write(b"h", size, b"far")
    assert await store.read(b"h", size, 3) == b"far"


async def test_a_full_cluster_refuses_new_objects() -> None:
    store = MemoryBackend(total=2 * MiB)
    async with store:
        await store.create(b"v", 4 * MiB, Layout(block_size_shift=20))
        await store.write(b"v", 0, b"a")
        await store.write(b"v", MiB, b"b")
        with pytest.raises(NoSpace):
            await store.write(b"v", 2 * MiB, b"c")
        await store.write(b"v", 5, b"still fine")  # no new object


async def test_a_write_to_a_vdi_deleted_meanwhile_fails(store: MemoryBackend) -> None:
    store.put(b"v", b"12345678")
    gate = store.gate("write")
    async with trio.open_nursery() as nursery:

        async def write() -> None:
            with pytest.raises(NotFound):
                await store.write(b"v", 0, b"x")

        nursery.start_soon(write)
        await gate.entered.wait()
        await store.delete(b"v")
        await store.create(b"v", 8)
        gate.proceed()
    assert store.data(b"v") == bytes(8)


async def test_calls_need_an_open_backend() -> None:
    store = MemoryBackend()
    store.put(b"v", b"x")
    with pytest.raises(Unavailable):
        await store.read(b"v", 0, 1)
    async with store:
        assert await store.read(b"v", 0, 1) == b"x"
    assert store.in_flight_at_close == 0 and store.in_flight == 0
    with pytest.raises(Unavailable):
        await store.list()
    assert store.count("read") == 2 and store.opens == 1


# -- observation ----------------------------------------------------------------------------


async def test_calls_are_recorded_and_counted(store: MemoryBackend) -> None:
    await store.create(b"v", 20, Layout(block_size_shift=20))
    await store.write(b"v", 2, b"abc")
    await store.read(b"v", 0, 5)
    await store.lookup(b"v")
    assert store.calls == [
        ("open", None),
        ("create", b"v", 20, Layout(block_size_shift=20)),
        ("write", b"v", 2, 3),
        ("read", b"v", 0, 5),
        ("lookup", b"v"),
    ]
    assert store.count("write") == 1 and store.count("write", b"other") == 0


async def test_streams_and_extents_count_as_reads_and_writes(
    store: MemoryBackend, tmp_path
) -> None:
    data = os.urandom(3 * MiB)
    store.put(b"v", data, block_size_shift=20)
    async with store.read_stream(b"v", 0, len(data), piece_size=MiB) as pieces:
        got = b"".join([piece async for piece in pieces])
    assert got == data and store.count("read") == 3
    src = tmp_path / "src"
    src.write_bytes(bytes(10) + b"extent")
    await store.create(b"w", 20)
    fd = os.open(src, os.O_RDONLY)
    try:
        assert await store.write_extents(b"w", fd, [(10, 6)]) == 6
        store.fail("write")
        with pytest.raises(Unavailable):
            await store.write_extents(b"w", fd, [(0, 4)])
    finally:
        os.close(fd)
    assert store.data(b"w") == bytes(10) + b"extent" + bytes(4)
    assert store.count("write") == 2


async def test_concurrent_first_writes_are_caught_and_lose_data(store: MemoryBackend) -> None:
    await store.create(b"v", 2 * MiB, Layout(block_size_shift=20))
    store.delay = 0.01
    async with trio.open_nursery() as nursery:
        nursery.start_soon(store.write, b"v", 0, b"A" * 10)
        nursery.start_soon(store.write, b"v", 100, b"B" * 10)
    assert store.overlapping_first_writes == 1
    head = store.data(b"v")[:110]
    # Each write made the object anew: only the one that landed last is left (F2).
    assert head in (b"A" * 10 + bytes(100), bytes(100) + b"B" * 10)
    assert store.max_in_flight == 2 and store.in_flight == 0


async def test_writes_after_the_first_one_landed_are_safe(store: MemoryBackend) -> None:
    await store.create(b"v", 2 * MiB, Layout(block_size_shift=20))
    await store.write(b"v", 0, b"first")
    store.delay = 0.01
    async with trio.open_nursery() as nursery:
        nursery.start_soon(store.write, b"v", 10, b"A")
        nursery.start_soon(store.write, b"v", 20, b"B")
        nursery.start_soon(store.write, b"v", MiB, b"C")  # another object: its own first
    assert store.overlapping_first_writes == 0
    data = store.data(b"v")
    assert (data[:5], data[10:11], data[20:21], data[MiB : MiB + 1]) == (
        b"first",
        b"A",
        b"B",
        b"C",
    )


async def test_overlapping_writes_to_an_erasure_coded_object_are_caught(
    store: MemoryBackend,
) -> None:
    await store.create(b"ec", 2 * MiB, Layout(block_size_shift=20, copies=2, parity=1))
    await store.create(b"rep", 2 * MiB, Layout(block_size_shift=20, copies=2))
    for name in (b"ec", b"rep"):
        await store.write(name, 0, b"x")
    store.delay = 0.01
    async with trio.open_nursery() as nursery:
        for name in (b"ec", b"rep"):
            nursery.start_soon(store.write, name, 10, b"A")
            nursery.start_soon(store.write, name, 20, b"B")
            nursery.start_soon(store.write, name, MiB, b"C")  # another object
    assert store.overlapping_ec_writes == 1
    assert store.overlapping_first_writes == 0


# -- faults ---------------------------------------------------------------------------------


async def test_fail_once_by_default_with_unavailable(store: MemoryBackend) -> None:
    store.fail("create")
    with pytest.raises(Unavailable, match="injected") as caught:
        await store.create(b"v", 1)
    assert caught.value.op == "create" and caught.value.name == b"v"
    assert store.info(b"v") is None  # nothing happened
    await store.create(b"v", 1)


async def test_fail_times_after_and_error(store: MemoryBackend) -> None:
    store.put(b"v", b"x")
    store.fail("read", NotFound, times=2, after=1)
    assert await store.read(b"v", 0, 1) == b"x"
    for _ in range(2):
        with pytest.raises(NotFound):
            await store.read(b"v", 0, 1)
    assert await store.read(b"v", 0, 1) == b"x"
    store.fail("read", OSError(5, "instance"))
    with pytest.raises(OSError, match="instance"):
        await store.read(b"v", 0, 1)
    store.fail("list", times=None)
    for _ in range(3):
        with pytest.raises(Unavailable):
            await store.list()
    store.heal("list")
    assert b"v" in await store.list()
    with pytest.raises(ValueError):
        store.fail("frobnicate")


async def test_a_landed_failure_does_the_work_then_raises(store: MemoryBackend) -> None:
    store.fail("create", landed=True)
    with pytest.raises(Unavailable):
        await store.create(b"v", 5)
    assert store.info(b"v").size == 5


async def test_hang_blocks_until_release_or_cancel(store: MemoryBackend) -> None:
    store.put(b"v", b"x")
    store.hang("read")
    with trio.move_on_after(0.05) as scope:
        await store.read(b"v", 0, 1)
    assert scope.cancelled_caught and store.in_flight == 0
    got = []
    async with trio.open_nursery() as nursery:

        async def read() -> None:
            got.append(await store.read(b"v", 0, 1))

        nursery.start_soon(read)
        await trio.sleep(0.02)
        assert got == [] and store.in_flight == 1
        store.release("read")
    assert got == [b"x"]
    assert await store.list()  # other operations never hung


async def test_a_gate_holds_calls_until_proceed(store: MemoryBackend) -> None:
    await store.create(b"v", 10)
    gate = store.gate("write")
    done = trio.Event()
    async with trio.open_nursery() as nursery:

        async def write() -> None:
            await store.write(b"v", 0, b"held")
            done.set()

        nursery.start_soon(write)
        nursery.start_soon(write)
        await gate.wait_held(2)
        assert store.in_flight == 2 and store.data(b"v") == bytes(10)
        gate.proceed()
        await done.wait()
    assert store.data(b"v")[:4] == b"held" and gate.passed == 2
    await store.write(b"v", 4, b"free")  # an opened gate lets later calls pass


async def test_a_gate_can_let_calls_fail(store: MemoryBackend) -> None:
    gate = store.gate("create")
    async with trio.open_nursery() as nursery:

        async def create() -> None:
            with pytest.raises(Timeout):
                await store.create(b"v", 1)

        nursery.start_soon(create)
        await gate.entered.wait()
        gate.proceed(Timeout("create", b"v", "held too long"))
    assert store.info(b"v") is None


async def test_delay_makes_calls_take_time(store: MemoryBackend) -> None:
    store.delay = 0.05
    store.delays["list"] = 0.0
    start = trio.current_time()
    await store.create(b"v", 1)
    assert trio.current_time() - start >= 0.05
    start = trio.current_time()
    await store.list()
    assert trio.current_time() - start < 0.05
