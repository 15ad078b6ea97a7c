"""What tests of the core share: a mounted core over a :class:`MemoryBackend`, in-process.

Each test builds its own backend and mounts it with :func:`mount`, so it can shape the
store first (``backend.put``), inject faults while mounted, and look at the store and at
``fs.saved`` after the ordered shutdown.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from sheepfs.core.filesystem import CoreConfig, Filesystem
from sheepfs.spool import Spool
from tests.memory_backend import MemoryBackend

KiB = 1 << 10
MiB = 1 << 20
#: New files get Sheepdog's default 4 MiB objects.
OBJ = 4 * MiB
#: VDIs the tests put get 1 MiB objects: small chunks keep the tests fast.
SMALL = 20
#: Calls that change the store (all but list, lookup, read, statfs, open).
MUTATING = frozenset(
    {"create", "delete", "resize", "snapshot", "clone", "delete_snapshot", "write"}
)


def spool_dir(tmp_path: Path) -> Path:
    return tmp_path / "spool"


def spool_files(tmp_path: Path) -> list[Path]:
    """The data files in the spool (each holds a file not (fully) in the backend)."""
    root = spool_dir(tmp_path)
    return sorted(root.glob("*.data")) if root.exists() else []


def make_fs(backend: MemoryBackend, tmp_path: Path, **config: Any) -> Filesystem:
    """A core over ``backend`` with a spool in ``tmp_path``; small cache unless told."""
    config.setdefault("cache_size", 8 * MiB)
    return Filesystem(backend, Spool(spool_dir(tmp_path)), CoreConfig(**config))


@asynccontextmanager
async def mount(backend: MemoryBackend, tmp_path: Path, **config: Any) -> AsyncIterator[Filesystem]:
    """The core running over ``backend`` for the body; shut down in order at its end."""
    fs = make_fs(backend, tmp_path, **config)
    async with fs.running():
        yield fs


def mutations(backend: MemoryBackend, since: int = 0) -> list[tuple]:
    """Calls that changed the store, from call number ``since`` on."""
    return [c for c in backend.calls[since:] if c[0] in MUTATING]


def ops(backend: MemoryBackend, since: int = 0) -> list[str]:
    """The names of the mutating calls from call number ``since`` on, in order."""
    return [c[0] for c in mutations(backend, since)]


async def write_all(
    fs: Filesystem, fh: int, data: bytes, offset: int = 0, piece: int = MiB
) -> None:
    """Write ``data`` at ``offset`` in ``piece``-sized requests, as the kernel would."""
    view = memoryview(data)
    pos = 0
    while pos < len(view):
        n = await fs.write(fh, offset + pos, bytes(view[pos : pos + piece]))
        assert n > 0
        pos += n


async def read_all(fs: Filesystem, fh: int, size: int, piece: int = MiB) -> bytes:
    """Read ``size`` bytes from offset 0 (less at the end of the file)."""
    out = bytearray()
    while len(out) < size:
        got = bytes(await fs.read(fh, len(out), min(piece, size - len(out))))
        if not got:
            break
        out += got
    return bytes(out)


async def new_file(fs: Filesystem, name: bytes, data: bytes = b"") -> int:
    """Create ``name`` and write ``data`` into it; the open handle."""
    opened, _ = await fs.create(name)
    await write_all(fs, opened.fh, data)
    return opened.fh


async def write_file(fs: Filesystem, name: bytes, data: bytes) -> None:
    """``cp`` of a new file: create, write, close (flush, then release)."""
    fh = await new_file(fs, name, data)
    await fs.flush(fh)
    await fs.release(fh)


async def open_name(
    fs: Filesystem, name: bytes, writing: bool = False, truncate: bool = False
) -> int:
    attrs = await fs.lookup(name)
    opened = await fs.open(attrs.ino, writing=writing, truncate=truncate)
    return opened.fh


async def read_name(fs: Filesystem, name: bytes) -> bytes:
    """The whole file ``name`` as the filesystem shows it."""
    attrs = await fs.lookup(name)
    fh = (await fs.open(attrs.ino, writing=False)).fh
    try:
        return await read_all(fs, fh, attrs.size)
    finally:
        await fs.release(fh)


async def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 2.0) -> None:
    """Poll ``predicate`` until it holds; fail the test with ``what`` if it never does."""
    with trio.move_on_after(timeout):
        while not predicate():
            await trio.sleep(0.002)
        return
    raise AssertionError(f"timed out waiting for {what}")


def random_bytes(size: int) -> bytes:
    return os.urandom(size)


def sparse(size: int, *pieces: tuple[int, bytes]) -> bytes:
    """``size`` zero bytes with each ``(offset, data)`` of ``pieces`` written over them."""
    out = bytearray(size)
    for offset, data in pieces:
        out[offset : offset + len(data)] = data
    return bytes(out)


def break_spool_file(path: Path, fd: int) -> None:
    """Make every later write through ``fd`` fail (as a full disk would), reads still work.

    The descriptor is replaced by a read-only one of the same file, whatever call the core
    uses to write, the kernel refuses it with an OSError.
    """
    ro = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.dup2(ro, fd)
    finally:
        os.close(ro)
