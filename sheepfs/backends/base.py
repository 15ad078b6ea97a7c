"""The backend interface: what sheepfs needs of a store of VDIs, in types of its own.

No FUSE types and nothing of one backend here: the layers above see names, bytes, neutral
:class:`VdiInfo` and the :class:`Hints` a backend gives about itself. It fits a CLI (one
process per call, which wants few, long calls) as well as a TCP client of the sheep daemons
(cheap calls, many at once).
"""

from __future__ import annotations

import abc
import enum
import os
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

import trio

from ..errors import InvalidArgument, NameTooLong

#: Default Sheepdog object size shift (4 MiB objects).
DEFAULT_BLOCK_SIZE_SHIFT = 22
#: Longest VDI name Sheepdog keeps (SD_MAX_VDI_LEN 256 including the NUL).
MAX_NAME_LEN = 255
#: A flat VDI has at most 2^20 objects.
MAX_OBJECTS = 1 << 20
#: A hyper volume (``dog vdi create -y``, a B-tree index) holds at most 16 PiB.
MAX_HYPER_SIZE = 1 << 54
#: Erasure coding cuts an object into stripes of this many bytes (SD_EC_DATA_STRIPE_SIZE).
EC_STRIPE_SIZE = 512


class ObjectGeometry:
    """Sizes that follow from a VDI's block_size_shift (shared by VDI infos and files)."""

    block_size_shift: int
    size: int

    @property
    def object_size(self) -> int:
        return 1 << self.block_size_shift

    @property
    def flat_max_size(self) -> int:
        """A flat VDI holds at most 2^20 objects (4 TiB with 4 MiB objects)."""
        return self.object_size * MAX_OBJECTS

    @property
    def hyper(self) -> bool:
        """A VDI larger than a flat one can be is a hyper volume (its index is a B-tree).

        The dog listing does not say which kind a VDI is; its size does, for every hyper
        volume that matters here (one no larger than a flat VDI is handled as a flat one).
        """
        return self.size > self.flat_max_size

    @property
    def max_size(self) -> int:
        return MAX_HYPER_SIZE if self.hyper else self.flat_max_size


@dataclass(frozen=True)
class Layout:
    """How a VDI keeps its data: what a VDI that sheepfs creates again must keep."""

    block_size_shift: int = DEFAULT_BLOCK_SIZE_SHIFT
    #: 0: the cluster's default; else the number of copies, or of data strips with parity.
    copies: int = 0
    #: Parity strips: more than 0 means erasure coded (``copies`` data : ``parity``).
    parity: int = 0

    @property
    def erasure_coded(self) -> bool:
        return self.parity > 0


class VdiKind(enum.Enum):
    WORKING = "working"
    CLONE = "clone"
    SNAPSHOT = "snapshot"


@dataclass(frozen=True)
class VdiInfo(ObjectGeometry):
    """One VDI, as any backend reports it."""

    name: bytes
    size: int
    used: int = 0  # bytes of objects it owns
    ctime: int = 0  # seconds since the epoch
    kind: VdiKind = VdiKind.WORKING
    layout: Layout = Layout()
    snapshot_id: int = 0  # snapshots only
    tag: bytes = b""  # snapshots only; may be empty
    #: The creation time in nanoseconds where the backend knows it finer than ``ctime``
    #: (0: it does not); attribute values are checked against it (:class:`AttrValue`).
    ctime_ns: int = 0

    @property
    def block_size_shift(self) -> int:  # type: ignore[override]
        return self.layout.block_size_shift

    @property
    def is_file(self) -> bool:
        """Working VDIs and clones are files; snapshots are not (yet)."""
        return self.kind is not VdiKind.SNAPSHOT


@dataclass(frozen=True)
class FsStats:
    """Cluster capacity in bytes."""

    total: int
    used: int
    avail: int


