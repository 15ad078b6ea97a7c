"""Running dog: one process per call, each with a timeout after which it is killed.

dog blocks forever on a peer that accepts and never answers (docs/SHEEPDOG.md F9), so no call
waits without a deadline; the exit code is checked before stdout is used (usage text goes to
stdout with exit 64, F4). Three shapes of call: :func:`run` (all output at once),
:func:`stream` (a long read handed over in pieces) and :func:`feed` (data into stdin).
"""

from __future__ import annotations

import fcntl
import logging
import os
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import trio

from ... import buffers
from ...errors import Timeout, Unavailable
from ..base import Buffer
from ..nurseries import helpers
from .errors import error_for

log = logging.getLogger(__name__)

#: Linux F_SETPIPE_SZ: a 1 MiB pipe lets a streaming read move data in large pieces.
_F_SETPIPE_SZ = 1031
#: Pieces a streaming read may hold that the consumer has not taken yet.
_PIECES_AHEAD = 4
#: What one send into dog's stdin carries.
_FEED_STEP = 1 << 20


def _cannot_run(op: str, name: bytes | None, argv: list, e: OSError) -> Unavailable:
    return Unavailable(op, name, f"cannot run {argv[0]}: {e.strerror or e}")


async def _kill(process: trio.Process) -> None:
    process.kill()


async def _close_pipes(proc: trio.Process) -> None:
    for pipe in (proc.stdin, proc.stdout, proc.stderr):
        if pipe is not None:
            await pipe.aclose()


async def _reap(proc: trio.Process) -> None:
    """Kill dog if it still runs, wait for it (even when cancelled), close its pipes."""
    if proc.returncode is None:
        proc.kill()
        with trio.CancelScope(shield=True):
            await proc.wait()
    await _close_pipes(proc)


async def _drain(stream: trio.abc.ReceiveStream, into: bytearray | None) -> None:
    """Read ``stream`` to its end, keeping what it says in ``into`` (if given)."""
    while chunk := await stream.receive_some():
        if into is not None:
            into.extend(chunk)


def _grow_pipe(fd: int) -> None:
    try:
        fcntl.fcntl(fd, _F_SETPIPE_SZ, 1 << 20)
    except OSError:
        pass


async def run(
    op: str, name: bytes | None, argv: list, timeout: float, stdin: bytes | int = b""
) -> tuple[bytes, bytes]:
    """Run dog; return (stdout, stderr) if it exited 0, else raise the mapped error."""
    start = time.monotonic()
    try:
        with trio.move_on_after(timeout) as scope:
            proc = await trio.run_process(
                argv,
                stdin=stdin,
                capture_stdout=True,
                capture_stderr=True,
                check=False,
                deliver_cancel=_kill,
            )
    except OSError as e:
        raise _cannot_run(op, name, argv, e) from None
    elapsed = time.monotonic() - start
    if scope.cancelled_caught:
        log.debug("dog %s timed out after %.1fs and was killed", argv[1:3], elapsed)
        raise Timeout(op, name, f"dog did not answer within {timeout:g} s and was killed")
    log.debug("dog %r rc=%d %.1f ms", argv[1:], proc.returncode, elapsed * 1000)
    if proc.returncode != 0:
        raise error_for(op, name, proc.returncode, proc.stderr)
    return proc.stdout, proc.stderr


# -- streaming reads ---------------------------------------------------------------------------


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
                have = self._fill(buf)
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

    def _fill(self, buf: bytearray) -> int:
        """Read into ``buf`` until it is full or the pipe ends; the bytes read."""
        with memoryview(buf) as view:
            have = 0
            while have < self.piece_size:
                n = os.readv(self.fd, [view[have:]])
                if n == 0:
                    break
                have += n
        return have

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


async def _spawn_reader(name: bytes, argv: list) -> tuple[trio.Process, int]:
    """Start dog with its stdout on a (large) pipe; the process and the pipe's read end."""
    read_end, write_end = os.pipe()
    _grow_pipe(write_end)
    try:
        proc = await trio.lowlevel.open_process(
            argv, stdin=subprocess.DEVNULL, stdout=write_end, stderr=subprocess.PIPE
        )
    except OSError as e:
        os.close(read_end)
        raise _cannot_run("read", name, argv, e) from None
    finally:
        os.close(write_end)
    return proc, read_end


