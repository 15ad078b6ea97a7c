"""The FUSE adapter: translates kernel requests into calls of the FUSE-free core.

It only translates: file names to VDI names and back (:mod:`sheepfs.names`), core
attributes to ``EntryAttributes``, handles to ``FileInfo``, and failures to errno (in
:func:`_guarded`, the one place). Everything a request means is decided in
:class:`sheepfs.core.filesystem.Filesystem`.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import stat
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import pyfuse3

from ..core.filesystem import Attrs, Filesystem, Opened
from ..errors import BackendError, errno_for
from ..names import SNAPSHOTS_DIR, BadName, decode, encode
from .pagecache import DropBehind
from .snapdir import SnapshotTree
from .xattrs import RootXattrs

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])
ROOT = pyfuse3.ROOT_INODE


@dataclass
class Options:
    """What the kernel is told about every file."""

    attr_timeout: float = 1.0
    uid: int = os.getuid()
    gid: int = os.getgid()
    file_mode: int = 0o644
    dir_mode: int = 0o755
    show_snapshots: bool = False  # list .snapshots in the root (it is reachable either way)


def _guarded(op: str, by_handle: bool = False) -> Callable[[F], F]:
    """Turn a failure of ``op`` into one log line and the right errno.

    Refusals the user asked for (``quiet``) are logged at debug level; a bug costs one
    request (EIO and its traceback in the log), never the mount. ``by_handle``: the first
    argument is a handle, which names the file in the log line of an OSError.
    """

    def wrap(method: F) -> F:
        @functools.wraps(method)
        async def guarded(self: SheepFS, *args: Any) -> Any:
            handle = args[0] if by_handle else None
            try:
                return await method(self, *args)
            except pyfuse3.FUSEError:
                raise
            except BackendError as e:
                self.errors += not e.quiet
                log.log(logging.DEBUG if e.quiet else logging.ERROR, "%s: %s", op, e)
                raise pyfuse3.FUSEError(errno_for(e)) from None
            except OSError as e:
                self.errors += 1
                log.error("%s%s failed: %s", op, self._who(handle), e)
                raise pyfuse3.FUSEError(errno_for(e)) from None
            except Exception:
                self.errors += 1
                log.exception("%s%s failed unexpectedly", op, self._who(handle))
                raise pyfuse3.FUSEError(errno.EIO) from None

        return guarded  # type: ignore[return-value]

    return wrap


def _vdi_name(file_name: bytes) -> bytes:
    try:
        return decode(file_name)
    except BadName as e:
        log.debug("name %r refused: %s", file_name, e)  # the user's own typing: debug
        raise pyfuse3.FUSEError(e.errno) from None


class SheepFS(pyfuse3.Operations):
    supports_dot_lookup = True
    enable_writeback_cache = False

    def __init__(self, core: Filesystem, opts: Options):
        super().__init__()
        self.core = core
        self.opts = opts
        self.errors = 0
        self.drop_behind = DropBehind()
        #: Open directory handles: the directory of each, and the listing it reads through.
        self._dirs: dict[int, int] = {}
        self._listings: dict[int, list[tuple[bytes, pyfuse3.EntryAttributes]]] = {}
        self._last_dir = 0
        self.snapdir = SnapshotTree(core, self._base)
        #: Run once, on the first request after FUSE's INIT (the kernel is set up by then).
        self.after_init: Callable[[], None] | None = None
        #: The root's extended attributes: the daemon's status (set by the command line).
        self.xattrs = RootXattrs()

    def _who(self, fh: int | None) -> str:
        """`` 'NAME'`` of the file open as ``fh``, for a log line."""
        try:
            return f" {self.core.name_of_handle(fh)!r}" if fh is not None else ""
        except KeyError:
            return ""

    def _first_request(self) -> None:
        if self.after_init is not None:
            hook, self.after_init = self.after_init, None
            hook()

    # -- attributes --------------------------------------------------------------------------

    def _base(self) -> pyfuse3.EntryAttributes:
        """What every entry shares: owner and cache timeouts."""
        e = pyfuse3.EntryAttributes()
        e.entry_timeout = e.attr_timeout = self.opts.attr_timeout
        e.st_uid, e.st_gid = self.opts.uid, self.opts.gid
        return e

    def _entry(self, a: Attrs) -> pyfuse3.EntryAttributes:
        e = self._base()
        e.st_ino = a.ino
        e.st_mode = stat.S_IFREG | self.opts.file_mode
        e.st_nlink = 1
        e.st_size = a.size
        e.st_blksize = a.object_size
        e.st_blocks = -(-a.used // 512)
        e.st_ctime_ns = a.ctime * 1_000_000_000
        e.st_mtime_ns = e.st_ctime_ns if a.mtime_ns is None else a.mtime_ns
        e.st_atime_ns = e.st_ctime_ns if a.atime_ns is None else a.atime_ns
        return e

    def _root(self) -> pyfuse3.EntryAttributes:
        e = self._base()
        e.st_ino = ROOT
        e.st_mode = stat.S_IFDIR | self.opts.dir_mode
        e.st_nlink = 2
        e.st_blksize = 4096
        return e

    def _modes(self) -> tuple[int, int]:
        return self.opts.dir_mode, self.opts.file_mode

    @staticmethod
    def _file_info(o: Opened) -> pyfuse3.FileInfo:
        return pyfuse3.FileInfo(fh=o.fh, direct_io=o.direct_io, keep_cache=o.keep_cache)

    # -- metadata ----------------------------------------------------------------------------

    @_guarded("lookup")
    async def lookup(self, parent_inode, name, ctx=None):
        self._first_request()
        if self.snapdir.owns(parent_inode):
            return await self.snapdir.lookup(parent_inode, name, *self._modes())
        if parent_inode != ROOT:
            raise pyfuse3.FUSEError(errno.ENOENT)
        if name in (b".", b".."):
            return self._root()
        if name == SNAPSHOTS_DIR:
            return self.snapdir.top()
        return self._entry(await self.core.lookup(_vdi_name(name)))

    @_guarded("getattr")
    async def getattr(self, inode, ctx=None):
        self._first_request()
        if inode == ROOT:
            return self._root()
        if self.snapdir.owns(inode):
            return self.snapdir.getattr(inode, *self._modes())
        return self._entry(await self.core.getattr(inode))

    @_guarded("setattr")
    async def setattr(self, inode, attr, fields, fh, ctx):
        if inode == ROOT:
            return self._root()
        if self.snapdir.owns(inode):  # times are accepted, not kept (`touch` of a snapshot)
            if fields.update_size:
                raise pyfuse3.FUSEError(errno.EROFS)
            return self.snapdir.getattr(inode, *self._modes())
        if fields.update_size:
            a = await self.core.truncate(inode, attr.st_size, fh)
        if fields.update_atime or fields.update_mtime:  # kept with the VDI
            atime = attr.st_atime_ns if fields.update_atime else None
            mtime = attr.st_mtime_ns if fields.update_mtime else None
            a = await self.core.set_times(inode, fh, atime, mtime)
        elif not fields.update_size:
            # Mode and owner are not stored in Sheepdog: accepted and not kept, so tools
            # such as rsync -a and cp -p work (the README says so).
            a = await self.core.getattr(inode)
        return self._entry(a)

    async def opendir(self, inode, ctx):
        if inode != ROOT and not self.snapdir.is_dir(inode):
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        self._last_dir += 1
        self._dirs[self._last_dir] = inode
        return self._last_dir

    async def _list(self, inode: int) -> list[tuple[bytes, pyfuse3.EntryAttributes]]:
        if inode != ROOT:
            return await self.snapdir.entries(inode, *self._modes())
        listing = [(encode(name), self._entry(a)) for name, a in await self.core.readdir()]
        if self.opts.show_snapshots:
            listing.insert(0, (SNAPSHOTS_DIR, self.snapdir.top()))
        return listing

    @_guarded("readdir")
    async def readdir(self, fh, start_id, token):
        # The kernel asks a page of entries at a time (about 30 with their attributes):
        # the listing is taken once per pass over the directory, not once per page.
        entries = self._listings.get(fh)
        if entries is None or start_id == 0:
            entries = self._listings[fh] = await self._list(self._dirs.get(fh, ROOT))
        for i in range(start_id, len(entries)):
            name, entry = entries[i]
            if not pyfuse3.readdir_reply(token, name, entry, i + 1):
                break

    async def releasedir(self, fh):
        self._listings.pop(fh, None)
        self._dirs.pop(fh, None)

    @_guarded("statfs")
    async def statfs(self, ctx):
        stats = await self.core.statfs()
        s = pyfuse3.StatvfsData()
        s.f_bsize = 1 << 22
        s.f_frsize = 4096
        s.f_blocks = stats.total // s.f_frsize
        s.f_bfree = stats.avail // s.f_frsize
        s.f_bavail = s.f_bfree
        s.f_files = 1 << 24  # SD_NR_VDIS
        s.f_ffree = s.f_favail = s.f_files - self.core.names_known
        s.f_namemax = 255
        return s

    # -- files -------------------------------------------------------------------------------

    @_guarded("open")
    async def open(self, inode, flags, ctx):
        writing = flags & os.O_ACCMODE != os.O_RDONLY
        if self.snapdir.owns(inode):  # a snapshot never changes: the kernel may keep it
            fh = self.core.snapshots.open(inode, writing or bool(flags & os.O_TRUNC))
            return pyfuse3.FileInfo(fh=fh, direct_io=False, keep_cache=True)
        opened = await self.core.open(inode, writing, truncate=bool(flags & os.O_TRUNC))
        return self._file_info(opened)

    @_guarded("create")
    async def create(self, parent_inode, name, mode, flags, ctx):
        if self.snapdir.owns(parent_inode):  # `touch .snapshots/NAME/TAG` takes one
            return await self.snapdir.take(parent_inode, name, self.opts.file_mode)
        if parent_inode != ROOT:
            raise pyfuse3.FUSEError(errno.ENOENT)
        opened, attrs = await self.core.create(_vdi_name(name))
        return self._file_info(opened), self._entry(attrs)

    @_guarded("read", by_handle=True)
    async def read(self, fh, off, size):
        if self.snapdir.owns(fh):
            return await self.core.snapshots.read(fh, off, size)
        data = await self.core.read(fh, off, size)
        ino = self.core.sequential(fh)
        if ino is not None:
            self.drop_behind.read(ino, off)
        return data

    @_guarded("write", by_handle=True)
    async def write(self, fh, off, buf):
        if self.snapdir.owns(fh):
            raise pyfuse3.FUSEError(errno.EROFS)
        return await self.core.write(fh, off, buf)

    @_guarded("flush", by_handle=True)
    async def flush(self, fh):
        # close() waits for FLUSH, not RELEASE: this is where upload errors reach the user.
        if not self.snapdir.owns(fh):
            await self.core.flush(fh)

    @_guarded("fsync", by_handle=True)
    async def fsync(self, fh, datasync):
        if not self.snapdir.owns(fh):
            await self.core.fsync(fh)

    async def release(self, fh):
        if self.snapdir.owns(fh):
            self.core.snapshots.release(fh)
            return
        ino = await self.core.release(fh)
        if ino is not None:
            self.drop_behind.forget(ino)

    @_guarded("unlink")
    async def unlink(self, parent_inode, name, ctx):
        if self.snapdir.owns(parent_inode):  # `rm .snapshots/NAME/TAG` deletes it
            return await self.snapdir.remove(parent_inode, name)
        if parent_inode != ROOT:
            raise pyfuse3.FUSEError(errno.ENOENT)
        await self.core.unlink(_vdi_name(name))

    @_guarded("rename")
    async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):
        if self.snapdir.owns(parent_inode_old) or self.snapdir.owns(parent_inode_new):
            raise pyfuse3.FUSEError(errno.EPERM)  # a snapshot's tag is fixed when it is taken
        if parent_inode_old != ROOT or parent_inode_new != ROOT:
            raise pyfuse3.FUSEError(errno.ENOENT)
        src, dst = _vdi_name(name_old), _vdi_name(name_new)
        if flags & pyfuse3.RENAME_EXCHANGE:
            self.core.refuse_exchange(src)
        await self.core.rename(src, dst, noreplace=bool(flags & pyfuse3.RENAME_NOREPLACE))

    async def forget(self, inode_list):
        pass

    async def getxattr(self, inode, name, ctx):
        return self.xattrs.get(inode, name, ctx.pid)  # the root's tell the status (xattrs.py)

    async def listxattr(self, inode, ctx):
        return self.xattrs.names(inode)

    # -- not supported in a flat store of disk images ----------------------------------------

    async def mkdir(self, parent_inode, name, mode, ctx):
        raise pyfuse3.FUSEError(errno.EPERM)

    async def rmdir(self, parent_inode, name, ctx):
        if self.snapdir.owns(parent_inode) or (parent_inode == ROOT and name == SNAPSHOTS_DIR):
            raise pyfuse3.FUSEError(errno.EPERM)
        raise pyfuse3.FUSEError(errno.ENOTDIR if name not in (b".", b"..") else errno.EINVAL)

    async def symlink(self, parent_inode, name, target, ctx):
        raise pyfuse3.FUSEError(errno.EPERM)

    async def link(self, inode, new_parent_inode, new_name, ctx):
        raise pyfuse3.FUSEError(errno.EPERM)

    async def mknod(self, parent_inode, name, mode, rdev, ctx):
        raise pyfuse3.FUSEError(errno.EPERM)
