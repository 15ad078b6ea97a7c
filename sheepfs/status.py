"""What a running mount is doing, as one snapshot: a tree of dataclasses, to and from JSON.

The snapshot is taken from the daemon's memory only (open files, the upload under way,
counters, the spool's and cache's use): it never waits for the cluster and never touches a
VDI, so ``sheepfs status`` answers at once, also while the cluster does not. It is taken in
the event loop's thread (the state it reads is that thread's); :meth:`StatusSource.from_thread`
is the way in for other threads (the metrics server).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import trio

from . import __version__
from .core.filesystem import Filesystem
from .core.openfile import OpenFile, State
from .core.upload import Progress
from .names import encode

log = logging.getLogger(__name__)

#: Files listed one by one at most (largest pending first); the rest are only counted, so
#: the JSON stays well inside an extended attribute's 64 KiB.
MAX_LISTED = 32
#: The version of the JSON's shape; a reader refuses a newer one it cannot know.
FORMAT = 1


@dataclass
class Where:
    """What this mount is: fixed for its life."""

    mountpoint: str
    source: str  # the sheep addresses, or local:DIR
    backend: str  # sheep, dog or local
    pid: int = field(default_factory=os.getpid)
    version: str = __version__


@dataclass
class Pending:
    """One file with data not yet in the cluster."""

    name: str  # as the mount shows it
    state: str  # staged, uploading, uploaded, replacing (in the spool) or live (cached)
    size: int
    #: Bytes of it the cluster holds; None for cached changes of a live file (unknown).
    done: int | None
    uploading: bool  # an upload of it is under way now


@dataclass
class Calls:
    """Backend calls since the mount began."""

    calls: int = 0
    errors: int = 0
    in_flight: int = 0
    median: float = 0.0  # seconds, over the last few thousand calls
    p99: float = 0.0


@dataclass
class Spool:
    path: str = ""
    used: int = 0  # disk its files take
    free: int = 0  # free space on its disk


@dataclass
class Cache:
    used: int = 0
    budget: int = 0  # --cache-size


@dataclass
class Status:
    where: Where
    uptime: float = 0.0
    files_open: int = 0  # files with an open handle
    handles: int = 0
    staged: int = 0  # files in the spool
    pending: list[Pending] = field(default_factory=list)
    pending_files: int = 0  # all of them, listed or not
    pending_bytes: int = 0  # known bytes still to upload
    spool: Spool = field(default_factory=Spool)
    cache: Cache = field(default_factory=Cache)
    calls: Calls = field(default_factory=Calls)
    errors: int = 0  # failures reported to users (as in the unmount summary)
    files_uploaded: int = 0
    bytes_uploaded: int = 0
    bytes_written_back: int = 0
    stopping: bool = False  # shutdown has begun: pending data is being written
    format: int = FORMAT

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> Status:
        """Parse what :meth:`to_json` wrote (unknown keys are ignored: a newer daemon).
        Raises ValueError for anything else."""
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("format", 0) > FORMAT:
            raise ValueError("not a status this version of sheepfs can read")
        try:
            return _build(cls, data)
        except (TypeError, AttributeError) as e:
            raise ValueError(f"not a status: {e}") from None


#: The fields of each dataclass that hold dataclasses (or a list of them: ``pending``).
_NESTED: dict[type, dict[str, type]] = {
    Status: {"where": Where, "spool": Spool, "cache": Cache, "calls": Calls, "pending": Pending}
}


def _build(cls: Any, data: dict[str, Any]) -> Any:
    """A dataclass from its ``asdict`` form, nested ones too."""
    nested = _NESTED.get(cls, {})
    known = {f.name for f in fields(cls)}
    args: dict[str, Any] = {}
    for key, value in data.items():
        if key not in known:
            continue
        kind = nested.get(key)
        if kind is not None:
            value = [_build(kind, v) for v in value] if key == "pending" else _build(kind, value)
        args[key] = value
    return cls(**args)


def shown_name(vdi_name: bytes) -> str:
    """A VDI's name as the mount lists it, as text (bytes that are no UTF-8 as escapes)."""
    return encode(vdi_name).decode("utf-8", "backslashreplace")


def _object_bytes(objects: set[int], object_size: int, size: int) -> int:
    return sum(max(0, min(object_size, size - i * object_size)) for i in objects)