@dataclass(frozen=True)
class Hints:
    """What a backend tells the core about itself, so the core's policy fits it."""

    #: The largest request worth sending in one call (a process per call wants them long).
    max_request: int = 64 << 20
    #: Backend calls worth running at once: the supervisor's bound on calls in flight.
    parallel_calls: int = 8
    #: Whether writes to one object must not overlap until its first write is done (always
    #: for Sheepdog: two first writes both allocate the object, and one's data is lost).
    serialize_first_writes: bool = True
    #: Whether every write to one object of an erasure-coded VDI must wait for the last.
    serialize_ec_writes: bool = True
    #: Whether ``lookup`` of one name costs much less than ``list`` of all.
    cheap_lookup: bool = False
    #: Whether reading a few KiB of an object costs much less than reading all of it (a
    #: random reader then gets what it asks for, not a whole object into the cache).
    partial_reads: bool = False
    #: Whether ``get_attrs`` of many names costs about one call (a listing then reads every
    #: VDI's attributes with it; else they are read one name at a time, when needed).
    cheap_attrs: bool = False


@dataclass(frozen=True)
class AttrValue:
    """A VDI attribute as stored. Sheepdog keeps attributes by the VDI's *name*: a value
    outlives its VDI and shows up again for the next VDI of that name (PROTOCOL.md P12),
    so a caller trusts it only for the VDI it was set for."""

    value: bytes
    #: The creation time (ns) of the VDI the value was set for, where the store records it
    #: (0: it does not; the value itself must then say which VDI it belongs to).
    vdi_ctime_ns: int = 0


def check_name(op: str, name: bytes) -> None:
    """Refuse names Sheepdog would mangle: dog silently cuts them at 255 bytes."""
    if not name or b"\0" in name:
        raise InvalidArgument(op, name, "a VDI name is 1 to 255 bytes without NUL")
    if len(name) > MAX_NAME_LEN:
        raise NameTooLong(op, name, f"VDI names are limited to {MAX_NAME_LEN} bytes")


Buffer = bytes | bytearray | memoryview


