"""An in-memory store with Sheepdog's rules, and the faults and probes tests of the core need.

:class:`MemoryBackend` keeps each VDI as a map of object index to ``bytearray``: objects
are allocated by their first write (of any bytes, zeros included, as ``dog vdi write``
does), unwritten space reads zero and takes no room, a size is fixed at creation and only
grows. Snapshots share objects with their VDI and a VDI copies an object on its first write
after a snapshot, so statfs's ``used`` counts each allocated object once, wherever it is
shared.

For tests it records every call (``calls``), can fail (``fail``), hang (``hang``) or hold
(``gate``) calls of one operation, slows every call (``delay``), and watches what a real
cluster would get wrong without a word: writes that overlap the first (allocating) write
of an object lose data on Sheepdog (SHEEPDOG.md F2), and do so here as well; they are
counted in ``overlapping_first_writes``. Overlapping writes to one object of an
erasure-coded VDI are counted in ``overlapping_ec_writes``.
"""

from __future__ import annotations

import copy
import itertools
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import trio

from sheepfs.backends.base import (
    DEFAULT_BLOCK_SIZE_SHIFT,
    MAX_HYPER_SIZE,
    MAX_OBJECTS,
    AttrValue,
    Backend,
    Buffer,
    FsStats,
    Hints,
    Layout,
    VdiInfo,
    VdiKind,
    check_name,
)
from sheepfs.errors import (
    BackendError,
    Exists,
    InvalidArgument,
    NoSpace,
    NotFound,
    NotPermitted,
    TooLarge,
    Unavailable,
)

#: Every operation name that ``fail``, ``hang``, ``gate`` and ``count`` know.
OPS = frozenset(
    {
        "open",
        "list",
        "lookup",
        "create",
        "delete",
        "resize",
        "statfs",
        "snapshot",
        "clone",
        "delete_snapshot",
        "snapshots",
        "read_snapshot",
        "read",
        "write",
        "get_attrs",
        "set_attr",
        "drop_attr",
    }
)
#: Longest snapshot tag Sheepdog keeps (SD_MAX_VDI_TAG_LEN 256 with the NUL).
MAX_TAG_LEN = 255


@dataclass(eq=False)
class _Vdi:
    """A working VDI, a clone, or a snapshot. ``objects`` may be shared with snapshots."""

    vid: int
    name: bytes
    size: int
    layout: Layout
    kind: VdiKind
    ctime: int
    hyper: bool = False
    ctime_ns: int = 0  # what the store records of its creation, finer than ``ctime``
    tag: str = ""
    objects: dict[int, bytearray] = field(default_factory=dict)
    #: Indexes whose bytearray another VDI (a snapshot, a clone's base) holds too.
    shared: set[int] = field(default_factory=set)

    @property
    def object_size(self) -> int:
        return 1 << self.layout.block_size_shift

    @property
    def max_size(self) -> int:
        return MAX_HYPER_SIZE if self.hyper else self.object_size * MAX_OBJECTS

    def info(self) -> VdiInfo:
        return VdiInfo(
            name=self.name,
            size=self.size,
            used=(len(self.objects) - len(self.shared)) * self.object_size,
            ctime=self.ctime,
            kind=self.kind,
            layout=self.layout,
            snapshot_id=self.vid if self.kind is VdiKind.SNAPSHOT else 0,
            tag=self.tag.encode(),
            ctime_ns=self.ctime_ns,
        )

    def read(self, offset: int, length: int) -> bytes:
        end = min(self.size, offset + length)
        out = bytearray(max(0, end - offset))
        osize = self.object_size
        pos = offset
        while pos < end:
            index, start = divmod(pos, osize)
            n = min(osize - start, end - pos)
            obj = self.objects.get(index)
            if obj is not None:
                out[pos - offset : pos - offset + n] = obj[start : start + n]
            pos += n
        return bytes(out)


@dataclass
class _Fault:
    error: BaseException | type[BaseException] | None
    times: int | None  # None: every call until healed
    skip: int
    landed: bool  # the call takes effect, then raises (a lost reply)


@dataclass
class _Write:
    """A write in flight: which objects it touches and which it found unallocated."""

    vdi: _Vdi
    objects: range
    first: frozenset[int]


