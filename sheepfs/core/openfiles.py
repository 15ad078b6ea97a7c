"""Open files by inode, and the data path of each: the spool for files in the spool, the
chunk cache for live VDIs. Uploads, replacing and write-back are the jobs of
:mod:`.upload`, :mod:`.replace` and :mod:`sheepfs.cache`; this module decides which one a
file needs, and when a closed file can be forgotten.
"""

from __future__ import annotations

import logging
import time

from ..backends.base import Backend, VdiInfo
from ..cache.cache import ChunkCache
from ..errors import BackendError, NotPermitted, TooLarge
from ..spool import Spool, StagedFile, has_data
from ..supervisor import Supervisor
from .catalog import Catalog
from .filetimes import settle
from .openfile import OpenFile, State
from .replace import Replacer
from .timekeeper import TimeKeeper
from .upload import WRITE_BEHIND_MIN, Uploader

log = logging.getLogger(__name__)


class OpenFiles:
    """The registry of open files and the operations that move their data."""

    def __init__(
        self,
        backend: Backend,
        catalog: Catalog,
        spool: Spool,
        tasks: Supervisor,
        cache_size: int,
        write_behind_min: int = WRITE_BEHIND_MIN,
    ) -> None:
        self.backend = backend
        self.catalog = catalog
        self.spool = spool
        self.cache = ChunkCache(backend, cache_size, tasks, grown=self.record)
        self.times = TimeKeeper(backend, tasks, catalog.ttl)
        catalog.watch(self.times.seen)
        self.replacer = Replacer(backend, catalog, self.cache, spool, self.times)
        self.uploader = Uploader(
            backend, self.replacer, tasks, self.record, self.times, write_behind_min
        )
        self.by_id: dict[int, OpenFile] = {}
        self.errors = 0

    def record(self, f: OpenFile) -> None:
        """Tell the listing about a VDI we created or grew."""
        if f.has_vdi and not f.gone:
            self.catalog.put(f.info())

    # -- opening -------------------------------------------------------------------------

    def open_live(self, ino: int, info: VdiInfo) -> OpenFile:
        f = self.by_id.get(ino)
        if f is None:
            f = self.by_id[ino] = OpenFile.live(ino, info)
        f.opens += 1
        return f

    def create(self, ino: int, name: bytes) -> OpenFile:
        f = self.by_id[ino] = OpenFile.new(ino, name, self.spool.new(name))
        f.opens = 1
        return f

    def adopt(self, ino: int, staged: StagedFile, info: VdiInfo | None) -> OpenFile:
        """Take over a spool file left by an earlier run, to upload it.

        ``info`` is the VDI of that name if it exists; it must be one this spool file
        created (then its data is written again into it), the caller checks that.
        """
        f = OpenFile.new(ino, staged.vdi_name, staged)
        f.size = staged.size
        if info is not None:
            # Which objects an interrupted upload got to is unknown: write them all again.
            # (With no VDI yet, the upload creates it and takes every object anyway.)
            objects = staged.data_objects(info.object_size)
            f.backend_size, f.block_size_shift = info.size, info.block_size_shift
            f.ctime, f.used, f.layout = info.ctime, info.used, info.layout
            f.times_bound = True  # its VDI is the one an earlier run created for it
            f.touched, f.ours = objects, set(objects)
            f.to(State.UPLOADING)
        self.by_id[ino] = f
        return f

    # -- data ----------------------------------------------------------------------------

    async def read(self, f: OpenFile, offset: int, size: int) -> bytes | memoryview:
        if f.staged is not None:
            return f.staged.pread(offset, size)
        return await self.cache.read(f, offset, size)

    async def write(self, f: OpenFile, offset: int, data: bytes) -> int:
        end = offset + len(data)
        if end > f.max_size:
            raise TooLarge("write", f.name, f"the VDI size limit is {f.max_size} bytes")
        f.written_ns = time.time_ns()
        if f.staged is None:
            f.size = max(f.size, end)
            await self.cache.write(f, offset, data)
            return len(data)
        try:
            f.staged.pwrite(offset, data)
        except OSError as e:
            if not f.gone:
                f.tear(e)
            raise
        first, last = offset // f.object_size, max(offset, end - 1) // f.object_size
        f.touched.update(range(first, last + 1))
        # Noted per object, so the upload need not read these objects back to know.
        for index in range(first, last + 1):
            lo = max(offset, index * f.object_size) - offset
            hi = min(end, (index + 1) * f.object_size) - offset
            if has_data(data if hi - lo == len(data) else data[lo:hi]):
                f.has_data.add(index)
        f.size = max(f.size, end)
        self.uploader.maybe_upload_behind(f)
        return len(data)

    async def truncate(self, f: OpenFile, size: int) -> None:
        if size > f.max_size:
            raise TooLarge("truncate", f.name, f"the VDI size limit is {f.max_size} bytes")
        f.written_ns = time.time_ns()
        if f.gone:  # deleted while open: only its handles see it, nothing is saved
            if f.staged is not None:
                f.staged.truncate(size)
            else:
                self.cache.truncate(f, size)
            f.size = size
            return
        if f.staged is not None:
            old = f.size
            f.staged.truncate(size)
            f.size = size
            if size < old:
                f.touched.update(range(size // f.object_size, (old - 1) // f.object_size + 1))
            return
        if size < f.size:
            if f.hyper:  # replacing means deleting it, which nothing here can do safely
                raise NotPermitted("truncate", f.name, "hyper volumes cannot be shrunk or replaced")
            await self.replacer.stage_existing(f, size)
            return
        async with f.lock:
            f.size = size
            await self.cache.grow(f)

    # -- moving data into Sheepdog -------------------------------------------------------

    def has_pending(self, f: OpenFile) -> bool:
        """Whether ``f`` has data not yet in Sheepdog, or a transfer of it is under way."""
        if f.state in (State.UNLINKED, State.TORN):
            return False
        if f.staged is not None:
            return f.spool_pending
        return self.cache.is_pending(f)

    async def sync(self, f: OpenFile) -> None:
        """Make Sheepdog hold everything written to ``f`` so far."""
        async with f.lock:
            await self.sync_locked(f)

    async def sync_locked(self, f: OpenFile) -> None:
        """:meth:`sync`, for a caller that holds ``f.lock``."""
        if f.gone:
            return
        if f.state is State.TORN:
            raise BackendError(
                "upload", f.name, f"not uploaded: a write to its staging file failed ({f.torn})"
            )
        if f.staged is not None:
            await self.uploader.upload_locked(f)
        else:
            await self.cache.flush_locked(f)

    async def create_empty(self, f: OpenFile) -> None:
        await self.uploader.create_empty(f)

    async def release(self, f: OpenFile) -> None:
        """The last close: upload what is left; drop the spool file once Sheepdog has it."""
        f.opens -= 1
        if f.opens > 0:
            return
        try:
            if self.has_pending(f):
                await self.sync(f)
        finally:
            async with f.lock:  # never drop a spool file under an upload
                if f.opens == 0 and not self.has_pending(f):
                    await self._retire(f)

    async def _retire(self, f: OpenFile) -> None:
        """Forget a closed file with nothing left to save (under its lock), its times
        stored first if its close could not."""
        await self._drop_torn_vdi(f)
        await settle(self.times, f)
        self.forget(f)

    async def _drop_torn_vdi(self, f: OpenFile) -> None:
        """A new file whose spool copy could not be written is never uploaded; if part of
        it was uploaded behind the writer (and never all of it), that VDI is deleted again."""
        if f.state is State.TORN and f.torn_from is State.UPLOADING:
            try:
                await self.times.delete(f.name)
                self.catalog.remove(f.name)
                f.torn_from = State.STAGED  # as if torn before it had a VDI
            except BackendError as e:
                log.error("%r: could not delete its partly uploaded VDI: %s", f.name, e)

    async def abandon(self, f: OpenFile) -> None:
        """The spool copy of ``f`` is torn: take back what was uploaded of it."""
        async with f.lock:
            await self._drop_torn_vdi(f)

    def forget(self, f: OpenFile) -> None:
        if f.state is State.TORN:
            log.error(
                "%r was not uploaded: a write to its staging file failed (%s); "
                "the incomplete copy is dropped and %s",
                f.name,
                f.torn,
                "the VDI keeps its old data" if f.has_vdi else "no VDI is left of it",
            )
        if f.gone:
            self.replacer.settled(f)  # deleted: its old data must not come back
        if f.staged is not None:
            f.staged.remove()
            f.staged = None
        self.cache.discard(f)
        if self.by_id.get(f.id) is f:
            del self.by_id[f.id]

    async def write_back_idle(self) -> None:
        """Write back cached dirty data of live files nobody is writing back already.

        sync(1) never reaches a FUSE daemon, so this bounds how long written data lives
        only in our memory (the kernel's own dirty_expire works the same way).
        """
        for f in list(self.by_id.values()):
            if f.state is State.LIVE and not f.lock.locked() and self.cache.is_dirty(f):
                try:
                    await self.cache.flush(f)
                except BackendError as e:
                    log.warning("periodic write-back of %r failed (kept, will retry): %s",
                                f.name, e)  # fmt: skip

    async def retire_all(self) -> None:
        """At shutdown: forget every file with nothing left to save, open or not, so no
        spool file of saved (or deleted) data is left for the next run to upload again.
        What could not be saved keeps its spool file."""
        for f in list(self.by_id.values()):
            async with f.lock:
                if not self.has_pending(f):
                    await self._retire(f)
        await self.times.confirm_all()  # guessed creation times of new VDIs (dog)

    async def sync_all(self) -> bool:
        """Write every pending byte of every file; False if any could not be saved."""
        ok = True
        for f in list(self.by_id.values()):
            if not self.has_pending(f):
                continue
            if f.opens and f.state is State.REPLACING:
                # Still being written over a file (``cp`` over it): its new data is not
                # complete, and its old data stays rather than give way to a part of it.
                log.warning("%r was being written over when the mount ended: its old data "
                            "stays; what was written is kept in %s", f.name,
                            f.staged.path if f.staged else "?")  # fmt: skip
                continue
            try:
                await self.sync(f)
            except BackendError as e:
                log.error("%s", e)
                self.errors += 1
                ok = False
            async with f.lock:
                if f.opens == 0 and not self.has_pending(f):
                    await self._retire(f)
        return ok
