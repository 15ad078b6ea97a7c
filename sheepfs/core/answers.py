"""What the filesystem answers the FUSE adapter: a file's attributes, a new handle, the
mount's counters; plain values, so the adapter never reaches into open files."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Attrs:
    ino: int
    size: int
    used: int
    ctime: int
    object_size: int
    mtime_ns: int | None = None  # None: the creation time (``ctime``)
    atime_ns: int | None = None


@dataclass(frozen=True)
class Counters:
    """What the mount has done since it began (the unmount summary)."""

    files_uploaded: int
    bytes_uploaded: int
    bytes_written_back: int
    backend_calls: int
    errors: int


@dataclass(frozen=True)
class Opened:
    """A new handle, and how the kernel should cache what is read through it."""

    fh: int
    direct_io: bool
    keep_cache: bool