class Gate:
    """Holds every call of one operation that arrives while it is closed.

    ``await gate.entered.wait()`` returns once a call is held (``held`` says how many);
    ``proceed()`` lets them all go on (and every later one pass), or fail with ``error``.
    """

    def __init__(self, op: str) -> None:
        self.op = op
        self.entered = trio.Event()
        self.held = 0
        self.passed = 0  # calls held and then let go
        self._open = trio.Event()
        self._error: BaseException | None = None

    def proceed(self, error: BaseException | None = None) -> None:
        self._error = error
        self._open.set()

    @property
    def closed(self) -> bool:
        return not self._open.is_set()

    async def wait_held(self, count: int) -> None:
        """Wait until ``count`` calls are held at once (tests of parallel calls)."""
        while self.held < count:
            await trio.sleep(0.001)

    async def _hold(self) -> None:
        self.held += 1
        self.entered.set()
        try:
            await self._open.wait()
        finally:
            self.held -= 1
        self.passed += 1
        if self._error is not None:
            raise copy.copy(self._error)


class MemoryBackend(Backend):
    """A Sheepdog-like store in memory, with fault injection (see the module docstring)."""

    def __init__(
        self,
        hints: Hints | None = None,
        total: int = 1 << 40,
        delay: float = 0.0,
        stamps: bool = True,
    ) -> None:
        self.hints = hints or Hints()
        #: Whether the store records each VDI's creation time in ns, in its listing and
        #: with each attribute (the sheep backend does; dog shows seconds and no stamp).
        self.stamps = stamps
        #: Attributes by (VDI name, key): (value, creation time of the VDI it was set
        #: for). As in Sheepdog they outlive their VDI (docs/PROTOCOL.md P12).
        self.attrs: dict[tuple[bytes, bytes], tuple[bytes, int]] = {}
        self.total = total
        #: Seconds every call takes; ``delays[op]`` overrides it for one operation.
        self.delay = delay
        self.delays: dict[str, float] = {}
        self.calls: list[tuple] = []
        self.is_open = False
        self.opens = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.in_flight_ops: Counter[str] = Counter()
        self.max_in_flight_ops: Counter[str] = Counter()
        #: Calls still in flight when ``aclose`` began (an ordered shutdown leaves none).
        self.in_flight_at_close: int | None = None
        self.overlapping_first_writes = 0
        self.overlapping_ec_writes = 0
        self._vdis: dict[bytes, _Vdi] = {}
        self._snaps: dict[bytes, dict[str, _Vdi]] = {}
        self._vids = itertools.count(1)
        self._faults: dict[str, list[_Fault]] = {}
        self._hangs: dict[str, trio.Event] = {}
        self._gates: dict[str, Gate] = {}
        self._writes: list[_Write] = []

    # -- controls for tests ------------------------------------------------------------------

    def fail(
        self,
        op: str,
        error: BaseException | type[BaseException] | None = None,
        times: int | None = 1,
        after: int = 0,
        landed: bool = False,
    ) -> None:
        """Make the next ``times`` calls of ``op`` (after ``after`` that pass) raise ``error``
        (default ``Unavailable(op, name, "injected")``; a class gets those arguments).
        ``times=None`` fails every call until :meth:`heal`; ``landed`` lets the call take
        effect before it raises, as a reply lost after the cluster did the work."""
        _check_op(op)
        self._faults.setdefault(op, []).append(_Fault(error, times, after, landed))

    def heal(self, op: str | None = None) -> None:
        """Forget the faults still waiting for ``op`` (for every operation without one)."""
        if op is None:
            self._faults.clear()
        else:
            self._faults.pop(op, None)

    def hang(self, op: str) -> None:
        """Calls of ``op`` block from now until :meth:`release` (or until cancelled)."""
        _check_op(op)
        self._hangs.setdefault(op, trio.Event())

    def release(self, op: str) -> None:
        event = self._hangs.pop(op, None)
        if event is not None:
            event.set()

    def gate(self, op: str) -> Gate:
        """Hold calls of ``op`` until the returned gate's ``proceed()``."""
        _check_op(op)
        gate = Gate(op)
        self._gates[op] = gate
        return gate

    def count(self, op: str, name: bytes | None = None) -> int:
        """Calls of ``op`` so far (of those on ``name`` only, given one)."""
        return sum(1 for c in self.calls if c[0] == op and (name is None or c[1] == name))

    # -- helpers for tests (synchronous, not counted) --------------------------------------

    def put(
        self,
        name: bytes,
        data: bytes = b"",
        block_size_shift: int = DEFAULT_BLOCK_SIZE_SHIFT,
        layout: Layout | None = None,
        size: int | None = None,
        hyper: bool = False,
    ) -> VdiInfo:
        """Create VDI ``name`` holding ``data`` (of ``size`` bytes, default ``len(data)``);
        only objects with a non-zero byte are allocated, as sheepfs would upload them."""
        layout = layout or Layout(block_size_shift)
        vdi = self._new(
            "put", name, len(data) if size is None else size, layout, VdiKind.WORKING, hyper
        )
        osize = vdi.object_size
        for index in range(0, len(data), osize):
            piece = data[index : index + osize]
            if any(piece):
                obj = bytearray(osize)
                obj[: len(piece)] = piece
                vdi.objects[index // osize] = obj
        return vdi.info()

    def data(self, name: bytes, offset: int = 0, length: int | None = None) -> bytes:
        """VDI ``name`` from ``offset`` (all of it by default; KeyError if there is none)."""
        vdi = self._vdis[name]
        return vdi.read(offset, vdi.size - offset if length is None else length)

    def info(self, name: bytes) -> VdiInfo | None:
        vdi = self._vdis.get(name)
        return vdi.info() if vdi else None

    def names(self) -> list[bytes]:
        return sorted(self._vdis)

    def objects(self, name: bytes) -> set[int]:
        """Indexes of the allocated objects of VDI ``name``."""
        return set(self._vdis[name].objects)

    def snapshot_tags(self, name: bytes) -> list[str]:
        """Tags of the snapshots of ``name``, oldest first."""
        return list(self._snaps.get(name, {}))

    def snapshot_data(self, name: bytes, tag: str) -> bytes:
        snap = self._snaps[name][tag]
        return snap.read(0, snap.size)

    @property
    def allocated(self) -> int:
        """Bytes of distinct allocated objects in the whole store (snapshots included)."""
        seen: dict[int, int] = {}
        for vdi in self._all():
            for obj in vdi.objects.values():
                seen[id(obj)] = len(obj)
        return sum(seen.values())

    # -- the machinery every call goes through -------------------------------------------

    def _all(self) -> list[_Vdi]:
        return [
            *self._vdis.values(),
            *(s for snaps in self._snaps.values() for s in snaps.values()),
        ]

    def _fault_for(self, op: str) -> _Fault | None:
        """The fault this call of ``op`` meets, decided when it arrives."""
        hit = None
        for fault in self._faults.get(op, []):
            if fault.skip > 0:
                fault.skip -= 1
            elif hit is None and (fault.times is None or fault.times > 0):
                if fault.times is not None:
                    fault.times -= 1
                hit = fault
        self._faults[op] = [f for f in self._faults.get(op, []) if f.times != 0]
        return hit

    @staticmethod
    def _error(fault: _Fault, op: str, name: bytes | None) -> BaseException:
        error = fault.error
        if error is None:
            return Unavailable(op, name, "injected")
        if isinstance(error, type):
            return error(op, name, "injected") if issubclass(error, BackendError) else error()
        return copy.copy(error)

    def _begin(self, op: str, name: bytes | None, *args: object) -> _Fault | None:
        """Record the call and count it in flight (the caller's ``finally`` must call
        :meth:`_leave`, also when this raises); the fault it meets, decided on arrival."""
        self.calls.append((op, name, *args))
        self.in_flight += 1
        self.in_flight_ops[op] += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        self.max_in_flight_ops[op] = max(self.max_in_flight_ops[op], self.in_flight_ops[op])
        if not self.is_open and op != "open":
            raise Unavailable(op, name, "the backend is not open")
        return self._fault_for(op)

    async def _wait(self, op: str, name: bytes | None, fault: _Fault | None) -> None:
        """Take the call's time: hangs, gates and delays; then fail as told."""
        await trio.lowlevel.checkpoint()  # a call is I/O: others run meanwhile
        hang = self._hangs.get(op)
        if hang is not None:
            await hang.wait()
        gate = self._gates.get(op)
        if gate is not None and gate.closed:
            await gate._hold()
        delay = self.delays.get(op, self.delay)
        if delay > 0:
            await trio.sleep(delay)
        if fault is not None and not fault.landed:
            raise self._error(fault, op, name)

    async def _enter(self, op: str, name: bytes | None, *args: object) -> _Fault | None:
        fault = self._begin(op, name, *args)
        await self._wait(op, name, fault)
        return fault

    def _leave(self, op: str) -> None:
        self.in_flight -= 1
        self.in_flight_ops[op] -= 1

    def _after(self, fault: _Fault | None, op: str, name: bytes | None) -> None:
        """A landed fault raises once the call did its work."""
        if fault is not None and fault.landed:
            raise self._error(fault, op, name)

    def _get(self, op: str, name: bytes) -> _Vdi:
        check_name(op, name)
        vdi = self._vdis.get(name)
        if vdi is None:
            raise NotFound(op, name, "No VDI found")
        return vdi

    def _new(
        self, op: str, name: bytes, size: int, layout: Layout, kind: VdiKind, hyper: bool = False
    ) -> _Vdi:
        check_name(op, name)
        if not 20 <= layout.block_size_shift <= 31:
            raise InvalidArgument(op, name, "the object size shift must be 20 to 31")
        if layout.copies < 0 or layout.parity < 0 or (layout.parity and not layout.copies):
            raise InvalidArgument(op, name, f"invalid redundancy {layout}")
        if size < 0:
            raise InvalidArgument(op, name, "a VDI size cannot be negative")
        limit = MAX_HYPER_SIZE if hyper else (1 << layout.block_size_shift) * MAX_OBJECTS
        if size > limit:
            raise TooLarge(op, name, f"VDI size is larger than {limit} bytes")
        if name in self._vdis:
            raise Exists(op, name, "VDI exists already")
        now = time.time_ns()
        vdi = _Vdi(
            vid=next(self._vids),
            name=name,
            size=size,
            layout=layout,
            kind=kind,
            ctime=now // 10**9,
            hyper=hyper,
            ctime_ns=now if self.stamps else 0,
        )
        self._vdis[name] = vdi
        return vdi

    # -- Backend: lifecycle and metadata -----------------------------------------------------

    async def open(self) -> None:
        try:
            fault = await self._enter("open", None)
            self.is_open = True
            self.opens += 1
            self.in_flight_at_close = None
            self._after(fault, "open", None)
        finally:
            self._leave("open")

    async def aclose(self) -> None:
        self.in_flight_at_close = self.in_flight
        self.is_open = False

    async def list(self) -> dict[bytes, VdiInfo]:
        try:
            fault = await self._enter("list", None)
            out = {name: vdi.info() for name, vdi in self._vdis.items()}
            self._after(fault, "list", None)
            return out
        finally:
            self._leave("list")

    async def lookup(self, name: bytes) -> VdiInfo | None:
        try:
            fault = await self._enter("lookup", name)
            check_name("lookup", name)
            vdi = self._vdis.get(name)
            self._after(fault, "lookup", name)
            return vdi.info() if vdi else None
        finally:
            self._leave("lookup")

    async def create(self, name: bytes, size: int, layout: Layout | None = None) -> None:
        try:
            fault = await self._enter("create", name, size, layout)
            self._new("create", name, size, layout or Layout(), VdiKind.WORKING)
            self._after(fault, "create", name)
        finally:
            self._leave("create")

    async def delete(self, name: bytes) -> None:
        try:
            fault = await self._enter("delete", name)
            vdi = self._get("delete", name)
            if vdi.hyper:
                raise NotPermitted("delete", name, "hyper volumes cannot be deleted")
            del self._vdis[name]
            self._after(fault, "delete", name)
        finally:
            self._leave("delete")

    async def resize(self, name: bytes, size: int) -> None:
        try:
            fault = await self._enter("resize", name, size)
            vdi = self._get("resize", name)
            if size < vdi.size:
                raise InvalidArgument("resize", name, "Shrinking VDIs is not implemented")
            if size > vdi.max_size:
                raise TooLarge(
                    "resize", name, f"New VDI size is too large. Max size is {vdi.max_size}"
                )
            vdi.size = size
            self._after(fault, "resize", name)
        finally:
            self._leave("resize")

    async def statfs(self) -> FsStats:
        try:
            fault = await self._enter("statfs", None)
            used = self.allocated
            self._after(fault, "statfs", None)
            return FsStats(total=self.total, used=used, avail=max(0, self.total - used))
        finally:
            self._leave("statfs")

    async def snapshot(self, name: bytes, tag: str) -> None:
        try:
            fault = await self._enter("snapshot", name, tag)
            vdi = self._get("snapshot", name)
            _check_tag("snapshot", name, tag)
            if vdi.hyper:
                raise NotPermitted(
                    "snapshot", name, "creating a snapshot of hypervolume is not supported"
                )
            snaps = self._snaps.setdefault(name, {})
            if tag in snaps:
                raise Exists("snapshot", name, f"tag {tag} is existed")
            # The snapshot keeps the vid, the working VDI moves to a new one (F13).
            snaps[tag] = _Vdi(
                vid=vdi.vid,
                name=name,
                size=vdi.size,
                layout=vdi.layout,
                kind=VdiKind.SNAPSHOT,
                ctime=int(time.time()),
                tag=tag,
                objects=dict(vdi.objects),
                shared=set(vdi.objects),
            )
            vdi.vid = next(self._vids)
            vdi.shared = set(vdi.objects)
            now = time.time_ns()  # the new working inode has a creation time of its own
            vdi.ctime, vdi.ctime_ns = now // 10**9, now if self.stamps else 0
            self._after(fault, "snapshot", name)
        finally:
            self._leave("snapshot")

    async def clone(self, name: bytes, tag: str, new_name: bytes) -> None:
        try:
            fault = await self._enter("clone", name, tag, new_name)
            check_name("clone", name)
            snap = self._snaps.get(name, {}).get(tag)
            if snap is None:
                raise NotFound("clone", name, f"Failed to find requested tag {tag}")
            vdi = self._new("clone", new_name, snap.size, snap.layout, VdiKind.CLONE)
            vdi.objects = dict(snap.objects)
            vdi.shared = set(snap.objects)
            self._after(fault, "clone", new_name)
        finally:
            self._leave("clone")

    async def delete_snapshot(self, name: bytes, tag: str) -> None:
        try:
            fault = await self._enter("delete_snapshot", name, tag)
            check_name("delete snapshot", name)
            snaps = self._snaps.get(name, {})
            if tag.isdigit():  # an id, as dog reads -s
                tag = next((t for t, s in snaps.items() if s.vid == int(tag)), tag)
            if tag not in snaps:
                raise NotFound("delete snapshot", name, f"Failed to find requested tag {tag}")
            del snaps[tag]  # clones and the working VDI keep the objects they share
            if not snaps:
                del self._snaps[name]
            self._after(fault, "delete_snapshot", name)
        finally:
            self._leave("delete_snapshot")

    async def snapshots(self, name: bytes) -> list[VdiInfo]:
        try:
            fault = await self._enter("snapshots", name)
            check_name("snapshots", name)
            infos = [s.info() for s in self._snaps.get(name, {}).values()]
            self._after(fault, "snapshots", name)
            return sorted(infos, key=lambda i: i.snapshot_id)
        finally:
            self._leave("snapshots")

    async def read_snapshot(self, name: bytes, snapshot_id: int, offset: int, length: int) -> bytes:
        try:
            fault = await self._enter("read_snapshot", name, snapshot_id, offset, length)
            check_name("read", name)
            snap = next(
                (s for s in self._snaps.get(name, {}).values() if s.vid == snapshot_id), None
            )
            if snap is None:
                raise NotFound("read", name, f"no snapshot {snapshot_id}")
            if offset > snap.size:
                raise InvalidArgument("read", name, "Read offset is beyond the end of the VDI")
            data = snap.read(offset, length)
            self._after(fault, "read_snapshot", name)
            return data
        finally:
            self._leave("read_snapshot")

    # -- Backend: attributes -----------------------------------------------------------------

    async def get_attrs(self, key: bytes, names: Sequence[bytes]) -> dict[bytes, AttrValue]:
        try:
            fault = await self._enter("get_attrs", names[0] if len(names) == 1 else None, key)
            found = {}
            for name in names:
                check_name("get attributes", name)
                got = self.attrs.get((name, key))
                if name in self._vdis and got is not None:
                    found[name] = AttrValue(got[0], got[1])
            self._after(fault, "get_attrs", None)
            return found
        finally:
            self._leave("get_attrs")

    async def set_attr(self, name: bytes, key: bytes, value: bytes) -> None:
        try:
            fault = await self._enter("set_attr", name, key, value)
            vdi = self._get("set attribute", name)
            self.attrs[name, key] = (bytes(value), vdi.ctime_ns)
            self._after(fault, "set_attr", name)
        finally:
            self._leave("set_attr")

    async def drop_attr(self, name: bytes, key: bytes) -> None:
        try:
            fault = await self._enter("drop_attr", name, key)
            self._get("drop attribute", name)
            self.attrs.pop((name, key), None)
            self._after(fault, "drop_attr", name)
        finally:
            self._leave("drop_attr")

    # -- Backend: data -----------------------------------------------------------------------

    async def read(self, name: bytes, offset: int, length: int) -> bytes:
        try:
            fault = await self._enter("read", name, offset, length)
            vdi = self._get("read", name)
            if offset < 0 or length < 0:
                raise InvalidArgument("read", name, "negative offset or length")
            if offset > vdi.size:
                raise InvalidArgument("read", name, "Read offset is beyond the end of the VDI")
            data = vdi.read(offset, length)
            self._after(fault, "read", name)
            return data
        finally:
            self._leave("read")

    async def write_parts(self, name: bytes, offset: int, parts: Sequence[Buffer]) -> None:
        data = b"".join(bytes(p) for p in parts)
        write = None
        try:
            fault = self._begin("write", name, offset, len(data))
            # Arrival: what the cluster sees as the write starts (dog reads the inode then).
            vdi = self._vdis.get(name)
            if vdi is not None and data:
                write = self._arrive(vdi, offset, len(data))
            await self._wait("write", name, fault)
            vdi = self._get("write", name)
            if offset < 0 or offset + len(data) > vdi.size:
                raise InvalidArgument(
                    "write",
                    name,
                    f"write of {len(data)} bytes at {offset} does not lie inside the VDI "
                    f"({vdi.size} bytes)",
                )
            if write is not None and write.vdi is not vdi:
                raise NotFound("write", name, "the VDI was deleted while the write ran")
            if data:
                self._apply(vdi, offset, data, write.first if write else frozenset())
            self._after(fault, "write", name)
        finally:
            if write is not None:
                self._writes.remove(write)
            self._leave("write")

    def _arrive(self, vdi: _Vdi, offset: int, length: int) -> _Write:
        osize = vdi.object_size
        objects = range(offset // osize, (offset + length - 1) // osize + 1)
        others = [w for w in self._writes if w.vdi is vdi]
        if any(w.first.intersection(objects) for w in others):
            self.overlapping_first_writes += 1
        if vdi.layout.erasure_coded and any(
            w.objects.start < objects.stop and objects.start < w.objects.stop for w in others
        ):
            self.overlapping_ec_writes += 1
        first = frozenset(i for i in objects if i not in vdi.objects)
        write = _Write(vdi, objects, first)
        self._writes.append(write)
        return write

    def _apply(self, vdi: _Vdi, offset: int, data: bytes, first: frozenset[int]) -> None:
        osize = vdi.object_size
        touched = range(offset // osize, (offset + len(data) - 1) // osize + 1)
        allocating = sum(osize for i in touched if i not in vdi.objects)
        if allocating and self.allocated + allocating > self.total:
            raise NoSpace("write", vdi.name, "no space left in the cluster")
        pos = offset
        end = offset + len(data)
        while pos < end:
            index, start = divmod(pos, osize)
            n = min(osize - start, end - pos)
            if index in first:
                # CREATE_AND_WRITE: the object is made anew from this write alone; a write
                # that overlapped another first write of it wipes what that one wrote (F2).
                vdi.objects[index] = bytearray(osize)
                vdi.shared.discard(index)
            elif index not in vdi.objects:
                vdi.objects[index] = bytearray(osize)
            elif index in vdi.shared:  # copy on write: the snapshot keeps the original
                vdi.objects[index] = bytearray(vdi.objects[index])
                vdi.shared.discard(index)
            vdi.objects[index][start : start + n] = data[pos - offset : pos - offset + n]
            pos += n


def _check_op(op: str) -> None:
    if op not in OPS:
        raise ValueError(f"unknown operation {op!r}; one of {sorted(OPS)}")


def _check_tag(op: str, name: bytes, tag: str) -> None:
    if not tag or tag.isdigit() or len(tag.encode()) > MAX_TAG_LEN or "\0" in tag:
        raise InvalidArgument(op, name, f"invalid snapshot tag {tag!r} (empty or all digits)")
