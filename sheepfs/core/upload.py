"""Uploads: moving a spool file's bytes into its VDI.

A new file is created in Sheepdog with its final size when it is closed, and only its
objects holding data are written (Sheepdog is thin: unwritten objects read zero and take
no room). A new file written faster than Sheepdog takes it (``cp`` of an image) would
otherwise upload everything only after the copy: once ``write_behind_min`` bytes of
complete objects wait, its VDI is created with the size written so far and those objects
are uploaded while the writer goes on (UPLOADING); the VDI grows as the file does, and
close uploads the rest and sets the final size (UPLOADED).

Every upload runs under the file's lock, one at a time per file, so at most one write is
in flight per object (docs/SHEEPDOG.md F2).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import trio

from ..backends.base import Backend
from ..errors import BackendError, Exists
from ..supervisor import Supervisor
from .filetimes import created
from .openfile import OpenFile, State
from .replace import Replacer
from .timekeeper import TimeKeeper

log = logging.getLogger(__name__)

#: Bytes of complete, not yet uploaded objects a new file must hold before its upload starts
#: behind the writer. Smaller files are created and uploaded when they are closed.
WRITE_BEHIND_MIN = 32 << 20
#: Bytes of a spool file one backend call sends at most, so an upload's progress (status,
#: the log while pending data is saved at shutdown) moves during a long upload: a few
#: seconds of sending. Large, because each call ends a pipeline (the sheep backend reads
#: the next window of the spool while it sends one) and costs a dog process its inode read.
UPLOAD_SLICE = 1 << 30


@dataclass
class Progress:
    """The upload under way of one file: what this pass sends, and how much has gone."""

    total: int
    done: int = 0


class Uploader:
    """Uploads spool files into their VDIs: at close, at fsync, and behind the writer."""

    def __init__(
        self,
        backend: Backend,
        replacer: Replacer,
        tasks: Supervisor,
        record: Callable[[OpenFile], None],
        times: TimeKeeper,
        write_behind_min: int = WRITE_BEHIND_MIN,
    ) -> None:
        self.backend = backend
        self.replacer = replacer
        self.times = times
        self.tasks = tasks
        self.record = record  # tells the listing about a VDI created or grown
        self.write_behind_min = write_behind_min
        self._behind: set[int] = set()  # ids of files with an upload behind queued or running
        self._unsure: set[int] = set()  # ids of files whose create failed, maybe after it landed
        self.uploaded = 0  # bytes
        self.files_uploaded = 0
        #: File id -> the upload of it under way (for status: bytes done of total).
        self.progress: dict[int, Progress] = {}

    async def upload(self, f: OpenFile) -> None:
        """Make the VDI hold everything the spool file holds."""
        async with f.lock:
            await self.upload_locked(f)

    async def upload_locked(self, f: OpenFile) -> None:
        """:meth:`upload`, for a caller that holds ``f.lock``."""
        staged = f.staged
        if staged is None or not f.spool_pending:
            return
        touched, f.touched = f.touched, set()
        f.sending = set(touched)
        size = staged.size
        try:
            if f.state in (State.UPLOADING, State.UPLOADED) and size < f.backend_size:
                f.to(State.REPLACING)  # shrunk after its upload: Sheepdog cannot shrink
            if f.state is State.REPLACING:
                await self.replacer.set_aside(f)
            await self.upload_objects(f, touched, size)
            if f.state is State.UPLOADING:
                f.used = len(f.ours) * f.object_size
                f.to(State.UPLOADED)
            f.ours = set()
            self.files_uploaded += 1
            self.record(f)
            log.debug("uploaded %r: %d bytes", f.name, size)
        except BaseException as e:
            f.touched |= touched
            if isinstance(e, BackendError):
                e.detail += f"; the new data is kept in {staged.path}"
                if f.aside:
                    e.detail += (
                        f"; the old data is in snapshot {f.aside} of this VDI"
                        f" (dog vdi clone -s {f.aside} NAME NEWNAME restores it)"
                    )
            raise
        finally:
            f.sending = set()
        if f.aside:
            self.replacer.settled(f)
            await self.replacer.drop_snapshot(f.name, f.aside)
            f.aside = None

    async def upload_objects(self, f: OpenFile, objects: set[int], size: int) -> None:
        """Make the VDI ``size`` bytes (creating it if needed) and write ``objects`` into it.

        Under ``f.lock``. A VDI we created and have not filled (UPLOADING) reads zero
        wherever we have not written: all-zero objects are skipped there unless we wrote
        data into them before. Into any other VDI every object given is written.
        """
        staged = f.staged
        assert staged is not None
        osz = f.object_size
        if f.state is State.STAGED:
            await self.create_vdi(f, size)
            # Everything the spool holds goes in, whatever was noted as written.
            objects = objects | await trio.to_thread.run_sync(staged.data_objects, osz)
        elif size > f.backend_size:
            await self.backend.resize(f.name, size)
            f.backend_size = size
            self.record(f)
        if f.state is State.UPLOADING:
            unknown = objects - f.has_data  # only zeros written there, or not through us
            nonzero = objects & f.has_data
            if unknown:
                nonzero |= await trio.to_thread.run_sync(staged.nonzero_objects, unknown, osz)
            objects = nonzero | (objects & f.ours)
        runs = object_runs(objects, osz, size)
        if f.state is State.UPLOADING:
            # Before the write: if it fails halfway, an object may hold some of our bytes,
            # so it must be written again even if it later holds only zeros.
            for offset, length in runs:
                f.ours.update(range(offset // osz, -(-(offset + length) // osz)))
        if runs:
            await self._send(f, runs)

    async def _send(self, f: OpenFile, runs: list[tuple[int, int]]) -> None:
        """Write ``runs`` of the spool file into the VDI, a slice at a time (one call each:
        a backend that can sends several objects at once), counting what has gone."""
        assert f.staged is not None
        progress = self.progress[f.id] = Progress(sum(n for _, n in runs))
        limit = max(1, UPLOAD_SLICE // f.object_size) * f.object_size  # whole objects
        try:
            for part in slices(runs, limit):
                sent = await self.backend.write_extents(f.name, f.staged.fd, part)
                progress.done += sent
                self.uploaded += sent
        finally:
            if self.progress.get(f.id) is progress:
                del self.progress[f.id]

    async def create_vdi(self, f: OpenFile, size: int) -> None:
        """Create the VDI of a STAGED file (under its lock); it reads zero until written."""
        staged = f.staged
        assert staged is not None
        size = await self._create(f, size)
        if f.state is State.TORN:  # a spool write failed while it was made: it goes at close
            f.torn_from = State.UPLOADING
            assert f.torn is not None
            raise f.torn
        f.to(State.UPLOADING)
        f.ours = set()
        staged.created = True
        staged.save_meta()
        f.backend_size = size
        await created(self.times, f)  # over whatever an earlier VDI of the name left
        self.record(f)

    async def _create(self, f: OpenFile, size: int) -> int:
        """Create ``f``'s VDI; returns its size. A create that failed may have landed (its
        reply lost: a sheep stopped answering, a dog killed at --timeout); if the next one
        finds the VDI there, it is that one, empty, and the upload goes on into it."""
        try:
            await self.backend.create(f.name, size, f.layout)
        except Exists:
            info = await self.backend.lookup(f.name) if f.id in self._unsure else None
            if info is None:
                raise
            log.info("%r: the create that failed had made the VDI: the upload goes on", f.name)
            if info.size < size:
                await self.backend.resize(f.name, size)
            size = max(size, info.size)
        except BackendError:
            self._unsure.add(f.id)
            raise
        self._unsure.discard(f.id)
        return size

    async def create_empty(self, f: OpenFile) -> None:
        """The flush of a new file that holds no data yet (``touch``, ``cmd > new``).

        Its VDI must exist when close() returns, so it is created here with size 0. A
        shell redirect's later data grows it (resize) and fills only the objects that get
        data, exactly as for a file whose upload began behind its writer.
        """
        async with f.lock:
            if f.state is State.STAGED:
                await self.create_vdi(f, 0)

    # -- behind the writer -------------------------------------------------------------------

    def maybe_upload_behind(self, f: OpenFile) -> None:
        """Start uploading a new file's complete objects while it is still being written."""
        if (
            f.id in self._behind
            or f.lock.locked()
            or f.behind_failed is not None
            or f.aside is not None
            or f.state not in (State.STAGED, State.UPLOADING)
        ):
            return
        if len(complete_touched(f)) * f.object_size >= self.write_behind_min:
            if self.tasks.start(self._upload_behind, f):
                self._behind.add(f.id)

    async def _upload_behind(self, f: OpenFile) -> None:
        try:
            async with f.lock:
                await self._upload_complete_objects(f)
        finally:
            self._behind.discard(f.id)

    async def _upload_complete_objects(self, f: OpenFile) -> None:
        staged = f.staged
        if staged is None or f.state not in (State.STAGED, State.UPLOADING):
            return
        ready = complete_touched(f)
        if not ready:
            return
        f.touched -= ready
        f.sending = set(ready)
        try:
            await self.upload_objects(f, ready, staged.size)
            log.debug("%r: objects up to %d uploaded while it is written", f.name, max(ready))
        except (BackendError, OSError) as e:  # OSError: the spool disk (full): not the mount's end
            f.touched |= ready
            f.behind_failed = e
            log.warning("upload of %r while it is written failed (close retries): %s", f.name, e)
        except BaseException:
            f.touched |= ready
            raise
        finally:
            f.sending = set()


def complete_touched(f: OpenFile) -> set[int]:
    """Objects written since the last upload that the file has grown past (complete)."""
    complete = f.size // f.object_size
    return {index for index in f.touched if index < complete}


def object_runs(objects: set[int], object_size: int, size: int) -> list[tuple[int, int]]:
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


def slices(runs: list[tuple[int, int]], limit: int) -> Iterator[list[tuple[int, int]]]:
    """``runs`` in order, cut into groups of at most ``limit`` bytes each."""
    group: list[tuple[int, int]] = []
    room = limit
    for offset, length in runs:
        while length > 0:
            n = min(length, room)
            group.append((offset, n))
            offset, length, room = offset + n, length - n, room - n
            if room == 0:
                yield group
                group, room = [], limit
    if group:
        yield group
