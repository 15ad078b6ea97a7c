"""The FUSE side of ``.snapshots/``: attributes and listings of the snapshot tree.

The adapter hands every request on an inode or handle of that tree here (the core's
:class:`~sheepfs.core.snapshots.Snapshots` numbers them apart from the VDI files). Names
in it are encoded as in the root (:mod:`sheepfs.names`): ``.snapshots/NAME/`` is VDI
``NAME``'s directory, and its files are named by tag.
"""

from __future__ import annotations

import errno
import stat
from collections.abc import Callable

import pyfuse3

from ..core.filesystem import Filesystem
from ..core.snapshots import FIRST_INODE, SnapshotFile
from ..names import BadName, decode, encode

#: The directory's own inode.
TOP = FIRST_INODE


def _decoded(file_name: bytes) -> bytes:
    try:
        return decode(file_name)
    except BadName as e:
        raise pyfuse3.FUSEError(e.errno) from None


class SnapshotTree:
    """``.snapshots`` and below; ``base`` fills in what every entry shares (owner, timeout)."""

    def __init__(self, core: Filesystem, base: Callable[[], pyfuse3.EntryAttributes]):
        self.core = core
        self.snaps = core.snapshots
        self.base = base

    def owns(self, number: int) -> bool:
        return self.snaps.owns(number)

    def is_dir(self, ino: int) -> bool:
        return ino == TOP or self.snaps.dir_name(ino) is not None

    # -- attributes --------------------------------------------------------------------------

    def _dir(self, ino: int, mode: int) -> pyfuse3.EntryAttributes:
        e = self.base()
        e.st_ino = ino
        e.st_mode = stat.S_IFDIR | mode
        e.st_nlink = 2
        e.st_blksize = 4096
        return e

    def top(self) -> pyfuse3.EntryAttributes:
        return self._dir(TOP, 0o555)  # nothing is made in it: its directories come from VDIs

    def _file(self, f: SnapshotFile, file_mode: int) -> pyfuse3.EntryAttributes:
        e = self.base()
        e.st_ino = f.ino
        e.st_mode = stat.S_IFREG | (file_mode & 0o444)
        e.st_nlink = 1
        e.st_size = f.info.size
        e.st_blksize = f.info.object_size
        e.st_blocks = -(-f.info.used // 512)
        e.st_atime_ns = e.st_mtime_ns = e.st_ctime_ns = f.info.ctime * 1_000_000_000
        return e

    def getattr(self, ino: int, dir_mode: int, file_mode: int) -> pyfuse3.EntryAttributes:
        if ino == TOP:
            return self.top()
        if self.snaps.dir_name(ino) is not None:
            return self._dir(ino, dir_mode)
        f = self.snaps.file(ino)
        if f is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._file(f, file_mode)

    # -- names -------------------------------------------------------------------------------

    def vdi_of(self, dir_ino: int) -> bytes:
        """The VDI whose snapshots directory ``dir_ino`` is; EPERM for the top."""
        name = self.snaps.dir_name(dir_ino)
        if name is None:
            raise pyfuse3.FUSEError(errno.EPERM if dir_ino == TOP else errno.ENOENT)
        return name

    async def lookup(
        self, parent: int, file_name: bytes, dir_mode: int, file_mode: int
    ) -> pyfuse3.EntryAttributes:
        if file_name in (b".", b".."):
            return (
                self.top() if file_name == b".." or parent == TOP else self._dir(parent, dir_mode)
            )
        if parent == TOP:
            name = _decoded(file_name)
            if self.core.file(name) is None and await self.core.catalog.get(name) is None:
                if not await self.snaps.of(name):
                    raise pyfuse3.FUSEError(errno.ENOENT)
            return self._dir(self.snaps.dir_ino(name), dir_mode)
        f = await self.snaps.lookup(self.vdi_of(parent), _decoded(file_name))
        return self._file(f, file_mode)

    async def entries(
        self, dir_ino: int, dir_mode: int, file_mode: int
    ) -> list[tuple[bytes, pyfuse3.EntryAttributes]]:
        """What ``readdir`` of ``dir_ino`` shows: the top lists every file VDI, a VDI's
        directory its snapshots."""
        if dir_ino == TOP:
            names = sorted({n for n, _ in await self.core.readdir()})
            return [(encode(n), self._dir(self.snaps.dir_ino(n), dir_mode)) for n in names]
        snaps = await self.snaps.of(self.vdi_of(dir_ino))
        return [(encode(f.file_name), self._file(f, file_mode)) for f in snaps]

    # -- changes -----------------------------------------------------------------------------

    async def take(self, parent: int, file_name: bytes, file_mode: int):
        """``touch .snapshots/NAME/TAG``: snapshot NAME; the new file's handle and entry."""
        f = await self.snaps.take(self.vdi_of(parent), _decoded(file_name))
        info = pyfuse3.FileInfo(fh=self.snaps.handle(f), direct_io=False, keep_cache=True)
        return info, self._file(f, file_mode)

    async def remove(self, parent: int, file_name: bytes) -> None:
        await self.snaps.remove(self.vdi_of(parent), _decoded(file_name))
