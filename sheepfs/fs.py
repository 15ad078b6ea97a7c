"""The FUSE front: inodes, names, open handles and errno, over :mod:`sheepfs.files`.

One flat directory. Every working VDI (and clone) is a regular file; its inode number is
given out on first sight and kept for the daemon's lifetime, so a name always maps to the
same inode while we run.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import pyfuse3

from .backends.base import Backend, VdiInfo
from .catalog import Catalog
from .errors import BackendError, NotFound, errno_for
from .files import Files, VdiFile
from .names import BadName, decode, encode
from .pagecache import DropBehind

log = logging.getLogger(__name__)

T = TypeVar("T")
ROOT = pyfuse3.ROOT_INODE


@dataclass
class Options:
    """What the filesystem needs from the command line."""

    attr_timeout: float = 1.0
    uid: int = os.getuid()
    gid: int = os.getgid()
    file_mode: int = 0o644
    dir_mode: int = 0o755
    read_only: bool = False
    direct_io: bool = False  # bypass the page cache (see _file_info)


class SheepFS(pyfuse3.Operations):
    supports_dot_lookup = True
    enable_writeback_cache = False

    def __init__(self, backend: Backend, catalog: Catalog, files: Files, opts: Options):
        super().__init__()
        self.backend = backend
        self.catalog = catalog
        self.files = files
        self.opts = opts
        self._ino_by_name: dict[bytes, int] = {}
        self._name_by_ino: dict[int, bytes] = {}
        self._next_ino = ROOT + 1
        self._handles: dict[int, VdiFile] = {}
        self._next_fh = 1
        self.errors = 0
        self.drop_behind = DropBehind()
        #: Run once, on the first request after FUSE's INIT (the kernel is set up by then).
        self.after_init: Callable[[], None] | None = None

    def _first_request(self) -> None:
        if self.after_init is not None:
            hook, self.after_init = self.after_init, None
            hook()

    # -- helpers ----------------------------------------------------------------------------

    def ino_for(self, name: bytes) -> int:
        """The inode number of a VDI name (given out on first sight, kept while we run)."""
        ino = self._ino_by_name.get(name)
        if ino is None:
            ino = self._next_ino
            self._next_ino += 1
            self._ino_by_name[name] = ino
            self._name_by_ino[ino] = name
        return ino

    def _rename_ino(self, ino: int, old: bytes, new: bytes) -> None:
        self._ino_by_name.pop(old, None)
        stale = self._ino_by_name.pop(new, None)
        if stale is not None:
            self._name_by_ino.pop(stale, None)
        self._ino_by_name[new] = ino
        self._name_by_ino[ino] = new

    def _open_file(self, name: bytes) -> VdiFile | None:
        ino = self._ino_by_name.get(name)
        f = self.files.by_id.get(ino) if ino is not None else None
        return f if f is not None and not f.unlinked else None

    async def _guard(self, op: str, name: bytes | None, call: Callable[[], Awaitable[T]]) -> T:
        """Run ``call``; turn failures into one log line and the right errno."""
        try:
            return await call()
        except pyfuse3.FUSEError:
            raise
        except BackendError as e:
            self.errors += 1
            level = logging.DEBUG if isinstance(e, NotFound) and op == "lookup" else logging.ERROR
            log.log(level, "%s: %s", op, e)
            raise pyfuse3.FUSEError(errno_for(e)) from None
        except OSError as e:
            self.errors += 1
            who = f" {name!r}" if name is not None else ""
            log.error("%s%s failed: %s", op, who, e)
            raise pyfuse3.FUSEError(errno_for(e)) from None
        except Exception:
            # A bug must cost one request, not the mount.
            self.errors += 1
            log.exception("%s %r failed unexpectedly", op, name)
            raise pyfuse3.FUSEError(errno.EIO) from None

    @staticmethod
    def _vdi_name(file_name: bytes) -> bytes:
        try:
            return decode(file_name)
        except BadName as e:
            raise pyfuse3.FUSEError(e.errno) from None

    def _attrs(
        self, ino: int, size: int, ctime: int, used: int, object_size: int
    ) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = ino
        a.generation = 0
        a.entry_timeout = self.opts.attr_timeout
        a.attr_timeout = self.opts.attr_timeout
        a.st_mode = stat.S_IFREG | self.opts.file_mode
        a.st_nlink = 1
        a.st_uid = self.opts.uid
        a.st_gid = self.opts.gid
        a.st_rdev = 0
        a.st_size = size
        a.st_blksize = object_size
        a.st_blocks = -(-used // 512)
        a.st_atime_ns = a.st_mtime_ns = a.st_ctime_ns = ctime * 1_000_000_000
        return a

    def _root_attrs(self) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = ROOT
        a.entry_timeout = a.attr_timeout = self.opts.attr_timeout
        a.st_mode = stat.S_IFDIR | self.opts.dir_mode
        a.st_nlink = 2
        a.st_uid = self.opts.uid
        a.st_gid = self.opts.gid
        a.st_size = 0
        a.st_blksize = 4096
        return a

    def _file_attrs(self, f: VdiFile) -> pyfuse3.EntryAttributes:
        used = f.used
        if f.staged is not None and (not f.exists or f.fresh):
            used = os.fstat(f.staged.fd).st_blocks * 512
        return self._attrs(f.id, f.size, f.ctime, used, f.object_size)

    def _info_attrs(self, info: VdiInfo) -> pyfuse3.EntryAttributes:
        return self._attrs(
            self.ino_for(info.name), info.size, info.ctime, info.used, info.object_size
        )

    async def _attrs_for_name(self, name: bytes) -> pyfuse3.EntryAttributes:
        f = self._open_file(name)
        if f is not None:
            return self._file_attrs(f)
        info = await self.catalog.get(name)
        if info is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._info_attrs(info)

    def _check_writable(self) -> None:
        if self.opts.read_only:
            raise pyfuse3.FUSEError(errno.EROFS)

    # -- metadata ---------------------------------------------------------------------------

    async def lookup(self, parent_inode, name, ctx=None):
        self._first_request()
        if parent_inode != ROOT:
            raise pyfuse3.FUSEError(errno.ENOENT)
        if name in (b".", b".."):
            return self._root_attrs()
        vdi = self._vdi_name(name)
        return await self._guard("lookup", vdi, lambda: self._attrs_for_name(vdi))

    async def getattr(self, inode, ctx=None):
        self._first_request()
        if inode == ROOT:
            return self._root_attrs()
        f = self.files.by_id.get(inode)
        if f is not None and not f.unlinked:
            return self._file_attrs(f)
        name = self._name_by_ino.get(inode)
        if name is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return await self._guard("getattr", name, lambda: self._attrs_for_name(name))

    async def setattr(self, inode, attr, fields, fh, ctx):
        if inode == ROOT:
            return self._root_attrs()
        if fields.update_size:
            self._check_writable()
            f = self._handles.get(fh) if fh is not None else self.files.by_id.get(inode)
            name = self._name_by_ino.get(inode)
            if f is None:
                if name is None:
                    raise pyfuse3.FUSEError(errno.ENOENT)
                info = await self._guard("truncate", name, lambda: self.catalog.get(name))
                if info is None:
                    raise pyfuse3.FUSEError(errno.ENOENT)
                f = self.files.open_live(inode, info)
                try:
                    await self._guard(
                        "truncate", name, lambda: self.files.truncate(f, attr.st_size)
                    )
                finally:
                    await self._guard("truncate", name, lambda: self.files.release(f))
            else:
                await self._guard("truncate", f.name, lambda: self.files.truncate(f, attr.st_size))
        # Mode, owner and times are not stored in Sheepdog: accepted and not kept, so tools
        # such as rsync -a and cp -p work (the README says so).
        return await self.getattr(inode, ctx)

    async def opendir(self, inode, ctx):
        if inode != ROOT:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return inode

    async def readdir(self, fh, start_id, token):
        vdis = await self._guard("readdir", None, self.catalog.all)
        entries: dict[bytes, pyfuse3.EntryAttributes] = {}
        for name, info in vdis.items():
            entries[name] = self._info_attrs(info)
        for f in self.files.by_id.values():
            if not f.unlinked:
                entries[f.name] = self._file_attrs(f)
        names = sorted(entries)
        for i in range(start_id, len(names)):
            if not pyfuse3.readdir_reply(token, encode(names[i]), entries[names[i]], i + 1):
                break

    async def releasedir(self, fh):
        pass

    async def statfs(self, ctx):
        stats = await self._guard("statfs", None, self.backend.statfs)
        s = pyfuse3.StatvfsData()
        s.f_bsize = 1 << 22
        s.f_frsize = 4096
        s.f_blocks = stats.total // s.f_frsize
        s.f_bfree = stats.avail // s.f_frsize
        s.f_bavail = s.f_bfree
        s.f_files = 1 << 24  # SD_NR_VDIS
        s.f_ffree = s.f_favail = s.f_files - len(self._ino_by_name)
        s.f_namemax = 255
        return s

    # -- files ------------------------------------------------------------------------------

    def _new_handle(self, f: VdiFile) -> int:
        fh = self._next_fh
        self._next_fh += 1
        self._handles[fh] = f
        return fh

    def _file_info(self, fh: int, f: VdiFile, writing: bool) -> pyfuse3.FileInfo:
        """How the kernel caches this open (pyfuse3 would keep the page cache by default).

        A file first opened for writing bypasses the page cache (``direct_io``), and so do
        the handles that overlap that one: without the writeback cache every write comes
        to us anyway, and skipping the page-cache copy makes writes faster. Readers go
        through the page cache, so the kernel's read-ahead turns small reads (sha256sum's
        32 KiB, qemu-img's) into 1 MiB requests; ``--direct-io`` bypasses it for them too
        (faster for large-block readers such as dd bs=1M, much slower for small ones).
        Handles of one file never mix the two, so none sees stale pages. Cached pages are
        kept only while another handle has the file open, or for a new file of ours:
        between opens another Sheepdog client may have changed the VDI.
        """
        if f.opens <= 1:  # the first handle decides for every handle that overlaps it
            f.direct_io = writing or self.opts.direct_io
        keep = not f.direct_io and (f.opens > 1 or not f.exists)
        return pyfuse3.FileInfo(fh=fh, direct_io=f.direct_io, keep_cache=keep)

    async def open(self, inode, flags, ctx):
        writing = flags & os.O_ACCMODE != os.O_RDONLY
        if writing:
            self._check_writable()
        f = self.files.by_id.get(inode)
        if f is not None and not f.unlinked:
            f.opens += 1
        else:
            name = self._name_by_ino.get(inode)
            if name is None:
                raise pyfuse3.FUSEError(errno.ENOENT)
            info = await self._guard("open", name, lambda: self.catalog.get(name))
            if info is None:
                raise pyfuse3.FUSEError(errno.ENOENT)
            f = self.files.open_live(inode, info)
        fh = self._new_handle(f)
        fi = self._file_info(fh, f, writing)
        if flags & os.O_TRUNC and f.size:
            # libfuse negotiates atomic O_TRUNC: the truncation arrives here, not in setattr.
            try:
                await self._guard("open", f.name, lambda: self.files.truncate(f, 0))
            except pyfuse3.FUSEError:
                await self.release(fh)
                raise
        return fi

    async def create(self, parent_inode, name, mode, flags, ctx):
        self._check_writable()
        if parent_inode != ROOT:
            raise pyfuse3.FUSEError(errno.ENOENT)
        vdi = self._vdi_name(name)
        if self._open_file(vdi) is not None:
            raise pyfuse3.FUSEError(errno.EEXIST)
        if await self._guard("create", vdi, lambda: self.catalog.get(vdi)) is not None:
            raise pyfuse3.FUSEError(errno.EEXIST)
        ino = self.ino_for(vdi)
        f = await self._guard("create", vdi, lambda: _sync(lambda: self.files.create(ino, vdi)))
        log.debug("staging new file %r in %s", vdi, f.staged.path if f.staged else "?")
        return self._file_info(self._new_handle(f), f, writing=True), self._file_attrs(f)

    async def read(self, fh, off, size):
        f = self._handles[fh]
        data = await self._guard("read", f.name, lambda: self.files.read(f, off, size))
        if not f.direct_io and self.files.cache.sequential(f):
            self.drop_behind.read(f.id, off)
        return data

    async def write(self, fh, off, buf):
        self._check_writable()
        f = self._handles[fh]
        return await self._guard("write", f.name, lambda: self.files.write(f, off, buf))

    async def flush(self, fh):
        # close() waits for FLUSH, not RELEASE: this is where upload errors reach the user.
        f = self._handles[fh]
        if f.broken is not None:
            await self._guard("flush", f.name, lambda: self.files.abandon(f))
            raise pyfuse3.FUSEError(errno_for(f.broken))
        if f.staged is not None and not f.exists and f.size == 0 and not f.touched:
            # No data yet (`touch`, or a redirect's flush before its data): the VDI must
            # exist when close() returns, so it is created empty; later data grows it.
            await self._guard("flush", f.name, lambda: self.files.create_empty(f))
            return
        if self.files.has_pending(f):
            await self._guard("flush", f.name, lambda: self.files.sync(f))

    async def fsync(self, fh, datasync):
        f = self._handles[fh]
        if self.files.has_pending(f):
            await self._guard("fsync", f.name, lambda: self.files.sync(f))

    async def release(self, fh):
        f = self._handles.pop(fh)
        if f.opens <= 1:
            self.drop_behind.forget(f.id)
        try:
            await self._guard("release", f.name, lambda: self.files.release(f))
        except pyfuse3.FUSEError:
            where = f" (data kept in {f.staged.path})" if f.staged is not None else ""
            log.error("release: %r still has unsaved data%s", f.name, where)

    async def unlink(self, parent_inode, name, ctx):
        self._check_writable()
        if parent_inode != ROOT:
            raise pyfuse3.FUSEError(errno.ENOENT)
        vdi = self._vdi_name(name)
        f = self._open_file(vdi)
        if f is not None and not f.exists:
            f.unlinked = True  # staged only: nothing in Sheepdog yet
            self._ino_by_name.pop(vdi, None)
            return
        await self._guard("unlink", vdi, lambda: self._delete(vdi))
        if f is not None:
            f.unlinked = True
        self._ino_by_name.pop(vdi, None)

    async def _delete(self, vdi: bytes) -> None:
        info = await self.catalog.get(vdi)
        if info is None and self._open_file(vdi) is None:
            raise NotFound("delete", vdi, "no such VDI")
        await self.backend.delete(vdi)
        self.catalog.remove(vdi)

    async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):
        self._check_writable()
        if parent_inode_old != ROOT or parent_inode_new != ROOT:
            raise pyfuse3.FUSEError(errno.ENOENT)
        if flags & pyfuse3.RENAME_EXCHANGE:
            raise pyfuse3.FUSEError(errno.EINVAL)  # two VDIs cannot trade names atomically
        src, dst = self._vdi_name(name_old), self._vdi_name(name_new)
        if src == dst:
            return
        await self._guard("rename", src, lambda: self._rename(src, dst, flags))

    async def _rename(self, src: bytes, dst: bytes, flags: int) -> None:
        src_file, dst_file = self._open_file(src), self._open_file(dst)
        src_info = await self.catalog.get(src)
        if src_file is None and src_info is None:
            raise NotFound("rename", src, "no such file")
        dst_exists = await self.catalog.get(dst) is not None or (
            dst_file is not None and dst_file.exists
        )
        if (dst_exists or dst_file is not None) and flags & pyfuse3.RENAME_NOREPLACE:
            raise pyfuse3.FUSEError(errno.EEXIST)
        ino = self.ino_for(src)
        await self.files.rename(src, dst, src_file, dst_file, src_info, dst_exists)
        self._rename_ino(ino, src, dst)

    async def forget(self, inode_list):
        pass

    # -- not supported in a flat store of disk images ---------------------------------------

    async def mkdir(self, parent_inode, name, mode, ctx):
        raise pyfuse3.FUSEError(errno.EPERM)

    async def rmdir(self, parent_inode, name, ctx):
        raise pyfuse3.FUSEError(errno.ENOTDIR if name not in (b".", b"..") else errno.EINVAL)

    async def symlink(self, parent_inode, name, target, ctx):
        raise pyfuse3.FUSEError(errno.EPERM)

    async def link(self, inode, new_parent_inode, new_name, ctx):
        raise pyfuse3.FUSEError(errno.EPERM)

    async def mknod(self, parent_inode, name, mode, rdev, ctx):
        raise pyfuse3.FUSEError(errno.EPERM)

    async def sync_all(self) -> bool:
        return await self.files.sync_all()


async def _sync(fn: Callable[[], T]) -> T:
    return fn()