class Backend(abc.ABC):
    """Where VDIs live. Every method may raise a :class:`sheepfs.errors.BackendError`.

    Used as ``async with backend:`` (connect and probe the cluster; close at the end).
    """

    hints: Hints = Hints()

    async def __aenter__(self) -> Backend:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- lifecycle ---------------------------------------------------------------------------

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect and check the store answers; raise :class:`~sheepfs.errors.Unavailable`."""

    async def aclose(self) -> None:  # noqa: B027 (optional: most backends hold nothing)
        """Let go of connections (the default has none)."""

    # -- metadata ----------------------------------------------------------------------------

    @abc.abstractmethod
    async def list(self) -> dict[bytes, VdiInfo]:
        """Every file-like VDI (working VDIs and clones), by name."""

    async def lookup(self, name: bytes) -> VdiInfo | None:
        """The file-like VDI ``name``, or None. The default lists them all."""
        return (await self.list()).get(name)

    @abc.abstractmethod
    async def create(self, name: bytes, size: int, layout: Layout | None = None) -> None:
        """Create a VDI of exactly ``size`` bytes (raises Exists, TooLarge...), with the
        object size and redundancy of ``layout`` (the cluster's defaults without one)."""

    @abc.abstractmethod
    async def delete(self, name: bytes) -> None:
        """Delete the working VDI ``name`` (raises NotFound if it is not there, NotPermitted
        where the backend cannot delete it safely)."""

    async def recovering(self) -> bool:
        """Whether the cluster is recovering objects after a node came or went. Deletes wait
        for it to end (docs/SHEEPDOG.md F25); a backend that cannot tell says False."""
        return False

    @abc.abstractmethod
    async def resize(self, name: bytes, size: int) -> None:
        """Grow a VDI to ``size``; Sheepdog cannot shrink."""

    @abc.abstractmethod
    async def statfs(self) -> FsStats:
        """Cluster capacity."""

    @abc.abstractmethod
    async def snapshot(self, name: bytes, tag: str) -> None:
        """Freeze the VDI's current data as snapshot ``tag`` (not all digits)."""

    @abc.abstractmethod
    async def clone(self, name: bytes, tag: str, new_name: bytes) -> None:
        """Make ``new_name`` a writable VDI from snapshot ``tag`` of ``name``, sharing its data."""

    @abc.abstractmethod
    async def delete_snapshot(self, name: bytes, tag: str) -> None:
        """Delete snapshot ``tag`` of ``name`` (clones made from it keep working); a ``tag``
        of digits only is a snapshot id, as in dog (a tag is never all digits)."""

    @abc.abstractmethod
    async def snapshots(self, name: bytes) -> list[VdiInfo]:
        """The snapshots of ``name``, oldest first (kind SNAPSHOT, each with its
        ``snapshot_id``; its ``tag`` may be empty); none if there is no such VDI."""

    @abc.abstractmethod
    async def read_snapshot(
        self, name: bytes, snapshot_id: int, offset: int, length: int
    ) -> bytes | bytearray:
        """Up to ``length`` bytes at ``offset`` of snapshot ``snapshot_id`` of ``name``
        (short only at its end); NotFound if there is no such snapshot."""

    # -- attributes: small values kept with a VDI (its times) --------------------------------

    @abc.abstractmethod
    async def get_attrs(self, key: bytes, names: Sequence[bytes]) -> dict[bytes, AttrValue]:
        """Attribute ``key`` of each of ``names`` that has one (a VDI or key missing: left
        out). A value may be a leftover of an earlier VDI of the same name (see
        :class:`AttrValue`)."""

    @abc.abstractmethod
    async def set_attr(self, name: bytes, key: bytes, value: bytes) -> None:
        """Store ``value`` (at most 255 bytes here) as attribute ``key`` of the working VDI
        ``name`` (NotFound if there is none)."""

    @abc.abstractmethod
    async def drop_attr(self, name: bytes, key: bytes) -> None:
        """Remove attribute ``key`` of the working VDI ``name`` (no error if it has none;
        NotFound if there is no such VDI). Sheepdog never removes attributes by itself:
        drop them before deleting a VDI."""

    # -- data --------------------------------------------------------------------------------

    @abc.abstractmethod
    async def read(self, name: bytes, offset: int, length: int) -> bytes | bytearray:
        """Up to ``length`` bytes at ``offset`` (short only at the end of the VDI)."""

    async def read_into(self, name: bytes, offset: int, buf: memoryview) -> int:
        """Fill ``buf`` from ``offset``; the number of bytes read (short at the VDI's end).

        The default copies what :meth:`read` returns; a client that can receive straight
        into the caller's buffer overrides it.
        """
        data = await self.read(name, offset, len(buf))
        buf[: len(data)] = data
        return len(data)

    @asynccontextmanager
    async def read_stream(
        self, name: bytes, offset: int, length: int, piece_size: int = 1 << 22
    ) -> AsyncIterator[AsyncIterator[bytes | bytearray]]:
        """``length`` bytes from ``offset`` in ``piece_size`` pieces, for sequential readers.

        A backend that can stream (one ``dog vdi read`` for the whole range) overrides this;
        the default reads one piece at a time.
        """

        async def pieces() -> AsyncIterator[bytes | bytearray]:
            pos = offset
            while pos < offset + length:
                n = min(piece_size, offset + length - pos)
                data = await self.read(name, pos, n)
                if not data:
                    return
                yield data
                pos += len(data)

        yield pieces()

    @abc.abstractmethod
    async def write_parts(self, name: bytes, offset: int, parts: Sequence[Buffer]) -> None:
        """Write the concatenation of ``parts`` at ``offset`` (scatter-gather: one call,
        no joined copy where the backend can help it); it must lie inside the VDI."""

    async def write(self, name: bytes, offset: int, data: Buffer) -> None:
        """Write exactly ``data`` at ``offset``; the range must lie inside the VDI."""
        await self.write_parts(name, offset, [data])

    async def write_extents(self, name: bytes, fd: int, extents: Sequence[tuple[int, int]]) -> int:
        """Write ``(offset, length)`` extents of the file ``fd`` to the same offsets of the
        VDI (a spool file holds a file's bytes where the VDI will). Returns bytes written.

        The default reads through buffers of at most ``hints.max_request`` bytes; a CLI
        backend overrides it to hand the file itself to its process.
        """
        step = max(1, min(self.hints.max_request, 4 << 20))
        done = 0
        for offset, length in extents:
            pos = offset
            while pos < offset + length:
                n = min(step, offset + length - pos)
                data = await trio.to_thread.run_sync(os.pread, fd, n, pos)
                data += bytes(n - len(data))  # past the file's end it reads zero
                await self.write_parts(name, pos, [data])
                pos += n
                done += n
        return done