def spool_done(f: OpenFile, progress: Progress | None) -> int:
    """Bytes of a spool file that its VDI holds: all but the objects written since the last
    upload and what the upload under way has still to send (holes count as held: the VDI
    reads zero there too)."""
    if f.state in (State.STAGED, State.REPLACING):
        return 0  # no VDI of it yet (or one holding older data)
    if progress is None:
        waiting = _object_bytes(f.touched | f.sending, f.object_size, f.size)
    else:  # the objects being sent are counted by the upload itself
        waiting = _object_bytes(f.touched - f.sending, f.object_size, f.size)
        waiting += progress.total - progress.done
    return max(0, f.size - waiting)


class StatusSource:
    """Takes snapshots of one mount's core (see the module docstring)."""

    def __init__(
        self, core: Filesystem, where: Where, errors: Callable[[], int] = lambda: 0
    ) -> None:
        self.core = core
        self.where = where
        self.adapter_errors = errors  # the adapter's count of failed requests
        self.started = time.monotonic()
        self.stopping = False
        self._token: trio.lowlevel.TrioToken | None = None

    def bind(self) -> None:
        """Remember the running event loop, for :meth:`from_thread` (call it in the loop)."""
        self._token = trio.lowlevel.current_trio_token()

    def from_thread(self) -> Status | None:
        """A snapshot for another thread, taken in the loop; None if no loop runs."""
        if self._token is None:
            return None
        try:
            return trio.from_thread.run_sync(self.snapshot, trio_token=self._token)
        except trio.RunFinishedError:
            return None

    def snapshot(self) -> Status:
        core = self.core
        files = [f for f in core.files.by_id.values() if not f.gone]
        counters = core.counters()
        stats = core.backend.stats
        pending = [p for p in map(self._pending, files) if p is not None]
        pending.sort(key=lambda p: (not p.uploading, -(p.size - (p.done or 0))))
        return Status(
            where=self.where,
            uptime=round(time.monotonic() - self.started, 3),
            files_open=sum(1 for f in files if f.opens > 0),
            handles=sum(f.opens for f in files),
            staged=sum(1 for f in files if f.staged is not None),
            pending=pending[:MAX_LISTED],
            pending_files=len(pending),
            pending_bytes=sum(p.size - p.done for p in pending if p.done is not None),
            spool=self._spool(files),
            cache=Cache(used=core.files.cache.used, budget=core.files.cache.budget),
            calls=Calls(
                calls=stats.calls,
                errors=stats.errors,
                in_flight=core.backend.in_flight,
                median=stats.percentile(50),
                p99=stats.percentile(99),
            ),
            errors=counters.errors + self.adapter_errors(),
            files_uploaded=counters.files_uploaded,
            bytes_uploaded=counters.bytes_uploaded,
            bytes_written_back=counters.bytes_written_back,
            stopping=self.stopping,
        )

    def _pending(self, f: OpenFile) -> Pending | None:
        if not self.core.files.has_pending(f):
            return None
        name = shown_name(f.name)
        if f.staged is None:
            uploading = f.lock.locked()
            return Pending(name, f.state.value, f.size, None, uploading)
        progress = self.core.files.uploader.progress.get(f.id)
        done = spool_done(f, progress)
        return Pending(name, f.state.value, f.size, done, progress is not None)

    def _spool(self, files: list[OpenFile]) -> Spool:
        root = self.core.spool.root
        used = 0
        for f in files:
            if f.staged is not None and f.staged.fd >= 0:
                try:
                    used += f.staged.allocated
                except OSError:
                    pass
        try:
            st = os.statvfs(root)
            free = st.f_bavail * st.f_frsize
        except OSError:
            free = 0
        return Spool(path=str(root), used=used, free=free)


def human(n: float) -> str:
    """Bytes for people: ``812.0 MiB``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def progress_line(s: Status) -> str | None:
    """One line on what is still to be written, first file first; None if nothing is."""
    if not s.pending_files:
        return None
    first = s.pending[0]
    if first.done is None:
        what = f"'{first.name}' (changes in the cache)"
    else:
        what = f"'{first.name}' {human(first.done)} of {human(first.size)}"
    more = s.pending_files - 1
    text = what + (f"; {more} more file{'s' if more > 1 else ''}" if more else "")
    return f"{text}; {human(s.pending_bytes)} to go"
