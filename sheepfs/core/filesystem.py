"""The filesystem without FUSE: one flat directory in which every VDI is a regular file.

Every operation the FUSE adapter translates lands here, in terms of VDI names, inode
numbers, handles and :class:`Attrs`; failures are :mod:`sheepfs.errors` exceptions, each
carrying its errno. This is what the in-process tests drive.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial

import trio

from ..backends.base import Backend, FsStats, VdiInfo
from ..errors import BackendError, Exists, InvalidArgument, NotFound, ReadOnly
from ..spool import Spool
from ..supervisor import Supervisor
from . import filetimes
from .answers import Attrs, Counters, Opened
from .calls import BoundedBackend
from .catalog import Catalog
from .inodes import Inodes
from .openfile import OpenFile, State
from .openfiles import OpenFiles
from .recovery import Leftovers, recover_spool
from .rename import Rename, rename
from .snapshots import Snapshots
from .upload import WRITE_BEHIND_MIN

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CoreConfig:
    cache_size: int = 256 << 20
    list_ttl: float = 1.0  # seconds a VDI listing is reused
    read_only: bool = False
    direct_io: bool = False  # bypass the kernel's page cache (see Filesystem._opened)
    write_behind_min: int = WRITE_BEHIND_MIN
    call_timeout: float | None = None  # a deadline of the core's on every backend call
    write_back_interval: float = 5.0  # seconds dirty cached data waits without fsync/close


def _missing(op: str, name: bytes | None) -> NotFound:
    return NotFound(op, name, "no such file", quiet=True)


class Filesystem:
    """Names, inodes and handles over the open files; see the module docstring."""

    def __init__(self, backend: Backend, spool: Spool, config: CoreConfig | None = None):
        self.config = config or CoreConfig()
        self.backend = BoundedBackend(backend, self.config.call_timeout)
        self.spool = spool
        self.tasks = Supervisor()
        self.catalog = Catalog(self.backend, ttl=self.config.list_ttl)
        self.files = OpenFiles(
            self.backend,
            self.catalog,
            spool,
            self.tasks,
            self.config.cache_size,
            self.config.write_behind_min,
        )
        self.inodes = Inodes()
        ttl, read_only = self.config.list_ttl, self.config.read_only
        self.snapshots = Snapshots(self.backend, self.files, self.file, ttl, read_only)
        self._handles: dict[int, OpenFile] = {}
        self._next_fh = 1
        #: Set when :meth:`running` ends: whether every byte written reached the backend.
        self.saved = False

    # -- life --------------------------------------------------------------------------------

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Filesystem]:
        """Open the backend and the supervisor; at the end shut down in order: stop taking
        background work, write every pending byte (``saved``), let go of every file whose
        data is saved (its spool file too: the handles end with us), cancel what is left
        (read-ahead, timers), close the backend."""
        self.spool.prepare()
        async with self.backend, self.tasks.running():
            self.tasks.start(self._write_back_periodically)
            yield self
            self.tasks.stop_accepting()
            self.saved = await self.files.sync_all()
            await self.files.retire_all()

    def start_recovery(self) -> None:
        """Upload, in the background, what an earlier run left in the spool; the names it
        concerns wait for it (called before the mount serves)."""
        left = Leftovers.of(self.spool)
        self.catalog.hold(left.names)
        self.tasks.start(recover_spool, left, self.catalog, self.files, self.inodes)

    def warm_up(self) -> None:
        """Read the times of a listing in the background as the mount starts (where that is
        one call), so that the first ``ls -l`` finds them read. The listing is not kept:
        a VDI made by others a moment later is found as before."""
        if self.backend.hints.cheap_attrs:
            self.tasks.start(self._warm_up)

    async def _warm_up(self) -> None:
        try:
            await self.files.times.listed(await self.backend.list())
        except BackendError as e:
            log.info("listing at mount: %s (the first ls -l reads it)", e)

    async def recover_spool(self) -> None:
        left = Leftovers.of(self.spool)
        await recover_spool(left, self.catalog, self.files, self.inodes)

    async def _write_back_periodically(self) -> None:
        while True:
            await trio.sleep(self.config.write_back_interval)
            await self.files.write_back_idle()

    async def sync_all(self) -> bool:
        return await self.files.sync_all()

    def counters(self) -> Counters:
        return Counters(
            files_uploaded=self.files.uploader.files_uploaded,
            bytes_uploaded=self.files.uploader.uploaded,
            bytes_written_back=self.files.cache.bytes_written,
            backend_calls=self.backend.stats.calls,
            errors=self.files.errors,
        )

    async def write_back_idle(self) -> None:
        await self.files.write_back_idle()

    # -- lookups -----------------------------------------------------------------------------

    def ino_for(self, name: bytes) -> int:
        return self.inodes.ino_for(name)

    @property
    def names_known(self) -> int:
        return len(self.inodes)

    def file(self, name: bytes) -> OpenFile | None:
        """The open file of ``name`` (not one deleted while open)."""
        ino = self.inodes.find(name)
        f = self.files.by_id.get(ino) if ino is not None else None
        return f if f is not None and not f.gone else None

    def _attrs(self, f: OpenFile) -> Attrs:
        used = f.used
        if f.staged is not None and (not f.has_vdi or f.state is State.UPLOADING):
            used = f.staged.allocated
        t = filetimes.current(self.files.times, f)
        return Attrs(f.id, f.size, used, f.ctime, f.object_size, t.mtime_ns, t.atime_ns)

    def _info_attrs(self, info: VdiInfo) -> Attrs:
        ino, t = self.inodes.ino_for(info.name), self.files.times.shown(info)
        size, used, osz = info.size, info.used, info.object_size
        return Attrs(ino, size, used, info.ctime, osz, t.mtime_ns, t.atime_ns)

    async def lookup(self, name: bytes) -> Attrs:
        await self.catalog.settled(name)  # spool recovery decides about it first
        f = self.file(name)
        if f is not None:
            return self._attrs(f)
        info = await self.catalog.get(name)
        if info is None:
            raise _missing("lookup", name)
        await self.files.times.looked_up(info)
        return self._info_attrs(info)

    async def getattr(self, ino: int) -> Attrs:
        f = self.files.by_id.get(ino)
        if f is not None and not f.gone:
            return self._attrs(f)
        name = self.inodes.name_of(ino)
        if name is None:
            raise _missing("getattr", None)
        return await self.lookup(name)

    async def readdir(self) -> list[tuple[bytes, Attrs]]:
        """Every file, by VDI name, sorted: the listing, and what is open on top of it."""
        listing = await self.catalog.all()
        await self.files.times.listed(listing)
        entries = {name: self._info_attrs(info) for name, info in listing.items()}
        for f in self.files.by_id.values():
            if not f.gone:
                entries[f.name] = self._attrs(f)
        return sorted(entries.items())

    async def statfs(self) -> FsStats:
        return await self.backend.statfs()

    # -- changing names ----------------------------------------------------------------------

    def _check_writable(self, op: str, name: bytes | None) -> None:
        if self.config.read_only:
            raise ReadOnly(op, name, "the mount is read-only", quiet=True)

    async def truncate(self, ino: int, size: int, fh: int | None = None) -> Attrs:
        self._check_writable("truncate", None)
        return await self._on_file("truncate", ino, fh, lambda f: self.files.truncate(f, size))

    async def set_times(
        self, ino: int, fh: int | None, atime_ns: int | None, mtime_ns: int | None
    ) -> Attrs:
        """utimes (``touch``, ``cp -p``, ``rsync -a``): kept with the VDI (core/filetimes.py)."""
        self._check_writable("utimes", None)
        act = partial(filetimes.set_times, self.files.times, atime_ns=atime_ns, mtime_ns=mtime_ns)
        return await self._on_file("utimes", ino, fh, act)

    async def _on_file(
        self, op: str, ino: int, fh: int | None, act: Callable[[OpenFile], Awaitable[None]]
    ) -> Attrs:
        """``act`` on the file of ``fh`` (or ``ino``), opened for it if it is closed."""
        f = self._handles.get(fh) if fh is not None else self.files.by_id.get(ino)
        if f is not None:
            await act(f)
            return self._attrs(f)  # also for a file deleted while open: its handle sees it
        name = self.inodes.name_of(ino)
        info = await self.catalog.get(name) if name is not None else None
        if info is None:
            raise _missing(op, name)
        f = self.files.open_live(ino, info)
        try:
            await act(f)
        finally:
            await self.files.release(f)
        return await self.getattr(ino)

    async def unlink(self, name: bytes) -> None:
        self._check_writable("unlink", name)
        await self.catalog.settled(name)
        f = self.file(name)
        if f is not None:
            async with f.lock:  # an upload under way ends first: then it has a VDI or not
                if f.has_vdi:
                    await self._delete(name)
                f.to(State.UNLINKED)
                self.files.replacer.settled(f)  # old data set aside must not come back
        else:
            await self._delete(name)
        self.inodes.drop(name)

    async def _delete(self, name: bytes) -> None:
        if await self.catalog.get(name) is None and self.file(name) is None:
            raise NotFound("delete", name, "no such VDI")
        await self.files.times.delete(name)  # its times first: Sheepdog would keep them
        self.catalog.remove(name)

    async def rename(self, src: bytes, dst: bytes, noreplace: bool = False) -> None:
        self._check_writable("rename", src)
        if src == dst:
            return
        await self.catalog.settled(src)
        await self.catalog.settled(dst)
        src_file, dst_file = self.file(src), self.file(dst)
        src_info = await self.catalog.get(src)
        if src_file is None and src_info is None:
            raise NotFound("rename", src, "no such file")
        dst_exists = await self.catalog.get(dst) is not None or (
            dst_file is not None and dst_file.has_vdi
        )
        if (dst_exists or dst_file is not None) and noreplace:
            raise Exists("rename", dst, "the target exists", quiet=True)
        ino = self.inodes.ino_for(src)
        r = Rename(src, dst, src_file, dst_file, src_info, dst_exists)
        await rename(self.backend, self.catalog, self.files, r)
        self.inodes.rename(ino, src, dst)

    @staticmethod
    def refuse_exchange(src: bytes) -> None:
        """Two VDIs cannot trade names atomically."""
        raise InvalidArgument("rename", src, "VDIs cannot exchange names", quiet=True)

    # -- handles -----------------------------------------------------------------------------

    def _new_handle(self, f: OpenFile) -> int:
        fh = self._next_fh
        self._next_fh += 1
        self._handles[fh] = f
        return fh

    def _opened(self, fh: int, f: OpenFile, writing: bool) -> Opened:
        """How the kernel caches this open (it would keep the page cache by default).

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
            f.direct_io = writing or self.config.direct_io
        keep = not f.direct_io and (f.opens > 1 or not f.has_vdi)
        return Opened(fh=fh, direct_io=f.direct_io, keep_cache=keep)

    async def open(self, ino: int, writing: bool, truncate: bool = False) -> Opened:
        if writing:
            self._check_writable("open", None)
        f = self.files.by_id.get(ino)
        if f is not None and not f.gone:
            f.opens += 1
        else:
            name = self.inodes.name_of(ino)
            info = await self.catalog.get(name) if name is not None else None
            if info is None:
                raise _missing("open", name)
            f = self.files.open_live(ino, info)
        fh = self._new_handle(f)
        opened = self._opened(fh, f, writing)
        if truncate and f.size:
            # libfuse negotiates atomic O_TRUNC: the truncation arrives here, not in setattr.
            try:
                await self.files.truncate(f, 0)
            except BaseException:
                await self.release(fh)
                raise
        return opened

    async def create(self, name: bytes) -> tuple[Opened, Attrs]:
        self._check_writable("create", name)
        await self.catalog.settled(name)
        if self.file(name) is not None or await self.catalog.get(name) is not None:
            raise Exists("create", name, "the file exists", quiet=True)
        f = self.files.create(self.inodes.ino_for(name), name)
        log.debug("staging new file %r in %s", name, f.staged.path if f.staged else "?")
        return self._opened(self._new_handle(f), f, writing=True), self._attrs(f)

    def name_of_handle(self, fh: int) -> bytes:
        return self._handles[fh].name

    async def read(self, fh: int, offset: int, size: int) -> bytes | memoryview:
        return await self.files.read(self._handles[fh], offset, size)

    def sequential(self, fh: int) -> int | None:
        """The inode read front to back through the page cache by ``fh``, or None: the
        adapter drops the pages such a reader has left behind."""
        f = self._handles[fh]
        return f.id if not f.direct_io and self.files.cache.sequential(f) else None

    async def write(self, fh: int, offset: int, data: bytes) -> int:
        self._check_writable("write", None)
        return await self.files.write(self._handles[fh], offset, data)

    async def flush(self, fh: int) -> None:
        """What close() waits for (not release): upload errors reach the user here."""
        f = self._handles[fh]
        if f.state is State.TORN:
            await self.files.abandon(f)
            assert f.torn is not None
            raise f.torn
        if f.state is State.STAGED and f.size == 0 and not f.touched:
            # No data yet (`touch`, or a redirect's flush before its data): the VDI must
            # exist when close() returns, so it is created empty; later data grows it.
            await self.files.create_empty(f)
        elif self.files.has_pending(f):
            await self.files.sync(f)
        await filetimes.settle(self.files.times, f)  # before rsync or cp -p set times

    async def fsync(self, fh: int) -> None:
        f = self._handles[fh]
        if self.files.has_pending(f):
            await self.files.sync(f)

    async def release(self, fh: int) -> int | None:
        """The kernel lets go of ``fh``; returns the inode if no handle of it is left.

        Never raises: close() has returned already, so a failure can only be logged.
        """
        f = self._handles.pop(fh)
        last = f.opens <= 1
        try:
            await self.files.release(f)
        except Exception as e:
            where = f" (data kept in {f.staged.path})" if f.staged is not None else ""
            log.error("release: %s", e)
            log.error("release: %r still has unsaved data%s", f.name, where)
        return f.id if last else None
