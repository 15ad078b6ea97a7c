"""One open file (or one being created) and the states of its life.

Where a file's bytes are and what its VDI holds is one explicit :class:`State`, changed
only through :meth:`OpenFile.to`, which knows every transition allowed (``_NEXT``). What
the states mean and why each transition happens is written in docs/DEVELOPING.md.
"""

from __future__ import annotations

import enum
import logging
import time
from dataclasses import dataclass, field

import trio

from ..backends.base import DEFAULT_BLOCK_SIZE_SHIFT, Layout, ObjectGeometry, VdiInfo
from ..spool import StagedFile
from .times import Times

log = logging.getLogger(__name__)


class State(enum.Enum):
    #: An existing VDI: reads and writes go through the chunk cache.
    LIVE = "live"
    #: In the spool; no VDI of its name holds any of it (a new file, or old data set aside).
    STAGED = "staged"
    #: In the spool; its VDI, created by us, holds part of it and reads zero elsewhere.
    UPLOADING = "uploading"
    #: In the spool; its VDI held all of it at the last upload (later writes go again).
    UPLOADED = "uploaded"
    #: In the spool; the VDI of its name holds older data that it replaces.
    REPLACING = "replacing"
    #: A write to its spool file failed: the file is incomplete and never uploaded.
    TORN = "torn"
    #: Deleted while open: nothing more of it is saved.
    UNLINKED = "unlinked"


_NEXT: dict[State, frozenset[State]] = {
    State.LIVE: frozenset({State.REPLACING, State.UNLINKED}),
    State.STAGED: frozenset({State.UPLOADING, State.REPLACING, State.TORN, State.UNLINKED}),
    State.UPLOADING: frozenset({State.UPLOADED, State.REPLACING, State.TORN, State.UNLINKED}),
    State.UPLOADED: frozenset({State.REPLACING, State.TORN, State.UNLINKED}),
    State.REPLACING: frozenset({State.STAGED, State.TORN, State.UNLINKED}),
    State.TORN: frozenset({State.UNLINKED}),
    State.UNLINKED: frozenset(),
}

#: States in which the VDI of the file's name exists (holding its data, part or old).
_HAS_VDI = frozenset({State.LIVE, State.UPLOADING, State.UPLOADED, State.REPLACING})
#: States in which the file's bytes are in a spool file.
SPOOLED = frozenset({State.STAGED, State.UPLOADING, State.UPLOADED, State.REPLACING})


@dataclass(eq=False)
class OpenFile(ObjectGeometry):
    """The state of one file. ``id`` is its inode number.

    ``lock`` serializes moving this file's data into the backend (uploads, write-back,
    resize, replace, rename): at most one of them runs at a time, so at most one write is
    in flight per object, and a state change in one is never interleaved with another.
    It is never held while waiting for the user, only for the backend.
    """

    id: int
    name: bytes
    size: int
    backend_size: int  # the VDI's size in the backend (0 while it has none)
    block_size_shift: int
    ctime: int
    used: int
    state: State
    layout: Layout | None = None  # an existing VDI's: kept when it is created again
    staged: StagedFile | None = None  # the spool file, in the SPOOLED states (and TORN)
    touched: set[int] = field(default_factory=set)  # spool objects written since uploaded
    sending: set[int] = field(default_factory=set)  # objects an upload is sending now
    ours: set[int] = field(default_factory=set)  # UPLOADING: objects holding our data
    has_data: set[int] = field(default_factory=set)  # spool objects given non-zero bytes
    aside: str | None = None  # the snapshot holding the old data while it is replaced
    aside_tried: str | None = None  # the tag of a snapshot for it that may have landed
    behind_failed: Exception | None = None  # an upload behind the writer failed: wait for close
    torn: OSError | None = None  # TORN: the spool write that failed
    torn_from: State | None = None  # TORN: the state it was torn in
    opens: int = 0
    direct_io: bool = False  # its open handles bypass the kernel's page cache
    lock: trio.Lock = field(default_factory=trio.Lock)
    # Its times (core/filetimes.py): set on it (None: those kept for its VDI), the time of
    # the last write since, what its VDI keeps, and whether ``ctime`` is its VDI's.
    times: Times | None = None
    written_ns: int = 0
    saved_times: Times | None = None
    times_bound: bool = True

    # -- construction ------------------------------------------------------------------------

    @classmethod
    def live(cls, ino: int, info: VdiInfo) -> OpenFile:
        return cls(
            id=ino,
            name=info.name,
            size=info.size,
            backend_size=info.size,
            block_size_shift=info.block_size_shift,
            ctime=info.ctime,
            used=info.used,
            state=State.LIVE,
            layout=info.layout,
        )

    @classmethod
    def new(cls, ino: int, name: bytes, staged: StagedFile) -> OpenFile:
        return cls(
            id=ino,
            name=name,
            size=0,
            backend_size=0,
            block_size_shift=DEFAULT_BLOCK_SIZE_SHIFT,
            ctime=int(time.time()),
            used=0,
            state=State.STAGED,
            staged=staged,
            times=Times.now(),
            times_bound=False,
        )

    # -- the state machine -------------------------------------------------------------------

    def to(self, new: State) -> None:
        """Move to state ``new``; a transition not in ``_NEXT`` is a bug."""
        if new not in _NEXT[self.state]:
            raise AssertionError(f"{self.name!r}: no transition {self.state.name} -> {new.name}")
        log.debug("%r: %s -> %s", self.name, self.state.name, new.name)
        self.state = new

    def tear(self, error: OSError) -> None:
        """A spool write failed: the file can never be uploaded whole."""
        if self.state is not State.TORN:
            self.torn, self.torn_from = error, self.state
            self.to(State.TORN)

    @property
    def has_vdi(self) -> bool:
        """Whether a VDI of this file's name exists in the backend."""
        state = self.torn_from if self.state is State.TORN else self.state
        return state in _HAS_VDI

    @property
    def spooled(self) -> bool:
        return self.state in SPOOLED

    @property
    def gone(self) -> bool:
        return self.state is State.UNLINKED

    @property
    def erasure_coded(self) -> bool:
        return self.layout is not None and self.layout.erasure_coded

    @property
    def spool_pending(self) -> bool:
        """Whether the spool holds bytes the VDI does not (or an upload is sending them)."""
        if self.state in (State.STAGED, State.UPLOADING, State.REPLACING):
            return True
        if self.state is State.UPLOADED:
            return bool(self.touched or self.sending) or self.size != self.backend_size
        return False

    def info(self) -> VdiInfo:
        """What the listing shows of this file while we know better than the backend."""
        return VdiInfo(
            name=self.name,
            size=self.size,
            used=self.used,
            ctime=self.ctime,
            layout=self.layout or Layout(self.block_size_shift),
        )