async def _pieces(
    pump: _Pump, proc: trio.Process, errors: bytearray, name: bytes, timeout: float
) -> AsyncIterator[bytes | bytearray]:
    """The pump's pieces until dog's stdout ends, then dog's verdict on the whole read."""
    while True:
        with trio.move_on_after(timeout) as scope:
            try:
                piece = await pump.next()
            except trio.EndOfChannel:
                break
        if scope.cancelled_caught:
            raise Timeout("read", name, f"dog sent nothing for {timeout:g} s")
        yield piece
    with trio.move_on_after(timeout):
        await proc.wait()
    if proc.returncode is None:
        raise Timeout("read", name, "dog did not exit after sending its data")
    if proc.returncode != 0:
        raise error_for("read", name, proc.returncode, bytes(errors))


@asynccontextmanager
async def stream(
    name: bytes, argv: list, timeout: float, piece_size: int
) -> AsyncIterator[AsyncIterator[bytes | bytearray]]:
    """One ``dog vdi read`` for the whole range, handed over in ``piece_size`` pieces.

    A thread reads dog's stdout straight into each piece's buffer (one copy, outside
    the event loop's thread), and at most ``_PIECES_AHEAD`` pieces wait in between, so
    a reader that stops reading stops dog too.
    """
    proc, read_end = await _spawn_reader(name, argv)
    log.debug("dog %r streaming", argv[1:])
    pump = _Pump(read_end, piece_size, trio.lowlevel.current_trio_token())
    errors = bytearray()
    try:
        async with helpers() as nursery:
            nursery.start_soon(_drain, proc.stderr, errors)
            yield _pieces(pump, proc, errors, name, timeout)
    finally:
        pump.stop()  # a pump waiting for a slot gives up
        await _reap(proc)  # a pump blocked in read() gets end-of-file


# -- writes through stdin ----------------------------------------------------------------------


async def _spawn_writer(name: bytes, argv: list) -> trio.Process:
    try:
        proc = await trio.lowlevel.open_process(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
    except OSError as e:
        raise _cannot_run("write", name, argv, e) from None
    # 1 MiB at a time into dog, not 64 KiB: fewer turns of the event loop
    _grow_pipe(proc.stdin.fileno())
    return proc


async def _feed_stdin(
    proc: trio.Process, parts: Sequence[Buffer], progress: trio.CancelScope, timeout: float
) -> None:
    """Send ``parts`` as they are (no joined copy); each step moves the deadline on."""
    try:
        for part in parts:
            view = memoryview(part)
            for at in range(0, len(view), _FEED_STEP):
                await proc.stdin.send_all(view[at : at + _FEED_STEP])
                progress.deadline = trio.current_time() + timeout
    except trio.BrokenResourceError:
        pass  # dog stopped reading: its exit status says why
    finally:
        await proc.stdin.aclose()


async def feed(name: bytes, argv: list, parts: Sequence[Buffer], timeout: float) -> None:
    """Run a ``dog vdi write`` with the concatenation of ``parts`` as its stdin.

    The timeout is on progress, not on the whole call: a long write is killed only when dog
    has not moved data for ``timeout`` seconds.
    """
    start = time.monotonic()
    proc = await _spawn_writer(name, argv)
    errors = bytearray()
    progress = trio.CancelScope(deadline=trio.current_time() + timeout)
    try:
        with progress:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_feed_stdin, proc, parts, progress, timeout)
                nursery.start_soon(_drain, proc.stdout, None)
                nursery.start_soon(_drain, proc.stderr, errors)
                await proc.wait()
    finally:
        await _reap(proc)
    if progress.cancelled_caught:
        raise Timeout("write", name, f"dog did not move data for {timeout:g} s; killed")
    log.debug("dog %r rc=%d %.1f ms", argv[1:], proc.returncode, (time.monotonic() - start) * 1e3)
    if proc.returncode != 0:
        raise error_for("write", name, proc.returncode, bytes(errors))
