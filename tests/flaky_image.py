"""A FUSE file system of one file, ``img``, backed by a local image, whose reads of one byte
range fail with EIO while a control file exists: a disk whose reads fail for a while, as
a file on sheepfs reads while its cluster restarts. Writes always pass.

Run in a process of its own: ``python tests/flaky_image.py IMAGE MOUNTPOINT START END
CONTROL``; it serves until unmounted.
"""

from __future__ import annotations

import errno
import os
import stat
import sys
from pathlib import Path

import pyfuse3
import trio

IMG = b"img"
INODE = pyfuse3.ROOT_INODE + 1


class FlakyImage(pyfuse3.Operations):
    def __init__(self, image: Path, start: int, end: int, control: Path) -> None:
        super().__init__()
        self.fd = os.open(image, os.O_RDWR)
        self.start, self.end, self.control = start, end, control

    async def getattr(self, inode: int, ctx=None) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = inode
        if inode == pyfuse3.ROOT_INODE:
            a.st_mode, a.st_nlink = stat.S_IFDIR | 0o755, 2
        elif inode == INODE:
            a.st_mode, a.st_nlink = stat.S_IFREG | 0o644, 1
            a.st_size = os.fstat(self.fd).st_size
        else:
            raise pyfuse3.FUSEError(errno.ENOENT)
        a.attr_timeout = a.entry_timeout = 0
        return a

    async def lookup(self, parent: int, name: bytes, ctx=None) -> pyfuse3.EntryAttributes:
        if parent != pyfuse3.ROOT_INODE or name != IMG:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return await self.getattr(INODE)

    async def opendir(self, inode: int, ctx) -> int:
        return inode

    async def readdir(self, fh: int, start_id: int, token) -> None:
        if start_id == 0:
            pyfuse3.readdir_reply(token, IMG, await self.getattr(INODE), 1)

    async def open(self, inode: int, flags: int, ctx) -> pyfuse3.FileInfo:
        if inode != INODE:
            raise pyfuse3.FUSEError(errno.EISDIR)
        return pyfuse3.FileInfo(fh=INODE, direct_io=True)  # every read reaches us

    async def read(self, fh: int, off: int, size: int) -> bytes:
        if off < self.end and off + size > self.start and self.control.exists():
            raise pyfuse3.FUSEError(errno.EIO)
        return os.pread(self.fd, size, off)

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        return os.pwrite(self.fd, buf, off)

    async def fsync(self, fh: int, datasync: bool) -> None:
        os.fsync(self.fd)

    async def setattr(self, inode, attr, fields, fh, ctx) -> pyfuse3.EntryAttributes:
        return await self.getattr(inode)


def main() -> None:
    image, mountpoint, start, end, control = sys.argv[1:6]
    ops = FlakyImage(Path(image), int(start), int(end), Path(control))
    pyfuse3.init(ops, mountpoint, {"fsname=flaky", "default_permissions"})
    try:
        trio.run(pyfuse3.main)
    finally:
        pyfuse3.close(unmount=False)


if __name__ == "__main__":
    main()
