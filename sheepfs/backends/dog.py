"""The Sheepdog backend: the ``dog`` CLI (``collie`` before Sheepdog 0.7).

Every call is an argv (never a shell) with names after ``--``, so no name is taken for an
option; every call has a timeout and is killed on expiry (dog blocks forever on a peer that
accepts and never answers); the exit code is checked before stdout is used (usage text goes
to stdout with exit 64); and ``vdi delete``, which always exits 0, is judged by its stderr.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import trio

from .. import buffers
from ..errors import (
    BackendError,
    Exists,
    InvalidArgument,
    NoSpace,
    NotFound,
    NotPermitted,
    Timeout,
    TooLarge,
    Unavailable,
)
from ..listing import parse_node_info, parse_vdi_list
from .base import Backend, FsStats, Layout, VdiInfo, check_name

log = logging.getLogger(__name__)

#: Linux F_SETPIPE_SZ: a 1 MiB pipe lets a streaming read move data in large pieces.
_F_SETPIPE_SZ = 1031

# stderr text -> exception, first match wins (docs/SHEEPDOG.md F17).
_ERRORS: Sequence[tuple[str, type[BackendError]]] = (
    ("No VDI found", NotFound),
    ("Failed to find requested tag", NotFound),
    ("VDI exists already", Exists),
    ("is existed", Exists),
    ("no space", NoSpace),
    ("snapshot of hypervolume is not supported", NotPermitted),
    ("Shrinking VDIs is not implemented", InvalidArgument),
    ("beyond the end of the VDI", InvalidArgument),
    ("larger than", TooLarge),
    ("too large", TooLarge),
    ("max size", TooLarge),
    ("failed to connect", Unavailable),
    ("Connection refused", Unavailable),
    ("I/O error", Unavailable),
    ("Failed to get node list", Unavailable),
    ("Waiting for cluster to be formatted", Unavailable),
    ("Invalid ip address", Unavailable),
    ("Invalid port number", Unavailable),
)


def find_cli(explicit: str | None = None) -> str:
    """The CLI to run: ``explicit`` if given, else ``dog`` on PATH, else ``collie``."""
    if explicit:
        path = explicit if os.sep in explicit else shutil.which(explicit)
        if path and os.path.isfile(path) and os.access(path, os.X_OK):
            return os.path.abspath(path)
        raise Unavailable("start", None, f"{explicit} is not an executable file")
    for candidate in ("dog", "collie"):
        path = shutil.which(candidate)
        if path:
            return path
    raise Unavailable("start", None, "neither dog nor collie found on PATH (see --dog)")


def error_for(op: str, name: bytes | None, rc: int, stderr: bytes) -> BackendError:
    """The exception for a failed dog call: the one place dog's failures are classified."""
    text = stderr.decode(errors="replace").strip()
    detail = "; ".join(line for line in text.splitlines() if line.strip())
    if not detail:
        detail = f"dog exited with status {rc} and said nothing"
    lowered = text.lower()
    for needle, cls in _ERRORS:
        if needle.lower() in lowered:
            return cls(op, name, detail)
    return BackendError(op, name, detail)


#: Pieces a streaming read may hold that the consumer has not taken yet.
_PIECES_AHEAD = 4


class _Pump:
    """A thread that reads a stream's pipe into piece-sized buffers for the event loop.

    It keeps reading while the event loop is busy (up to ``_PIECES_AHEAD`` pieces not yet
    taken), so dog never waits for the loop; past that it stops, and so does dog.
    """

    def __init__(self, fd: int, piece_size: int, token: trio.lowlevel.TrioToken) -> None:
        self.fd = fd
        self.piece_size = piece_size
        self.token = token
        self.send, self.receive = trio.open_memory_channel[bytes | bytearray](_PIECES_AHEAD)
        self.slots = threading.Semaphore(_PIECES_AHEAD)
        self.stopped = False
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        try:
            while True:
                self.slots.acquire()
                if self.stopped:
                    break
                buf = buffers.take(self.piece_size)  # filled below: never zeroed first
                with memoryview(buf) as view:
                    have = 0
                    while have < self.piece_size:
                        n = os.readv(self.fd, [view[have:]])
                        if n == 0:
                            break
                        have += n
                if have:
                    piece = buf if have == self.piece_size else buf[:have]
                    self.token.run_sync_soon(self._deliver, piece)
                if have < self.piece_size:
                    break
        except (trio.RunFinishedError, OSError):
            pass  # the event loop is gone (or dog is): nothing more to hand over
        finally:
            os.close(self.fd)
            try:
                self.token.run_sync_soon(self.send.close)
            except trio.RunFinishedError:
                pass

    def _deliver(self, piece: bytes | bytearray) -> None:
        try:
            self.send.send_nowait(piece)  # never full: the slots bound what is in flight
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass

    async def next(self) -> bytes | bytearray:
        """The next piece; raises trio.EndOfChannel at the end of the data."""
        piece = await self.receive.receive()
        self.slots.release()
        return piece

    def stop(self) -> None:
        self.stopped = True
        self.receive.close()
        self.slots.release()  # a thread waiting for a slot sees ``stopped``


