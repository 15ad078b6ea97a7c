"""File state: one object per VDI that is open (or being created), and what it takes to
move its data into Sheepdog.

A *live* file is an existing VDI: reads and writes go through the chunk cache. A *staged*
file is new: its bytes live in a spool file, and the VDI is created with the final size
when the file is closed, after which only the objects holding data are written.

A new file written faster than Sheepdog takes it (``cp`` of an image) would otherwise
upload everything only after the copy: once ``WRITE_BEHIND_MIN`` bytes of complete objects
wait, its VDI is created with the size written so far and those objects are uploaded
while the writer goes on; the VDI grows (``vdi resize``) as the file does, and close
uploads the rest and sets the final size.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
import time
from dataclasses import dataclass, field

import trio

from .backends.base import DEFAULT_BLOCK_SIZE_SHIFT, Backend, Layout, ObjectGeometry, VdiInfo
from .cache import ChunkCache
from .catalog import Catalog
from .errors import BackendError, NotPermitted, TooLarge
from .staging import Spool, StagedFile, has_data

log = logging.getLogger(__name__)

#: Bytes of complete, not yet uploaded objects a new file must hold before its upload starts
#: behind the writer. Smaller files are created and uploaded when they are closed.
WRITE_BEHIND_MIN = 32 << 20


@dataclass(eq=False)
class VdiFile(ObjectGeometry):
    """The state of one file. ``id`` is its inode number."""

    id: int
    name: bytes
    size: int
    backend_size: int
    block_size_shift: int
    ctime: int
    used: int
    exists: bool  # the VDI is in Sheepdog
    files: Files
    staged: StagedFile | None = None
    stage_dirty: bool = False  # spool data not yet (fully) in Sheepdog
    fresh: bool = False  # VDI made by us and never fully written: unwritten parts are zero
    touched: set[int] = field(default_factory=set)  # objects written since the last upload
    in_vdi: set[int] = field(default_factory=set)  # objects of a fresh VDI holding our data
    has_data: set[int] = field(default_factory=set)  # staged objects given non-zero bytes
    behind_failed: bool = False  # an upload behind the writer failed: the rest waits for close
    opens: int = 0
    direct_io: bool = False  # its open handles bypass the kernel's page cache
    unlinked: bool = False
    broken: OSError | None = None  # a staged write failed: never upload a torn file
    replace: bool = False  # the VDI ``name`` holds old data the staged file replaces
    old_snapshot: str | None = None  # where that old data waits while it is replaced
    layout: Layout | None = None  # an existing VDI's: kept when it is created again
    lock: trio.Lock = field(default_factory=trio.Lock)

    @property
    def erasure_coded(self) -> bool:
        return self.layout is not None and self.layout.erasure_coded

    async def before_writeback(self) -> None:
        """Grow the VDI to the file's size (SHEEPDOG.md F10). Writes go on while a resize is
        on its way and may grow the file further, so this returns only once the VDI covers
        all of it: dog cuts a write at the VDI's end without a word, and what the caller
        plans next (with no await in between) must lie inside the VDI."""
        while self.size > self.backend_size:
            size = self.size
            await self.files.backend.resize(self.name, size)
            self.backend_size = size
            self.files.record(self)

    def info(self) -> VdiInfo:
        return VdiInfo(
            name=self.name,
            kind="=",
            snap_id=0,
            size=self.size,
            used=self.used,
            shared=0,
            ctime=self.ctime,
            vid=0,
            copies=self.layout.copies if self.layout else "",
            tag=b"",
            block_size_shift=self.block_size_shift,
        )


class Files:
    """Open files by inode, and the operations that move their data."""

    def __init__(self, backend: Backend, catalog: Catalog, cache: ChunkCache, spool: Spool):
        self.backend = backend
        self.catalog = catalog
        self.cache = cache
        self.spool = spool
        self.by_id: dict[int, VdiFile] = {}
        self.uploaded = 0  # bytes
        self.files_uploaded = 0
        self.errors = 0

    def record(self, f: VdiFile) -> None:
        """Tell the listing about a VDI we created or grew."""
        if f.exists and not f.unlinked:
            self.catalog.put(f.info())

    # -- opening -------------------------------------------------------------------------

    def open_live(self, ino: int, info: VdiInfo) -> VdiFile:
        f = self.by_id.get(ino)
        if f is None:
            f = VdiFile(
                id=ino,
                name=info.name,
                size=info.size,
                backend_size=info.size,
                block_size_shift=info.block_size_shift,
                ctime=info.ctime,
                used=info.used,
                exists=True,
                files=self,
                layout=info.layout,
            )
            self.by_id[ino] = f
        f.opens += 1
        return f

    def create(self, ino: int, name: bytes) -> VdiFile:
        f = VdiFile(
            id=ino,
            name=name,
            size=0,
            backend_size=0,
            block_size_shift=DEFAULT_BLOCK_SIZE_SHIFT,
            ctime=int(time.time()),
            used=0,
            exists=False,
            files=self,
            staged=self.spool.new(name),
            stage_dirty=True,
            opens=1,
        )
        self.by_id[ino] = f
        return f

    def adopt(self, ino: int, staged: StagedFile, info: VdiInfo | None) -> VdiFile:
        """Take over a spool file left by an earlier run, to upload it.

        ``info`` is the VDI of that name if it exists; it must be one this spool file
        created (then its data is written again into it), the caller checks that.
        """
        # Which objects an interrupted upload got to is unknown: write them all again. (With
        # no VDI yet, the upload creates it and takes every object the spool holds anyway.)
        objects = staged.data_objects(info.object_size) if info else set()
        f = VdiFile(
            id=ino,
            name=staged.vdi_name,
            size=staged.size,
            backend_size=info.size if info else 0,
            block_size_shift=info.block_size_shift if info else DEFAULT_BLOCK_SIZE_SHIFT,
            ctime=info.ctime if info else int(time.time()),
            used=info.used if info else 0,
            exists=info is not None,
            fresh=info is not None,
            files=self,
            layout=info.layout if info else None,
            staged=staged,
            stage_dirty=True,
            touched=objects,
            in_vdi=set(objects),
        )
        self.by_id[ino] = f
        return f

    # -- data ----------------------------------------------------------------------------

    async def read(self, f: VdiFile, offset: int, size: int) -> bytes | memoryview:
        if f.staged is not None:
            return f.staged.pread(offset, size)
        return await self.cache.read(f, offset, size)

    async def write(self, f: VdiFile, offset: int, data: bytes) -> int:
        end = offset + len(data)
        if end > f.max_size:
            raise TooLarge("write", f.name, f"the VDI size limit is {f.max_size} bytes")
        if f.staged is not None:
            try:
                f.staged.pwrite(offset, data)
            except OSError as e:
                f.broken = e
                raise
            f.stage_dirty = True
            first, last = offset // f.object_size, max(offset, end - 1) // f.object_size
            f.touched.update(range(first, last + 1))
            # Noted per object, so the upload need not read these objects back to know.
            for index in range(first, last + 1):
                lo = max(offset, index * f.object_size) - offset
                hi = min(end, (index + 1) * f.object_size) - offset
                if has_data(data if hi - lo == len(data) else data[lo:hi]):
                    f.has_data.add(index)
            f.size = max(f.size, end)
            self._maybe_write_behind(f)
            return len(data)
        f.size = max(f.size, end)
        await self.cache.write(f, offset, data)
        return len(data)

    async def truncate(self, f: VdiFile, size: int) -> None:
        if size > f.max_size:
            raise TooLarge("truncate", f.name, f"the VDI size limit is {f.max_size} bytes")
        if f.staged is not None:
            old = f.size
            f.staged.truncate(size)
            f.size = size
            f.stage_dirty = True
            if size < old:
                f.touched.update(range(size // f.object_size, (old - 1) // f.object_size + 1))
            return
        if size < f.size:
            if f.hyper:  # replacing means deleting it, which nothing here can do safely
                raise NotPermitted("truncate", f.name, "hyper volumes cannot be shrunk or replaced")
            await self._stage_existing(f, size)
            return
        async with f.lock:
            f.size = size
            await f.before_writeback()

    async def _stage_existing(self, f: VdiFile, keep: int) -> None:
        """Shrink a live file: stage its first ``keep`` bytes to replace the VDI at upload.

        Sheepdog cannot shrink a VDI, so the shorter file becomes a new VDI of the same name
        (see :meth:`_upload`). Holes and zero objects are not copied, so ``O_TRUNC`` (keep=0)
        costs nothing here.
        """
        staged = self.spool.new(f.name)
        try:
            pos = 0
            while pos < keep:
                n = min(f.object_size - pos % f.object_size, keep - pos)
                data = bytes(await self.cache.read(f, pos, n))
                if has_data(data):
                    staged.pwrite(pos, data)
                pos += n
            staged.truncate(keep)
        except BaseException:
            staged.remove()
            raise
        staged.replaces = True
        staged.save_meta()
        self.cache.truncate(f, 0)  # dirty bytes below ``keep`` are in the spool now
        f.staged = staged
        f.replace = True
        f.stage_dirty = True
        f.fresh = False
        f.touched = set()
        f.size = keep
        log.debug("staged %r (%d bytes kept) to replace its VDI", f.name, keep)

    # -- moving data into Sheepdog -------------------------------------------------------

    def has_pending(self, f: VdiFile) -> bool:
        """Whether ``f`` has data not yet in Sheepdog, or an upload of it is under way."""
        # A write-back in flight clears the dirty marks first: its caller must wait for it.
        return f.lock.locked() or self._unsaved(f)

    def _unsaved(self, f: VdiFile) -> bool:
        if f.unlinked or f.broken is not None:
            return False
        if f.staged is not None:
            return f.stage_dirty
        return self.cache.is_dirty(f)

    async def sync(self, f: VdiFile) -> None:
        """Make Sheepdog hold everything written to ``f`` so far."""
        if f.unlinked:
            return
        if f.broken is not None:
            raise BackendError(
                "upload", f.name, f"not uploaded: a write to its staging file failed ({f.broken})"
            )
        if f.staged is not None:
            await self._upload(f)
        else:
            await self.cache.flush(f)

    async def _upload(self, f: VdiFile) -> None:
        """Create the VDI with the staged file's size if needed, then write its data."""
        staged = f.staged
        assert staged is not None
        async with f.lock:
            if not f.stage_dirty or f.unlinked:
                return
            f.stage_dirty = False
            touched, f.touched = f.touched, set()
            size = staged.size
            try:
                if f.exists and size < f.backend_size:
                    f.replace = True  # shrunk after its upload: Sheepdog cannot shrink
                if f.replace:
                    await self._set_old_aside(f)
                await self._upload_objects(f, touched, size)
                if f.fresh:
                    f.used = len(f.in_vdi) * f.object_size
                f.fresh = False
                f.in_vdi = set()
                self.files_uploaded += 1
                self.record(f)
                log.debug("uploaded %r: %d bytes", f.name, size)
            except BaseException as e:
                f.stage_dirty = True
                f.touched |= touched
                if isinstance(e, BackendError):
                    e.detail += f"; the new data is kept in {staged.path}"
                    if f.old_snapshot:
                        e.detail += (
                            f"; the old data is in snapshot {f.old_snapshot} of this VDI"
                            f" (dog vdi clone -s {f.old_snapshot} NAME NEWNAME restores it)"
                        )
                raise
            if f.old_snapshot:
                await self._drop_snapshot(f.name, f.old_snapshot)
                f.old_snapshot = None

    async def _upload_objects(self, f: VdiFile, objects: set[int], size: int) -> None:
        """Make the VDI ``size`` bytes (creating it if needed) and write ``objects`` into it.

        Runs under ``f.lock``. A VDI created here, or earlier by us for this file (fresh),
        reads zero wherever we have not written: all-zero objects are skipped there unless
        we wrote data into them before. In any other VDI every object given is written.
        """
        staged = f.staged
        assert staged is not None
        osz = f.object_size
        if not f.exists:
            await self._create_vdi(f, size)
            # Everything the spool holds goes in, whatever was noted as written.
            objects = objects | await trio.to_thread.run_sync(staged.data_objects, osz)
        elif size > f.backend_size:
            await self.backend.resize(f.name, size)
            f.backend_size = size
            self.record(f)
        if f.fresh:
            unknown = objects - f.has_data  # only zeros written there, or not through us
            nonzero = objects & f.has_data
            if unknown:
                nonzero |= await trio.to_thread.run_sync(staged.nonzero_objects, unknown, osz)
            objects = nonzero | (objects & f.in_vdi)
        for offset, length in _object_runs(objects, osz, size):
            await self.backend.write_from_file(f.name, offset, length, str(staged.path), offset)
            self.uploaded += length
            if f.fresh:
                f.in_vdi.update(range(offset // osz, -(-(offset + length) // osz)))

    async def _create_vdi(self, f: VdiFile, size: int) -> None:
        """Create the VDI of staged file ``f`` (under its lock); it reads zero until written."""
        staged = f.staged
        assert staged is not None
        await self.backend.create(f.name, size, f.layout)
        f.exists = True
        f.fresh = True
        f.in_vdi = set()
        staged.created = True
        staged.save_meta()
        f.backend_size = size
        self.record(f)

    async def create_empty(self, f: VdiFile) -> None:
        """The flush of a new file that holds no data yet (``touch``, ``cmd > new``).

        Its VDI must exist when close() returns, so it is created here with size 0. It is
        fresh: a shell redirect's later data grows it (resize) and fills only the objects
        that get data, exactly as for a file whose upload began behind its writer.
        """
        async with f.lock:
            if f.staged is not None and not f.exists and not f.unlinked and f.broken is None:
                await self._create_vdi(f, 0)

    def _maybe_write_behind(self, f: VdiFile) -> None:
        """Start uploading a new file's complete objects while it is still being written."""
        nursery = self.cache.nursery
        if (
            nursery is None
            or f.lock.locked()
            or f.behind_failed
            or f.replace
            or f.old_snapshot is not None
            or (f.exists and not f.fresh)
        ):
            return
        if len(_complete_touched(f)) * f.object_size >= WRITE_BEHIND_MIN:
            nursery.start_soon(self._write_behind, f)

    async def _write_behind(self, f: VdiFile) -> None:
        staged = f.staged
        async with f.lock:
            if staged is None or f.staged is not staged or f.unlinked or f.broken or f.replace:
                return
            ready = _complete_touched(f)
            if not ready:
                return
            f.touched -= ready
            try:
                await self._upload_objects(f, ready, staged.size)
                log.debug("%r: objects up to %d uploaded while it is written", f.name, max(ready))
            except BackendError as e:
                f.touched |= ready
                f.behind_failed = True
                if not f.unlinked:
                    log.warning("upload of %r while it is written failed (close retries): %s",
                                f.name, e)  # fmt: skip
            except BaseException:
                f.touched |= ready
                raise

    async def _set_old_aside(self, f: VdiFile) -> None:
        """Move the VDI's old data into a snapshot and delete the working VDI.

        The snapshot keeps the old data reachable until the new VDI holds the new data, so
        at no moment are both gone.
        """
        if f.old_snapshot is None:
            tag = _tag("old")
            await self.backend.snapshot(f.name, tag)
            f.old_snapshot = tag
            log.info(
                "replacing %r: its old data is in snapshot %s until the new data is in", f.name, tag
            )
        await self.backend.delete(f.name)
        self.catalog.remove(f.name)
        f.replace = False
        f.exists = False

    async def _drop_snapshot(self, name: bytes, tag: str) -> None:
        try:
            await self.backend.delete_snapshot(name, tag)
        except BackendError as e:
            log.warning("could not delete snapshot %s of %r (delete it by hand): %s", tag, name, e)

    async def rename(
        self,
        src: bytes,
        dst: bytes,
        src_file: VdiFile | None,
        dst_file: VdiFile | None,
        src_info: VdiInfo | None,
        dst_exists: bool,
    ) -> VdiFile | None:
        """Give ``src`` the name ``dst``, replacing ``dst`` if it exists.

        A file that is only staged just changes its name (free). A VDI is renamed without
        copying data: snapshot, clone the snapshot under the new name, delete the old VDI,
        drop the snapshot (SHEEPDOG.md F13: clones outlive their source snapshot).
        """
        if dst_file is not None and dst_file is not src_file:
            dst_file.unlinked = True
        if src_file is not None and src_file.staged is not None and not src_file.exists:
            src_file.name = dst
            if dst_exists:
                src_file.replace = True
                src_file.exists = True
                src_file.staged.replaces = True
            src_file.staged.rename(dst)
            return src_file
        if src_file is not None:
            await self.sync(src_file)
        tag = _tag("mv")
        await self.backend.snapshot(src, tag)
        dst_tag = None
        try:
            if dst_exists:
                dst_tag = _tag("old")
                await self.backend.snapshot(dst, dst_tag)
                await self.backend.delete(dst)
                self.catalog.remove(dst)
            await self.backend.clone(src, tag, dst)
        except BaseException:
            if dst_tag is not None:
                log.error(
                    "rename %r -> %r failed; the old %r is in its snapshot %s",
                    src,
                    dst,
                    dst,
                    dst_tag,
                )
            await self._drop_snapshot(src, tag)
            raise
        await self.backend.delete(src)
        self.catalog.remove(src)
        await self._drop_snapshot(src, tag)
        if dst_tag is not None:
            await self._drop_snapshot(dst, dst_tag)
        if src_file is not None:
            src_file.name = dst
            if src_file.staged is not None:
                src_file.staged.rename(dst)
            self.record(src_file)
        elif src_info is not None:
            self.catalog.put(dataclasses.replace(src_info, name=dst, kind="c"))
        return src_file

    async def release(self, f: VdiFile) -> None:
        """The last close: upload what is left; drop the spool file once Sheepdog has it."""
        f.opens -= 1
        if f.opens > 0:
            return
        try:
            if self.has_pending(f):
                await self.sync(f)
        finally:
            async with f.lock:  # never drop a spool file under an upload
                if f.opens == 0 and not self._unsaved(f):
                    await self._retire(f)

    async def _retire(self, f: VdiFile) -> None:
        """Forget a closed file with nothing left to save (under its lock)."""
        await self._drop_torn_vdi(f)
        self.forget(f)

    async def _drop_torn_vdi(self, f: VdiFile) -> None:
        """A new file whose staging copy could not be written is never uploaded; if part of
        it was uploaded behind the writer (and never all of it), that VDI is deleted again."""
        torn = f.broken is not None and f.staged is not None and f.staged.created
        if torn and f.exists and f.fresh:
            try:
                await self.backend.delete(f.name)
                self.catalog.remove(f.name)
                f.exists = False
            except BackendError as e:
                log.error("%r: could not delete its partly uploaded VDI: %s", f.name, e)

    async def abandon(self, f: VdiFile) -> None:
        """The staging copy of ``f`` is torn: take back what was uploaded of it."""
        async with f.lock:
            await self._drop_torn_vdi(f)

    def forget(self, f: VdiFile) -> None:
        if f.broken is not None and f.staged is not None:
            log.error(
                "%r was not uploaded: a write to its staging file failed (%s); "
                "the incomplete copy is dropped and %s",
                f.name,
                f.broken,
                "the VDI keeps its old data" if f.exists else "no VDI is left of it",
            )
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
            if f.staged is None and not f.lock.locked() and self.cache.is_dirty(f):
                try:
                    await self.cache.flush(f)
                except BackendError as e:
                    log.warning("periodic write-back of %r failed (kept, will retry): %s",
                                f.name, e)  # fmt: skip

    async def sync_all(self) -> bool:
        """Write every pending byte of every file; False if any could not be saved."""
        ok = True
        for f in list(self.by_id.values()):
            if not self.has_pending(f):
                continue
            try:
                await self.sync(f)
            except BackendError as e:
                log.error("%s", e)
                self.errors += 1
                ok = False
            async with f.lock:
                if f.opens == 0 and not self._unsaved(f):
                    await self._retire(f)
        return ok


def _complete_touched(f: VdiFile) -> set[int]:
    """Objects written since the last upload that the file has grown past (complete)."""
    complete = f.size // f.object_size
    return {index for index in f.touched if index < complete}


def _tag(purpose: str) -> str:
    """A snapshot tag of our own: never all digits (dog refuses those), unlikely to clash."""
    return f"sheepfs-{purpose}-{int(time.time())}-{secrets.token_hex(4)}"


def _object_runs(objects: set[int], object_size: int, size: int) -> list[tuple[int, int]]:
    """Merge object indexes into ``(offset, length)`` runs clipped to ``size``."""
    runs: list[tuple[int, int]] = []
    for index in sorted(objects):
        start = index * object_size
        if start >= size:
            continue
        end = min(start + object_size, size)
        if runs and runs[-1][0] + runs[-1][1] == start:
            runs[-1] = (runs[-1][0], end - runs[-1][0])
        else:
            runs.append((start, end - start))
    return runs
