"""The spool: new files live here, on local disk, until their VDI holds the data.

Sheepdog fixes a VDI's size at creation, so a new file is written to a sparse spool file and
its VDI is created when the file is closed, or once enough of it is written to start
uploading it behind the writer (see :mod:`sheepfs.core.upload`). Each spool file has a small
JSON sidecar naming its VDI, so data left behind by a crash can be found and named later.
"""

from __future__ import annotations

import base64
import errno
import functools
import json
import logging
import os
import stat
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


class SpoolError(Exception):
    """The spool directory is unusable (wrong owner or mode, not a directory)."""


def default_spool_dir() -> Path:
    if os.geteuid() == 0:
        return Path("/var/cache/sheepfs")
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "sheepfs"


@dataclass
class StagedFile:
    """One spool file: a sparse local copy of a file that is not (fully) in Sheepdog yet."""

    path: Path
    meta_path: Path
    vdi_name: bytes
    fd: int
    #: We created the VDI for this file (so a later run may finish writing into it).
    created: bool = False
    #: The file replaces an existing VDI's data (so a later run must not guess).
    replaces: bool = False

    @property
    def size(self) -> int:
        return os.fstat(self.fd).st_size

    @property
    def allocated(self) -> int:
        """Bytes of disk the spool file takes (its holes take none)."""
        return os.fstat(self.fd).st_blocks * 512

    def pread(self, offset: int, size: int) -> bytes:
        return os.pread(self.fd, size, offset)

    def pwrite(self, offset: int, data: bytes) -> int:
        view = memoryview(data)
        done = 0
        while done < len(view):
            done += os.pwrite(self.fd, view[done:], offset + done)
        return done

    def truncate(self, size: int) -> None:
        os.ftruncate(self.fd, size)

    def fsync(self) -> None:
        os.fsync(self.fd)

    def rename(self, vdi_name: bytes) -> None:
        self.vdi_name = vdi_name
        self.save_meta()

    def save_meta(self) -> None:
        """Record what a later run needs to know to finish or report this file."""
        _write_meta(self.meta_path, self.vdi_name, created=self.created, replaces=self.replaces)

    def data_objects(self, object_size: int) -> set[int]:
        """Indexes of the objects holding any allocated extent (holes are skipped)."""
        return {start // object_size for start in _data_objects(self.fd, self.size, object_size)}

    def nonzero_objects(self, indexes: Iterable[int], object_size: int) -> set[int]:
        """Those of ``indexes`` whose object holds a non-zero byte (inside the file).

        Reads each object: CPU- and memory-heavy, so call it from a worker thread.
        """
        size = self.size
        buf = bytearray(object_size)  # one buffer for all: no allocation per object
        found = set()
        for index in sorted(indexes):
            start = index * object_size
            length = min(object_size, size - start)
            if length <= 0:
                continue
            got = os.preadv(self.fd, [buf], start) if length == object_size else 0
            # The last, short object (or a short read) is read on its own.
            data = buf if got == object_size else os.pread(self.fd, length, start)
            if has_data(data):
                found.add(index)
        return found

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def remove(self) -> None:
        """Drop the spool file: only once its data is safely in Sheepdog (or unwanted)."""
        self.close()
        for p in (self.path, self.meta_path):
            try:
                p.unlink()
            except FileNotFoundError:
                pass


@functools.lru_cache(maxsize=4)
def _zeros(length: int) -> bytes:
    return bytes(length)


def has_data(data: bytes | bytearray) -> bool:
    """Whether ``data`` holds a non-zero byte, at memcmp speed (no per-byte Python work)."""
    if not data:
        return False
    return bool(data[0] or data[-1]) or data != _zeros(len(data))


def _data_objects(fd: int, size: int, object_size: int) -> Iterator[int]:
    """Start offsets of the objects that hold any allocated (data) extent."""
    pos = 0
    last = -object_size
    while pos < size:
        try:
            data = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:
                return
            raise
        hole = min(os.lseek(fd, data, os.SEEK_HOLE), size)
        first = data // object_size * object_size
        for obj in range(max(first, last + object_size), hole, object_size):
            yield obj
            last = obj
        pos = hole


def _write_meta(meta_path: Path, vdi_name: bytes, **state: bool) -> None:
    tmp = meta_path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"vdi": base64.b64encode(vdi_name).decode(), **state}))
    os.chmod(tmp, 0o600)
    os.replace(tmp, meta_path)


@dataclass(frozen=True)
class Aside:
    """A VDI's old data is set aside in a snapshot while a replace or a rename over it runs.
    The record lives until that has ended; one a failure or a crash leaves tells sheepfs to
    put the old data back (:mod:`sheepfs.core.aside`). ``kind`` "replace": whatever VDI of
    that name exists is not the data the name must hold (a VDI made again, or one whose
    delete was cut off, its index zeroed); "rename": the old VDI is deleted, and a VDI of
    that name is a new one."""

    path: Path
    vdi_name: bytes
    tag: str
    kind: str

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


@dataclass
class Spool:
    """The spool directory: 0700, owned by the mounting user, refused otherwise."""

    root: Path

    def prepare(self) -> None:
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = os.lstat(self.root)
        if not stat.S_ISDIR(st.st_mode):
            raise SpoolError(f"spool {self.root} is not a directory")
        if st.st_uid != os.geteuid():
            raise SpoolError(f"spool {self.root} is owned by uid {st.st_uid}, not by us")
        if st.st_mode & 0o077:
            raise SpoolError(
                f"spool {self.root} has mode {stat.S_IMODE(st.st_mode):o}; it must be 0700 "
                "(it holds users' data)"
            )

    def new(self, vdi_name: bytes) -> StagedFile:
        stem = uuid.uuid4().hex
        path = self.root / f"{stem}.data"
        meta = self.root / f"{stem}.json"
        _write_meta(meta, vdi_name)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        return StagedFile(path=path, meta_path=meta, vdi_name=vdi_name, fd=fd)

    def set_aside(self, vdi_name: bytes, tag: str, kind: str, path: Path | None = None) -> Aside:
        """Record that ``vdi_name``'s old data is in its snapshot ``tag`` (before the VDI
        is deleted); with ``path``, that record, rewritten."""
        path = path or self.root / f"{uuid.uuid4().hex}.aside"
        tmp = path.with_suffix(".tmp")
        name = base64.b64encode(vdi_name).decode()
        tmp.write_text(json.dumps({"vdi": name, "tag": tag, "kind": kind}))
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
        return Aside(path, vdi_name, tag, kind)

    def asides(self) -> list[Aside]:
        """Old data an earlier run set aside and did not see through."""
        found = []
        for path in sorted(self.root.glob("*.aside")):
            try:
                info = json.loads(path.read_text())
                found.append(Aside(path, base64.b64decode(info["vdi"]), info["tag"], info["kind"]))
            except (OSError, ValueError, KeyError) as e:
                log.error("spool: cannot use %s: %s", path, e)
        return found

    def leftovers(self) -> list[StagedFile]:
        """Spool files left by an earlier run (crash or failed upload), opened again."""
        found = []
        for meta in sorted(self.root.glob("*.json")):
            path = meta.with_suffix(".data")
            try:
                info = json.loads(meta.read_text())
                name = base64.b64decode(info["vdi"])
                fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
            except (OSError, ValueError, KeyError) as e:
                log.error("spool: cannot use leftover %s: %s", meta, e)
                continue
            found.append(
                StagedFile(
                    path=path,
                    meta_path=meta,
                    vdi_name=name,
                    fd=fd,
                    created=bool(info.get("created")),
                    replaces=bool(info.get("replaces")),
                )
            )
        return found