async def _close_pipes(proc: trio.Process) -> None:
    for pipe in (proc.stdin, proc.stdout, proc.stderr):
        if pipe is not None:
            await pipe.aclose()


async def _kill(process: trio.Process) -> None:
    process.kill()


class DogBackend(Backend):
    def __init__(
        self, dog: str, address: str = "127.0.0.1", port: int = 7000, timeout: float = 60.0
    ) -> None:
        self.dog = dog
        self.address = address
        self.port = port
        self.timeout = timeout
        self.calls = 0

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
        self.calls += 1
        start = time.monotonic()
        try:
            with trio.move_on_after(self.timeout) as scope:
                proc = await trio.run_process(
                    argv,
                    stdin=stdin,
                    capture_stdout=True,
                    capture_stderr=True,
                    check=False,
                    deliver_cancel=_kill,
                )
        except OSError as e:
            raise Unavailable(op, name, f"cannot run {self.dog}: {e.strerror or e}") from None
        elapsed = time.monotonic() - start
        if scope.cancelled_caught:
            log.debug("dog %s timed out after %.1fs and was killed", argv[1:3], elapsed)
            raise Timeout(op, name, f"dog did not answer within {self.timeout:g} s and was killed")
        log.debug("dog %r rc=%d %.1f ms", argv[1:], proc.returncode, elapsed * 1000)
        if proc.returncode != 0:
            raise error_for(op, name, proc.returncode, proc.stderr)
        return proc.stdout, proc.stderr

    # -- Backend -----------------------------------------------------------------------------

    async def check(self) -> None:
        out, _ = await self._run("start", None, self._plain("node", "list", "-r"))
        if not out.strip():
            raise Unavailable("start", None, "the cluster lists no nodes")
        out, _ = await self._run("start", None, self._plain("cluster", "info", "-r"))
        if b"Waiting for cluster to be formatted" in out:
            raise Unavailable("start", None, "the cluster is not formatted (dog cluster format)")

    async def list(self) -> dict[bytes, VdiInfo]:
        rows = await self._list_rows("list", None)
        return {v.name: v for v in rows if v.is_file}

    async def _list_rows(self, op: str, name: bytes | None) -> list[VdiInfo]:
        """The rows of ``dog vdi list -r`` (of every VDI, or of ``name``'s rows only)."""
        names = () if name is None else (name,)
        out, _ = await self._run(op, name, self._argv(("vdi", "list"), *names, opts=("-r",)))
        try:
            return parse_vdi_list(out)
        except ValueError as e:
            raise BackendError(op, name, f"cannot parse dog's VDI list: {e}") from None

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
        """One ``dog vdi read`` for the whole range, handed over in ``piece_size`` pieces.

        A thread reads dog's stdout straight into each piece's buffer (one copy, outside
        the event loop's thread), and at most ``_PIECES_AHEAD`` pieces wait in between, so
        a reader that stops reading stops dog too.
        """
        check_name("read", name)
        self.calls += 1
        argv = self._argv(("vdi", "read"), name, str(offset), str(length))
        read_end, write_end = os.pipe()
        try:
            fcntl.fcntl(write_end, _F_SETPIPE_SZ, 1 << 20)
        except OSError:
            pass
        try:
            proc = await trio.lowlevel.open_process(
                argv, stdin=subprocess.DEVNULL, stdout=write_end, stderr=subprocess.PIPE
            )
        except OSError as e:
            os.close(read_end)
            raise Unavailable("read", name, f"cannot run {self.dog}: {e.strerror or e}") from None
        finally:
            os.close(write_end)
        log.debug("dog %r streaming", argv[1:])
        pump = _Pump(read_end, piece_size, trio.lowlevel.current_trio_token())
        errors = bytearray()

        async def drain_stderr() -> None:
            while chunk := await proc.stderr.receive_some():
                errors.extend(chunk)

        async def pieces() -> AsyncIterator[bytes | bytearray]:
            while True:
                with trio.move_on_after(self.timeout) as scope:
                    try:
                        piece = await pump.next()
                    except trio.EndOfChannel:
                        break
                if scope.cancelled_caught:
                    raise Timeout("read", name, f"dog sent nothing for {self.timeout:g} s")
                yield piece
            with trio.move_on_after(self.timeout):
                await proc.wait()
            if proc.returncode is None:
                raise Timeout("read", name, "dog did not exit after sending its data")
            if proc.returncode != 0:
                raise error_for("read", name, proc.returncode, bytes(errors))

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(drain_stderr)
                yield pieces()
                nursery.cancel_scope.cancel()
        finally:
            pump.stop()  # a pump waiting for a slot gives up
            if proc.returncode is None:
                proc.kill()  # a pump blocked in read() gets end-of-file
                with trio.CancelScope(shield=True):
                    await proc.wait()
            await _close_pipes(proc)

    async def write(self, name: bytes, offset: int, data: bytes | memoryview) -> None:
        await self.write_parts(name, offset, [data])

    async def write_parts(
        self, name: bytes, offset: int, parts: Sequence[bytes | bytearray | memoryview]
    ) -> None:
        """Write the concatenation of ``parts`` at ``offset`` with one dog call.

        The parts go to dog's stdin as they are (no joined copy); LEN is their exact total.
        """
        check_name("write", name)
        length = sum(len(p) for p in parts)
        if not length:
            return
        self.calls += 1
        argv = self._argv(("vdi", "write"), name, str(offset), str(length))
        start = time.monotonic()
        try:
            proc = await trio.lowlevel.open_process(
                argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
            )
        except OSError as e:
            raise Unavailable("write", name, f"cannot run {self.dog}: {e.strerror or e}") from None
        try:  # 1 MiB at a time into dog, not 64 KiB: fewer turns of the event loop
            fcntl.fcntl(proc.stdin.fileno(), _F_SETPIPE_SZ, 1 << 20)
        except OSError:
            pass
        errors = bytearray()
        progress = trio.CancelScope(deadline=trio.current_time() + self.timeout)

        async def feed() -> None:
            try:
                for part in parts:
                    view = memoryview(part)
                    for at in range(0, len(view), 1 << 20):
                        await proc.stdin.send_all(view[at : at + (1 << 20)])
                        progress.deadline = trio.current_time() + self.timeout
            except trio.BrokenResourceError:
                pass  # dog stopped reading: its exit status says why
            finally:
                await proc.stdin.aclose()

        async def drain(stream, into: bytearray | None) -> None:
            while chunk := await stream.receive_some():
                if into is not None:
                    into.extend(chunk)

        try:
            with progress:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(feed)
                    nursery.start_soon(drain, proc.stdout, None)
                    nursery.start_soon(drain, proc.stderr, errors)
                    await proc.wait()
        finally:
            if proc.returncode is None:
                proc.kill()
                with trio.CancelScope(shield=True):
                    await proc.wait()
            await _close_pipes(proc)
        if progress.cancelled_caught:
            raise Timeout("write", name, f"dog did not move data for {self.timeout:g} s; killed")
        log.debug(
            "dog %r rc=%d %.1f ms", argv[1:], proc.returncode, (time.monotonic() - start) * 1e3
        )
        if proc.returncode != 0:
            raise error_for("write", name, proc.returncode, bytes(errors))

    async def write_from_file(
        self, name: bytes, offset: int, length: int, path: str, file_offset: int
    ) -> None:
        check_name("write", name)
        if length <= 0:
            return
        argv = self._argv(("vdi", "write"), name, str(offset), str(length))
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.lseek(fd, file_offset, os.SEEK_SET)
            await self._run("write", name, argv, stdin=fd)
        finally:
            os.close(fd)

    async def create(self, name: bytes, size: int, layout: Layout | None = None) -> None:
        check_name("create", name)
        opts: list[str] = []
        if layout is not None:
            opts += ["-z", str(layout.block_size_shift)]
            if layout.copies:
                opts += ["-c", layout.copies]
        argv = self._argv(("vdi", "create"), name, str(size), opts=opts)
        await self._run("create", name, argv)

    async def delete(self, name: bytes) -> None:
        """``dog vdi delete``, never on a hyper volume (SHEEPDOG.md F14).

        dog's delete first zeroes the VDI's index as if it were flat; on a hyper volume that
        wipes the B-tree root and the sheep panic (``traverse_btree ... depth 0``), and after
        a restart every ``dog vdi list`` aborts. Only a client that sends DEL_VDI alone can
        delete one, so the VDI's size is checked first, with a list of that one name.
        """
        check_name("delete", name)
        rows = await self._list_rows("delete", name)
        if any(r.hyper for r in rows if r.name == name and r.is_file):
            raise NotPermitted(
                "delete",
                name,
                "it is a hyper volume, which dog vdi delete cannot delete without crashing "
                "the cluster (it zeroes the B-tree root); it is left as it is",
            )
        _, err = await self._run("delete", name, self._argv(("vdi", "delete"), name))
        if err.strip():  # dog exits 0 even when nothing was deleted (SHEEPDOG.md F3)
            raise error_for("delete", name, 0, err)

    async def resize(self, name: bytes, size: int) -> None:
        check_name("resize", name)
        await self._run("resize", name, self._argv(("vdi", "resize"), name, str(size)))

    async def statfs(self) -> FsStats:
        out, _ = await self._run("statfs", None, self._plain("node", "info", "-r"))
        try:
            return parse_node_info(out)
        except ValueError as e:
            raise BackendError("statfs", None, str(e)) from None

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
