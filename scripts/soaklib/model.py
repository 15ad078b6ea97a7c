"""What every file of the soak may hold.

Each file has one acknowledged content (``known``: what the workload wrote and was told
succeeded, by a close or fsync that returned 0) and, after an operation that failed or
whose outcome a fault made unknown, one other possible content (``maybe``: what that
operation would have made). The uncertainty is bounded: a byte may then come from either,
nothing else, and the next quiet moment settles it (``settle``: the file is synced through
the mount, read from the cluster, checked, and what it holds becomes ``known``). A worker
never starts an operation on an unsettled file.

Contents are immutable ``Version``s: a shadow file on local disk (or no file: zeros) up to
``size``, with patches on top (what ``dd`` or fio wrote), so a refused write costs no copy.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path

MiB = 1 << 20


@dataclass(frozen=True)
class Patch:
    offset: int
    data: bytes


@dataclass(frozen=True)
class Version:
    """One content of a file; ``exists`` False: no such file."""

    exists: bool
    size: int = 0
    base: Path | None = None  # never longer than ``size``; None: zeros
    patches: tuple[Patch, ...] = ()

    def read(self, offset: int, length: int) -> bytes:
        """Bytes ``offset``..``offset+length`` (short past the end)."""
        length = max(0, min(length, self.size - offset))
        if not self.exists or length == 0:
            return b""
        buf = bytearray(length)
        if self.base is not None:
            with open(self.base, "rb") as f:
                f.seek(offset)
                got = f.read(length)
            buf[: len(got)] = got
        for p in self.patches:
            lo, hi = max(offset, p.offset), min(offset + length, p.offset + len(p.data))
            if lo < hi:
                buf[lo - offset : hi - offset] = p.data[lo - p.offset : hi - p.offset]
        return bytes(buf)

    def patched(self, offset: int, data: bytes) -> Version:
        """This content with ``data`` written at ``offset`` (growing it if need be)."""
        if not data:
            return self
        size = max(self.size, offset + len(data))
        return replace(self, size=size, patches=(*self.patches, Patch(offset, bytes(data))))

    def grown(self, size: int) -> Version:
        return replace(self, size=max(self.size, size))

    @property
    def patch_bytes(self) -> int:
        return sum(len(p.data) for p in self.patches)


ABSENT = Version(False)


def materialize(v: Version, path: Path) -> Version:
    """The same content as one shadow file at ``path``, patches applied."""
    if v.base is not None:
        subprocess.run(["cp", "--sparse=always", "--", str(v.base), str(path)], check=True)
    # Not "ab": with O_APPEND every write lands at the end, whatever the seek before it.
    with open(path, "r+b" if v.base is not None else "wb") as f:
        for p in v.patches:
            f.seek(p.offset)
            f.write(p.data)
        f.truncate(v.size)
    return Version(True, v.size, path)


@dataclass
class Entry:
    """One name of the soak and what it may hold."""

    name: str
    known: Version = ABSENT
    maybe: Version | None = None
    #: The unsettled operation may also have left zeros anywhere: rsync ``--inplace``
    #: fills a block of the file it cannot read back with zeros, writes it, and only then
    #: fails (a read refused under a fault).
    maybe_zeros: bool = False
    last_op: str = "-"  # the last operation on it, for the failure report
    last_at: float = 0.0
    history: list[str] = field(default_factory=list)  # the last few, for the same

    def did(self, what: str, at: float) -> None:
        self.last_op, self.last_at = what, at
        self.history = [*self.history[-5:], what]

    @property
    def settled(self) -> bool:
        return self.maybe is None

    def candidates(self) -> list[Version]:
        return [self.known] if self.maybe is None else [self.known, self.maybe]

    def acknowledged(self, v: Version) -> None:
        self.known, self.maybe, self.maybe_zeros = v, None, False

    def refused(self, v: Version, zeros: bool = False) -> None:
        """The operation that would have made ``v`` failed: ``v`` may or may not be there
        (``zeros``: nor may what it wrote be either, see ``maybe_zeros``)."""
        assert self.maybe is None, f"{self.name}: an operation on an unsettled file"
        if v != self.known:
            self.maybe, self.maybe_zeros = v, zeros


@dataclass
class Model:
    """Every name of the soak, in per-worker groups (a worker is the only one that changes
    its files; ``locks[w]`` is held while it does, and while they are checked)."""

    shadow_dir: Path
    workers: int
    names_per_worker: int
    tag: str
    entries: dict[str, Entry] = field(default_factory=dict)
    locks: list[threading.Lock] = field(default_factory=list)
    _serial: int = 0
    _mutex: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.shadow_dir.mkdir(parents=True, exist_ok=True)
        self.locks = [threading.Lock() for _ in range(self.workers)]
        for w in range(self.workers):
            for k in range(self.names_per_worker):
                name = f"{self.tag}-w{w}-f{k}"
                self.entries[name] = Entry(name)

    def of_worker(self, w: int) -> list[Entry]:
        prefix = f"{self.tag}-w{w}-"
        return [e for n, e in self.entries.items() if n.startswith(prefix)]

    def worker_of(self, name: str) -> int:
        return int(name[len(self.tag) + 2 :].split("-", 1)[0])

    def new_path(self, worker: int, what: str) -> Path:
        """A new shadow file of worker ``worker`` (under its lock)."""
        with self._mutex:
            self._serial += 1
            return self.shadow_dir / f"w{worker}-{self._serial:06d}-{what}"

    def collect(self, worker: int) -> int:
        """Delete worker ``worker``'s shadow files no content refers to any more (under its
        lock: nothing of it is being made then); returns how many."""
        used = {v.base for e in self.of_worker(worker) for v in e.candidates()}
        gone = 0
        for p in self.shadow_dir.glob(f"w{worker}-*"):
            if p not in used:
                p.unlink(missing_ok=True)
                gone += 1
        return gone

    def live_bytes(self) -> int:
        return sum(max(v.size for v in e.candidates()) for e in self.entries.values())

    def compact(self, worker: int, v: Version, limit: int = 64 * MiB) -> Version:
        """``v`` with its patches folded into a new shadow file once they grow large."""
        if v.patch_bytes <= limit and len(v.patches) <= 64:
            return v
        return materialize(v, self.new_path(worker, "compact"))

    def forget_shadows(self) -> None:
        shutil.rmtree(self.shadow_dir, ignore_errors=True)
