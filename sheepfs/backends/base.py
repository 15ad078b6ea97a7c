"""The async Backend interface. No FUSE types here: a backend only knows VDIs and bytes."""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

from ..errors import InvalidArgument, NameTooLong

#: Default Sheepdog object size shift (4 MiB objects).
DEFAULT_BLOCK_SIZE_SHIFT = 22
#: Longest VDI name Sheepdog keeps (SD_MAX_VDI_LEN 256 including the NUL).
MAX_NAME_LEN = 255
#: A flat VDI has at most 2^20 objects.
MAX_OBJECTS = 1 << 20
#: A hyper volume (``dog vdi create -y``, a B-tree index) holds at most 16 PiB.
MAX_HYPER_SIZE = 1 << 54


class ObjectGeometry:
    """Sizes that follow from a VDI's block_size_shift (shared by listing rows and files)."""

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

        The listing does not say which kind a VDI is; its size does, for every hyper volume
        that matters here (one no larger than a flat VDI is handled as a flat one).
        """
        return self.size > self.flat_max_size

    @property
    def max_size(self) -> int:
        return MAX_HYPER_SIZE if self.hyper else self.flat_max_size


#: Erasure coding cuts an object into stripes of this many bytes (SD_EC_DATA_STRIPE_SIZE).
EC_STRIPE_SIZE = 512


@dataclass(frozen=True)
class Layout:
    """How a VDI keeps its data: what a VDI that sheepfs creates again must keep."""

    block_size_shift: int = DEFAULT_BLOCK_SIZE_SHIFT
    copies: str = ""  # "" the cluster's default, "N" copies, "D:P" erasure coded

    @property
    def erasure_coded(self) -> bool:
        return ":" in self.copies


def check_name(op: str, name: bytes) -> None:
    """Refuse names Sheepdog would mangle: dog silently cuts them at 255 bytes."""
    if not name or b"\0" in name:
        raise InvalidArgument(op, name, "a VDI name is 1 to 255 bytes without NUL")
    if len(name) > MAX_NAME_LEN:
        raise NameTooLong(op, name, f"VDI names are limited to {MAX_NAME_LEN} bytes")


@dataclass(frozen=True)
class VdiInfo(ObjectGeometry):
    """One row of the VDI list, as Sheepdog reports it."""

    name: bytes
    kind: str  # "=" working, "s" snapshot, "c" clone
    snap_id: int
    size: int
    used: int
    shared: int
    ctime: int
    vid: int
    copies: str
    tag: bytes
    block_size_shift: int = DEFAULT_BLOCK_SIZE_SHIFT

    @property
    def layout(self) -> Layout:
        return Layout(self.block_size_shift, self.copies)

    @property
    def is_file(self) -> bool:
        """Working VDIs and clones are files; snapshots are not (yet)."""
        return self.kind in ("=", "c")


@dataclass(frozen=True)
class FsStats:
    """Cluster capacity in bytes (the ``Total`` row of ``dog node info -r``)."""

    total: int
    used: int
    avail: int


class Backend(abc.ABC):
    """Where VDIs live. Every method may raise a :class:`sheepfs.errors.BackendError`."""

    @abc.abstractmethod
    async def check(self) -> None:
        """Raise :class:`~sheepfs.errors.Unavailable` unless the store answers."""

    @abc.abstractmethod
    async def list(self) -> dict[bytes, VdiInfo]:
        """Every file-like VDI (working VDIs and clones), by name."""

    @abc.abstractmethod
    async def read(self, name: bytes, offset: int, length: int) -> bytes:
        """Up to ``length`` bytes at ``offset`` (short only at the end of the VDI)."""

    @asynccontextmanager
    async def read_stream(
        self, name: bytes, offset: int, length: int, piece_size: int = 1 << 22
    ) -> AsyncIterator[AsyncIterator[bytes | bytearray]]:
        """``length`` bytes from ``offset`` in ``piece_size`` pieces, for sequential readers.

        A backend that can stream (one ``dog vdi read`` for the whole range) overrides this;
        the default reads one piece at a time.
        """

        async def pieces() -> AsyncIterator[bytes]:
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
    async def write(self, name: bytes, offset: int, data: bytes | memoryview) -> None:
        """Write exactly ``data`` at ``offset``; the range must lie inside the VDI."""

    async def write_parts(
        self, name: bytes, offset: int, parts: Sequence[bytes | bytearray | memoryview]
    ) -> None:
        """Write the concatenation of ``parts`` at ``offset`` (one call where possible)."""
        await self.write(name, offset, b"".join(parts))

    @abc.abstractmethod
    async def write_from_file(
        self, name: bytes, offset: int, length: int, path: str, file_offset: int
    ) -> None:
        """Write ``length`` bytes taken from ``path`` at ``file_offset`` to ``offset``."""

    @abc.abstractmethod
    async def create(self, name: bytes, size: int, layout: Layout | None = None) -> None:
        """Create a VDI of exactly ``size`` bytes (raises Exists, TooLarge...), with the
        object size and redundancy of ``layout`` (the cluster's defaults without one)."""

    @abc.abstractmethod
    async def delete(self, name: bytes) -> None:
        """Delete the working VDI ``name`` (raises NotFound if it is not there, NotPermitted
        where the backend cannot delete it safely)."""

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
        """Delete snapshot ``tag`` of ``name`` (clones made from it keep working)."""
