"""The Sheepdog backend: the ``dog`` CLI (``collie`` before Sheepdog 0.7).

Every call is an argv (never a shell) with names after ``--``, so no name is taken for an
option; every call has a timeout and is killed on expiry (dog blocks forever on a peer that
accepts and never answers); the exit code is checked before stdout is used (usage text goes
to stdout with exit 64); and ``vdi delete``, which always exits 0, is judged by its stderr.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from ...errors import BackendError, NotFound, NotPermitted, PartialListing, Unavailable
from ..base import Backend, Buffer, FsStats, Hints, Layout, VdiInfo, check_name
from . import process
from .attrs import AttributeCalls
from .errors import MissingAttribute, error_for
from .listing import DogRow, parse_node_info, parse_share, parse_vdi_list, to_vdi_info

log = logging.getLogger(__name__)

#: Deletes of a VDI whose emptied inode the sheep lost, before giving up (F23).
REDELETES = 2
#: A key no one sets: ``vdi getattr`` of it tells a VDI found by name from none.
PROBE_KEY = b"sheepfs.deleted-check"


def _layout_opts(layout: Layout) -> list[str]:
    """``dog vdi create`` options that keep ``layout``: ``-z SHIFT``, ``-c N`` or ``-c D:P``."""
    opts = ["-z", str(layout.block_size_shift)]
    if layout.copies:
        copies = f"{layout.copies}:{layout.parity}" if layout.parity else str(layout.copies)
        opts += ["-c", copies]
    return opts


class DogBackend(AttributeCalls, Backend):
    """A Sheepdog cluster through its CLI: one ``dog`` process per call."""

    #: A dog process costs 15-50 ms whatever it carries (docs/SHEEPDOG.md F5): the longer
    #: the call the better (the core also caps runs at half its cache). Listing one name
    #: costs as much as listing them all (F6).
    hints = Hints(
        max_request=1 << 40,
        parallel_calls=8,
        serialize_first_writes=True,
        serialize_ec_writes=True,
        cheap_lookup=False,
    )

    def __init__(
        self, dog: str, address: str = "127.0.0.1", port: int = 7000, timeout: float = 60.0
    ) -> None:
        self.dog = dog
        self.address = address
        self.port = port
        self.timeout = timeout
        self._share: float | None = None  # raw bytes per byte written (see statfs)

    def _argv(self, cmd: Sequence[str], *args: bytes | str, opts: Sequence[str] = ()) -> list:
        return [
            self.dog, *cmd, *opts, "-a", self.address, "-p", str(self.port), "--", *args
        ]  # fmt: skip

    def _plain(self, *args: str) -> list:
        """argv for a command that takes no name."""
        return [self.dog, *args, "-a", self.address, "-p", str(self.port)]

    async def _run(
        self, op: str, name: bytes | None, argv: list, stdin: bytes | int = b""
    ) -> tuple[bytes, bytes]:
        """Run dog; return (stdout, stderr) if it exited 0, else raise the mapped error."""
        return await process.run(op, name, argv, self.timeout, stdin)

    # -- lifecycle ---------------------------------------------------------------------------

    async def open(self) -> None:
        out, _ = await self._run("start", None, self._plain("node", "list", "-r"))
        if not out.strip():
            raise Unavailable("start", None, "the cluster lists no nodes")
        out, _ = await self._run("start", None, self._plain("cluster", "info", "-r"))
        if b"Waiting for cluster to be formatted" in out:
            raise Unavailable("start", None, "the cluster is not formatted (dog cluster format)")

    # -- metadata ----------------------------------------------------------------------------

    async def list(self) -> dict[bytes, VdiInfo]:
        rows, partial = await self._list_rows("list", None)
        found = {v.name: v for v in self._infos("list", None, [r for r in rows if r.is_file])}
        if partial:
            raise PartialListing("list", found, partial)
        return found

    async def lookup(self, name: bytes) -> VdiInfo | None:
        """``dog vdi list -r NAME``: as dear as listing every VDI (docs/SHEEPDOG.md F6)."""
        check_name("lookup", name)
        try:
            rows, partial = await self._list_rows("lookup", name)
        except NotFound:
            return None
        for row in rows:  # the name's snapshots are listed too
            if row.name == name and row.is_file:
                return self._infos("lookup", name, [row])[0]
        if partial:  # the VDI may be one dog could not read
            raise Unavailable("lookup", name, partial)
        return None

    async def _list_rows(self, op: str, name: bytes | None) -> tuple[list[DogRow], str]:
        """The rows of ``dog vdi list -r`` (of every VDI, or of ``name``'s rows only), and
        why they are not all of them, or "". dog skips a VDI whose inode it cannot read
        (a node down or recovering), says so on stderr only, and exits 0 (docs/SHEEPDOG.md F21)."""
        names = () if name is None else (name,)
        out, err = await self._run(op, name, self._argv(("vdi", "list"), *names, opts=("-r",)))
        try:
            rows = parse_vdi_list(out)
        except ValueError as e:
            raise BackendError(op, name, f"cannot parse dog's VDI list: {e}") from None
        if b"Failed to read inode" not in err:
            return rows, ""
        said = "; ".join(err.decode(errors="replace").split("\n")[-3:]).strip("; ")
        return rows, f"dog could not read every VDI, so its list is partial: {said}"

    @staticmethod
    def _infos(op: str, name: bytes | None, rows: Sequence[DogRow]) -> list[VdiInfo]:
        """The rows as neutral infos; a copies field not ``N`` or ``D:P`` is a parse error."""
        try:
            return [to_vdi_info(r) for r in rows]
        except ValueError as e:
            raise BackendError(op, name, f"cannot parse dog's VDI list: {e}") from None

    async def create(self, name: bytes, size: int, layout: Layout | None = None) -> None:
        check_name("create", name)
        opts = [] if layout is None else _layout_opts(layout)
        argv = self._argv(("vdi", "create"), name, str(size), opts=opts)
        await self._run("create", name, argv)

    async def delete(self, name: bytes) -> None:
        """``dog vdi delete``, never on a hyper volume (docs/SHEEPDOG.md F14).

        dog's delete first zeroes the VDI's index as if it were flat; on a hyper volume that
        wipes the B-tree root and the sheep panic (``traverse_btree ... depth 0``), and after
        a restart every ``dog vdi list`` aborts. Only a client that sends DEL_VDI alone can
        delete one, so the VDI's size is checked first, with a list of that one name.
        """
        check_name("delete", name)
        rows, partial = await self._list_rows("delete", name)
        if partial and not any(r.name == name and r.is_file for r in rows):
            raise Unavailable("delete", name, partial)  # it may be a hyper volume
        if any(r.hyper for r in rows if r.name == name and r.is_file):
            raise NotPermitted(
                "delete",
                name,
                "it is a hyper volume, which dog vdi delete cannot delete without crashing "
                "the cluster (it zeroes the B-tree root); it is left as it is",
            )
        await self._delete_once(name)
        await self._check_deleted(name)

    async def _delete_once(self, name: bytes) -> None:
        _, err = await self._run("delete", name, self._argv(("vdi", "delete"), name))
        if err.strip():  # dog exits 0 even when nothing was deleted (docs/SHEEPDOG.md F3)
            raise error_for("delete", name, 0, err)

    async def _check_deleted(self, name: bytes) -> None:
        """A name still found by a lookup once ``vdi list`` no longer shows it is the VDI
        just deleted, whose emptied inode the sheep lost: it would be listed again at the
        next cluster start (docs/SHEEPDOG.md F23). dog's delete does the sheep's work again,
        so it is repeated; a VDI listed under the name is a new one, someone else's."""
        for tries in range(REDELETES + 1):
            if not await self._found_by_name(name):
                return
            if tries == REDELETES:
                break
            rows, partial = await self._list_rows("delete", name)
            if any(r.name == name and r.is_file for r in rows):
                return  # made again meanwhile, not by this delete's VDI
            if partial:
                break
            log.warning("delete %r: the sheep kept its inode's name: deleting it again", name)
            await self._delete_once(name)
        raise BackendError(
            "delete",
            name,
            "Sheepdog took the delete, but the VDI is still found by its name; it may come"
            " back when the cluster next starts",
        )

    async def _found_by_name(self, name: bytes) -> bool:
        """Whether a lookup by name finds a VDI (``vdi getattr`` of a key no one sets: a
        missing key says it does, a missing VDI that it does not)."""
        try:
            await self._run("delete", name, self._argv(("vdi", "getattr"), name, PROBE_KEY))
        except MissingAttribute:
            return True
        except NotFound:
            return False
        return True

    async def resize(self, name: bytes, size: int) -> None:
        check_name("resize", name)
        await self._run("resize", name, self._argv(("vdi", "resize"), name, str(size)))

    async def statfs(self) -> FsStats:
        """Space a user can fill: ``dog node info``'s raw sums divided by what each byte
        takes (the cluster's copies, or (d + p) / d when it erasure-codes)."""
        out, _ = await self._run("statfs", None, self._plain("node", "info", "-r"))
        try:
            raw = parse_node_info(out)
        except ValueError as e:
            raise BackendError("statfs", None, str(e)) from None
        if self._share is None:
            info, _ = await self._run("statfs", None, self._plain("cluster", "info", "-v", "-r"))
            self._share = parse_share(info)
        return FsStats(
            total=int(raw.total / self._share),
            used=int(raw.used / self._share),
            avail=int(raw.avail / self._share),
        )

    async def recovering(self) -> bool:
        """``dog node recovery -r`` prints a line per node in recovery, nothing otherwise."""
        out, _ = await self._run("recovery", None, self._plain("node", "recovery", "-r"))
        return bool(out.strip())

    async def snapshot(self, name: bytes, tag: str) -> None:
        check_name("snapshot", name)
        argv = self._argv(("vdi", "snapshot"), name, opts=("-s", tag))
        await self._run("snapshot", name, argv)

    async def clone(self, name: bytes, tag: str, new_name: bytes) -> None:
        check_name("clone", name)
        check_name("clone", new_name)
        argv = self._argv(("vdi", "clone"), name, new_name, opts=("-s", tag))
        await self._run("clone", new_name, argv)

    async def delete_snapshot(self, name: bytes, tag: str) -> None:
        check_name("delete snapshot", name)
        argv = self._argv(("vdi", "delete"), name, opts=("-s", tag))
        _, err = await self._run("delete snapshot", name, argv)
        if err.strip():
            raise error_for("delete snapshot", name, 0, err)

    async def snapshots(self, name: bytes) -> list[VdiInfo]:
        """The ``s`` rows of ``dog vdi list -r NAME`` (oldest first, as dog lists them)."""
        check_name("snapshots", name)
        try:
            rows, partial = await self._list_rows("snapshots", name)
        except NotFound:
            return []
        if partial:
            raise Unavailable("snapshots", name, partial)
        mine = [r for r in rows if r.name == name and r.kind == "s"]
        return sorted(self._infos("snapshots", name, mine), key=lambda i: i.snapshot_id)

    async def read_snapshot(self, name: bytes, snapshot_id: int, offset: int, length: int) -> bytes:
        """``dog vdi read -s ID``: an id, never a tag (a tag may look like an option)."""
        check_name("read", name)
        if length <= 0:
            return b""
        opts = ("-s", str(int(snapshot_id)))
        argv = self._argv(("vdi", "read"), name, str(offset), str(length), opts=opts)
        out, _ = await self._run("read", name, argv)
        return out

    # -- data --------------------------------------------------------------------------------

    async def read(self, name: bytes, offset: int, length: int) -> bytes:
        check_name("read", name)
        if length <= 0:
            return b""
        out, _ = await self._run(
            "read", name, self._argv(("vdi", "read"), name, str(offset), str(length))
        )
        return out

    @asynccontextmanager
    async def read_stream(
        self, name: bytes, offset: int, length: int, piece_size: int = 1 << 22
    ) -> AsyncIterator[AsyncIterator[bytes | bytearray]]:
        """One ``dog vdi read`` for the whole range, handed over in ``piece_size`` pieces
        (a reader that stops reading stops dog too)."""
        check_name("read", name)
        argv = self._argv(("vdi", "read"), name, str(offset), str(length))
        async with process.stream(name, argv, self.timeout, piece_size) as pieces:
            yield pieces

    async def write_parts(self, name: bytes, offset: int, parts: Sequence[Buffer]) -> None:
        """Write the concatenation of ``parts`` at ``offset`` with one dog call.

        The parts go to dog's stdin as they are (no joined copy); LEN is their exact total
        (docs/SHEEPDOG.md F1).
        """
        check_name("write", name)
        length = sum(len(p) for p in parts)
        if not length:
            return
        argv = self._argv(("vdi", "write"), name, str(offset), str(length))
        await process.feed(name, argv, parts, self.timeout)

    async def write_extents(self, name: bytes, fd: int, extents: Sequence[tuple[int, int]]) -> int:
        """One ``dog vdi write`` per extent, its stdin the file itself at that offset.

        Each call gets its own open of the file (its own position), so no byte passes
        through sheepfs and calls on one file do not move each other's offsets.
        """
        check_name("write", name)
        done = 0
        for offset, length in extents:
            if length <= 0:
                continue
            argv = self._argv(("vdi", "write"), name, str(offset), str(length))
            src = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.lseek(src, offset, os.SEEK_SET)
                await self._run("write", name, argv, stdin=src)
            finally:
                os.close(src)
            done += length
        return done
