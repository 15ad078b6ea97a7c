"""A directory of sparse image files with Sheepdog's rules: try sheepfs without a cluster.

Each VDI is a sparse file ``<id>.img``; ``vdis.json`` maps VDI names (any bytes but NUL, so
they cannot be file names) to those files. Like Sheepdog, a VDI's size is fixed at creation,
it grows only by resize, never shrinks, and unwritten space takes no room.
"""

from __future__ import annotations

import base64
import errno
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path

import trio

from ..errors import BackendError, Exists, InvalidArgument, NoSpace, NotFound, TooLarge
from .base import (
    DEFAULT_BLOCK_SIZE_SHIFT,
    Backend,
    Buffer,
    FsStats,
    Hints,
    Layout,
    VdiInfo,
    VdiKind,
    check_name,
)
from .local_attrs import LocalAttributes

_OBJECT = 1 << DEFAULT_BLOCK_SIZE_SHIFT
_MAX_SIZE = _OBJECT << 20


class LocalBackend(LocalAttributes, Backend):
    #: A call is a thread's file operation: one name is cheap to look up, and requests need
    #: not be long to be efficient.
    hints = Hints(max_request=64 << 20, parallel_calls=8, cheap_lookup=True, cheap_attrs=True)

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    # -- the index ---------------------------------------------------------------------------

    def _index_path(self) -> Path:
        return self.root / "vdis.json"

    def _load(self) -> dict[bytes, dict]:
        try:
            raw = json.loads(self._index_path().read_text())
        except FileNotFoundError:
            return {}
        return {base64.b64decode(k): v for k, v in raw.items()}

    def _save(self, index: dict[bytes, dict]) -> None:
        tmp = self._index_path().with_suffix(".tmp")
        tmp.write_text(json.dumps({base64.b64encode(k).decode(): v for k, v in index.items()}))
        os.replace(tmp, self._index_path())

    def _path(self, name: bytes, op: str) -> Path:
        check_name(op, name)
        entry = self._load().get(name)
        if entry is None:
            raise NotFound(op, name, "No VDI found")
        return self.root / entry["file"]

    def _new_entry(self, op: str, name: bytes) -> tuple[dict[bytes, dict], Path]:
        """The index with a new entry for ``name``, and the image file to fill for it."""
        index = self._load()
        if name in index:
            raise Exists(op, name, "VDI exists already")
        vid = max((e["vid"] for e in index.values()), default=0) + 1
        path = self.root / f"{vid:06x}.img"
        now = time.time_ns()
        index[name] = {"file": path.name, "ctime": now // 10**9, "ctime_ns": now, "vid": vid}
        return index, path

    # -- Backend -----------------------------------------------------------------------------

    async def open(self) -> None:
        if not self.root.is_dir():
            raise BackendError("start", None, f"local store {self.root} is not a directory")

    async def list(self) -> dict[bytes, VdiInfo]:
        return await trio.to_thread.run_sync(self._list)

    def _list(self) -> dict[bytes, VdiInfo]:
        return {name: self._info(name, entry) for name, entry in self._load().items()}

    async def lookup(self, name: bytes) -> VdiInfo | None:
        """One entry of the index: no other image is looked at."""
        check_name("lookup", name)
        return await trio.to_thread.run_sync(self._lookup, name)

    def _lookup(self, name: bytes) -> VdiInfo | None:
        entry = self._load().get(name)
        return None if entry is None else self._info(name, entry)

    def _info(self, name: bytes, entry: dict) -> VdiInfo:
        """A VDI as Sheepdog would list it: one copy, objects of the default size."""
        path = self.root / entry["file"]
        st = os.stat(path)
        return VdiInfo(
            name=name,
            size=st.st_size,
            used=_allocated_objects(path, st.st_size) * _OBJECT,
            ctime=entry["ctime"],
            kind=VdiKind.WORKING,
            layout=Layout(copies=1),
            ctime_ns=entry.get("ctime_ns", 0),
        )

    async def read(self, name: bytes, offset: int, length: int) -> bytes:
        path = self._path(name, "read")

        def _read() -> bytes:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if offset > size:
                    raise InvalidArgument("read", name, "Read offset is beyond the end of the VDI")
                return os.pread(f.fileno(), min(length, size - offset), offset)

        return await trio.to_thread.run_sync(_read)

    async def write_parts(self, name: bytes, offset: int, parts: Sequence[Buffer]) -> None:
        path = self._path(name, "write")
        await trio.to_thread.run_sync(_pwrite_clipped, path, name, offset, b"".join(parts))

    async def write_extents(self, name: bytes, fd: int, extents: Sequence[tuple[int, int]]) -> int:
        """Copy the extents in one thread, an object at a time (the index is read once)."""
        target = self._path(name, "write")

        def _copy() -> int:
            total = 0
            for offset, length in extents:
                done = 0
                while done < length:
                    n = min(length - done, _OBJECT)
                    piece = os.pread(fd, n, offset + done)
                    piece += bytes(n - len(piece))  # past the file's end it reads zero
                    _pwrite_clipped(target, name, offset + done, piece)
                    done += n
                total += done
            return total

        return await trio.to_thread.run_sync(_copy)

    async def create(self, name: bytes, size: int, layout: Layout | None = None) -> None:
        # Image files have no object size or redundancy: ``layout`` has nothing to keep.
        check_name("create", name)
        if size > _MAX_SIZE:
            raise TooLarge("create", name, f"VDI size is larger than {_MAX_SIZE} bytes")
        index, path = self._new_entry("create", name)
        with open(path, "wb") as f:
            f.truncate(size)
        self._save(index)

    async def delete(self, name: bytes) -> None:
        path = self._path(name, "delete")
        index = self._load()
        del index[name]
        self._save(index)
        path.unlink()

    async def resize(self, name: bytes, size: int) -> None:
        path = self._path(name, "resize")
        if size > _MAX_SIZE:
            raise TooLarge("resize", name, f"This volume's max size is {_MAX_SIZE}")
        if size < path.stat().st_size:
            raise InvalidArgument("resize", name, "Shrinking VDIs is not implemented")
        os.truncate(path, size)

    # -- snapshots: sparse copies kept in snaps.json ---------------------------------------

    def _snaps_path(self) -> Path:
        return self.root / "snaps.json"

    def _load_snaps(self) -> dict[str, dict]:
        """Snapshot key -> ``{"file", "id", "ctime"}`` (an older store kept the file only)."""
        try:
            raw = json.loads(self._snaps_path().read_text())
        except FileNotFoundError:
            return {}
        return {
            k: v if isinstance(v, dict) else {"file": v, "id": i + 1, "ctime": 0}
            for i, (k, v) in enumerate(raw.items())
        }

    def _save_snaps(self, snaps: dict[str, dict]) -> None:
        tmp = self._snaps_path().with_suffix(".tmp")
        tmp.write_text(json.dumps(snaps))
        os.replace(tmp, self._snaps_path())

    @staticmethod
    def _snap_key(name: bytes, tag: str) -> str:
        return base64.urlsafe_b64encode(name).decode() + "/" + tag  # no "/" in the name part

    async def snapshot(self, name: bytes, tag: str) -> None:
        src = self._path(name, "snapshot")
        snaps = self._load_snaps()
        key = self._snap_key(name, tag)
        if key in snaps:
            raise Exists("snapshot", name, f"tag {tag} is existed")
        dst = self.root / f"{src.stem}-{tag.encode().hex()}.snap"
        await trio.to_thread.run_sync(_sparse_copy, src, dst)
        last = max((v["id"] for v in snaps.values()), default=0)
        snaps[key] = {"file": dst.name, "id": last + 1, "ctime": int(time.time())}
        self._save_snaps(snaps)

    async def clone(self, name: bytes, tag: str, new_name: bytes) -> None:
        check_name("clone", new_name)
        snap = self._load_snaps().get(self._snap_key(name, tag))
        if snap is None:
            raise NotFound("clone", name, f"Failed to find requested tag {tag}")
        index, dst = self._new_entry("clone", new_name)
        await trio.to_thread.run_sync(_sparse_copy, self.root / snap["file"], dst)
        self._save(index)

    def _find_snap(self, snaps: dict[str, dict], name: bytes, tag: str) -> str | None:
        """The key of snapshot ``tag`` of ``name`` (all digits: its id), or None."""
        if tag.isdigit():
            prefix = self._snap_key(name, "")
            ids = [k for k, v in snaps.items() if k.startswith(prefix) and v["id"] == int(tag)]
            return ids[0] if ids else None
        key = self._snap_key(name, tag)
        return key if key in snaps else None

    async def delete_snapshot(self, name: bytes, tag: str) -> None:
        snaps = self._load_snaps()
        key = self._find_snap(snaps, name, tag)
        if key is None:
            raise NotFound("delete snapshot", name, f"Failed to find requested tag {tag}")
        snap = snaps.pop(key)
        self._save_snaps(snaps)
        (self.root / snap["file"]).unlink()

    async def snapshots(self, name: bytes) -> list[VdiInfo]:
        check_name("snapshots", name)
        prefix = self._snap_key(name, "")
        found = []
        for key, v in self._load_snaps().items():
            if key.startswith(prefix):
                path = self.root / v["file"]
                size = path.stat().st_size
                used = _allocated_objects(path, size) * _OBJECT
                tag = key[len(prefix) :].encode()
                found.append(
                    VdiInfo(
                        name, size, used, v["ctime"], VdiKind.SNAPSHOT, snapshot_id=v["id"], tag=tag
                    )
                )
        return sorted(found, key=lambda i: i.snapshot_id)

    async def read_snapshot(self, name: bytes, snapshot_id: int, offset: int, length: int) -> bytes:
        check_name("read", name)
        snaps = self._load_snaps()
        key = self._find_snap(snaps, name, str(snapshot_id))
        if key is None:
            raise NotFound("read", name, f"no snapshot {snapshot_id}")
        path = self.root / snaps[key]["file"]

        def _read() -> bytes:
            with open(path, "rb") as f:
                f.seek(offset)
                return f.read(length)

        return await trio.to_thread.run_sync(_read)

    async def statfs(self) -> FsStats:
        st = os.statvfs(self.root)
        total = st.f_blocks * st.f_frsize
        avail = st.f_bavail * st.f_frsize
        return FsStats(total=total, used=total - st.f_bfree * st.f_frsize, avail=avail)


def _pwrite_clipped(path: Path, name: bytes, offset: int, data: bytes) -> None:
    """Write like ``dog vdi write``: never past the end of the VDI."""
    fd = os.open(path, os.O_WRONLY)
    try:
        size = os.fstat(fd).st_size
        if offset > size:
            raise InvalidArgument("write", name, "Write offset is beyond the end of the VDI")
        view = memoryview(data)[: max(0, size - offset)]
        done = 0
        while done < len(view):
            try:
                done += os.pwrite(fd, view[done:], offset + done)
            except OSError as e:
                if e.errno == errno.ENOSPC:
                    raise NoSpace("write", name, "no space left in the local store") from None
                raise
    finally:
        os.close(fd)


def _sparse_copy(src: Path, dst: Path) -> None:
    """Copy only the allocated extents, so a copy of a thin image stays thin."""
    with open(src, "rb") as s, open(dst, "wb") as d:
        size = os.fstat(s.fileno()).st_size
        d.truncate(size)
        pos = 0
        while pos < size:
            try:
                data = os.lseek(s.fileno(), pos, os.SEEK_DATA)
            except OSError:
                break
            hole = min(os.lseek(s.fileno(), data, os.SEEK_HOLE), size)
            while data < hole:
                piece = os.pread(s.fileno(), min(hole - data, _OBJECT), data)
                os.pwrite(d.fileno(), piece, data)
                data += len(piece)
            pos = hole


def _allocated_objects(path: Path, size: int) -> int:
    """Objects holding any allocated extent (what Sheepdog would count as used)."""
    seen: set[int] = set()
    with open(path, "rb") as f:
        fd = f.fileno()
        pos = 0
        while pos < size:
            try:
                data = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:
                break
            hole = min(os.lseek(fd, data, os.SEEK_HOLE), size)
            seen.update(range(data // _OBJECT, (hole - 1) // _OBJECT + 1))
            pos = hole
    return len(seen)
