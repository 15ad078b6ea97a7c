"""Snapshots as read-only files: ``.snapshots/NAME/TAG`` (docs/DEVELOPING.md, README).

Like ZFS's ``.zfs/snapshot``: a tree reachable by path and hidden from the root's listing,
so ``rsync -a`` and ``du`` of the mount never walk it. ``.snapshots/NAME/`` holds one file
per snapshot of VDI ``NAME``, named by its tag (by its snapshot id where it has none),
whose size, time and use are the snapshot's own. Creating a file there takes a snapshot
(after what this mount holds of NAME is written to the cluster); removing one deletes it.

Everything here has its inode and handle numbers from :data:`FIRST_INODE` up, apart from
the VDI files' (which count from 2), so the adapter can tell the two trees apart by number.
A snapshot never changes, so it is read straight from the backend (the kernel's page cache
keeps what it read); the list of one VDI's snapshots is kept for the listing TTL.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass

import trio

from ..backends.base import Backend, VdiInfo
from ..errors import Exists, InvalidArgument, NotFound, ReadOnly
from .filetimes import snapshotted
from .openfile import OpenFile
from .openfiles import OpenFiles

log = logging.getLogger(__name__)

#: The ``.snapshots`` directory's inode; every inode and handle of the tree is above it.
FIRST_INODE = 1 << 48
MAX_TAG_LEN = 255


@dataclass(frozen=True)
class SnapshotFile:
    """One snapshot file: its VDI, its id, and what it shows."""

    ino: int
    name: bytes  # the VDI's
    info: VdiInfo

    @property
    def file_name(self) -> bytes:
        return file_name_of(self.info)


def file_name_of(info: VdiInfo) -> bytes:
    """A snapshot's name in its directory: its tag, or its id where it has no tag (a tag is
    never all digits, so the two cannot meet)."""
    return info.tag or str(info.snapshot_id).encode()


def check_tag(name: bytes, tag: bytes) -> str:
    """The tag as the backends take it; EINVAL for one Sheepdog cannot hold."""
    if tag.isdigit():
        raise InvalidArgument("snapshot", name, "a snapshot tag cannot be all digits")
    if len(tag) > MAX_TAG_LEN or b"\0" in tag:
        raise InvalidArgument("snapshot", name, f"a snapshot tag is at most {MAX_TAG_LEN} bytes")
    try:
        return tag.decode()
    except UnicodeDecodeError:
        raise InvalidArgument("snapshot", name, "a snapshot tag must be UTF-8") from None


class Snapshots:
    """The snapshot tree: inode numbers, listings, handles (see the module docstring)."""

    def __init__(
        self,
        backend: Backend,
        files: OpenFiles,
        open_file: Callable[[bytes], OpenFile | None],
        ttl: float,
        read_only: bool,
    ) -> None:
        self.backend = backend
        self.files = files
        self.open_file = open_file  # the file of a VDI name open here, if any
        self.ttl = ttl
        self.read_only = read_only
        self._numbers = itertools.count(FIRST_INODE + 1)
        self._dirs: dict[bytes, int] = {}  # VDI name -> its directory's inode
        self._dir_names: dict[int, bytes] = {}
        self._files: dict[tuple[bytes, int], SnapshotFile] = {}  # (VDI, snapshot id)
        self._by_ino: dict[int, SnapshotFile] = {}
        self._lists: dict[bytes, tuple[float, list[VdiInfo]]] = {}
        self._handles: dict[int, SnapshotFile] = {}

    @staticmethod
    def owns(number: int) -> bool:
        """Whether an inode or handle number is one of the snapshot tree's."""
        return number >= FIRST_INODE

    # -- inodes ------------------------------------------------------------------------------

    def dir_ino(self, name: bytes) -> int:
        ino = self._dirs.get(name)
        if ino is None:
            ino = self._dirs[name] = next(self._numbers)
            self._dir_names[ino] = name
        return ino

    def dir_name(self, ino: int) -> bytes | None:
        """The VDI whose snapshots directory ``ino`` is (None: not such a directory)."""
        return self._dir_names.get(ino)

    def file(self, ino: int) -> SnapshotFile | None:
        return self._by_ino.get(ino)

    def _file_for(self, name: bytes, info: VdiInfo) -> SnapshotFile:
        key = (name, info.snapshot_id)
        known = self._files.get(key)
        ino = known.ino if known is not None else next(self._numbers)
        f = self._files[key] = self._by_ino[ino] = SnapshotFile(ino, name, info)
        return f

    # -- listing -----------------------------------------------------------------------------

    async def of(self, name: bytes) -> list[SnapshotFile]:
        """``name``'s snapshots, oldest first, at most ``ttl`` seconds old."""
        cached = self._lists.get(name)
        if cached is None or trio.current_time() - cached[0] >= self.ttl:
            started = trio.current_time()
            cached = self._lists[name] = (started, await self.backend.snapshots(name))
        return [self._file_for(name, info) for info in cached[1]]

    async def lookup(self, name: bytes, file_name: bytes) -> SnapshotFile:
        for f in await self.of(name):
            if f.file_name == file_name:
                return f
        raise NotFound("lookup", name, f"no snapshot {file_name!r}", quiet=True)

    # -- taking and deleting -----------------------------------------------------------------

    def _check_writable(self, op: str, name: bytes) -> None:
        if self.read_only:
            raise ReadOnly(op, name, "the mount is read-only", quiet=True)

    async def take(self, name: bytes, file_name: bytes) -> SnapshotFile:
        """Snapshot ``name`` as tag ``file_name``, once what we hold of it is in the cluster."""
        self._check_writable("snapshot", name)
        tag = check_tag(name, file_name)
        if any(f.file_name == file_name for f in await self.of(name)):
            raise Exists("snapshot", name, f"snapshot {tag!r} exists", quiet=True)
        f = self.open_file(name)
        if f is not None and self.files.has_pending(f):
            await self.files.sync(f)
        before = await self.backend.lookup(name)
        await self.backend.snapshot(name, tag)
        self._lists.pop(name, None)
        if before is not None:  # the working VDI has a new inode now: its times follow it
            await snapshotted(self.files.times, before, f)
        log.info("snapshot %r of %r taken", tag, name)
        return await self.lookup(name, file_name)

    async def remove(self, name: bytes, file_name: bytes) -> None:
        self._check_writable("delete snapshot", name)
        f = await self.lookup(name, file_name)
        await self.backend.delete_snapshot(name, file_name.decode(errors="surrogateescape"))
        self._lists.pop(name, None)
        self._files.pop((name, f.info.snapshot_id), None)
        log.info("snapshot %r of %r deleted", file_name, name)

    # -- reading -----------------------------------------------------------------------------

    def open(self, ino: int, writing: bool) -> int:
        """A handle of snapshot file ``ino`` (EROFS for writing: a snapshot never changes)."""
        f = self._by_ino.get(ino)
        if f is None:
            raise NotFound("open", None, "no such snapshot", quiet=True)
        if writing:
            raise ReadOnly("open", f.name, "a snapshot is read-only", quiet=True)
        return self.handle(f)

    def handle(self, f: SnapshotFile) -> int:
        fh = next(self._numbers)
        self._handles[fh] = f
        return fh

    async def read(self, fh: int, offset: int, size: int) -> bytes | bytearray:
        f = self._handles[fh]
        if offset >= f.info.size:
            return b""
        length = min(size, f.info.size - offset)
        return await self.backend.read_snapshot(f.name, f.info.snapshot_id, offset, length)

    def release(self, fh: int) -> None:
        self._handles.pop(fh, None)
