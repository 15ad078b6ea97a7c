"""Mounting and serving: pyfuse3's session around the core, signals, and daemonizing.

The order of a mount's life: the backend is opened (the cluster checked) before the
kernel sees the mount, so a cluster that cannot be reached fails the mount with a clear
line; the mount is served until it is unmounted or signalled; then the core shuts down
in order (see :meth:`sheepfs.core.filesystem.Filesystem.running`) and the session closes.
"""

from __future__ import annotations

import errno
import logging
import logging.handlers
import os
import signal
import subprocess
from dataclasses import dataclass, field

import pyfuse3
import trio

from ..core.filesystem import Filesystem
from ..errors import BackendError
from ..service import Service
from .adapter import SheepFS
from .pagecache import raise_read_ahead

log = logging.getLogger("sheepfs")

#: pyfuse3 workers kept waiting for requests. With its default of one, every request that
#: arrives while another runs starts a task that ends when it is done: for concurrent
#: small reads that churn costs as much as the read.
WORKERS = 8


@dataclass
class MountConfig:
    mountpoint: str
    fsname: str
    read_only: bool = False
    allow_other: bool = False
    foreground: bool = False


@dataclass
class Daemon:
    """One mount: the core, its adapter, and the session between them and the kernel."""

    core: Filesystem
    ops: SheepFS
    config: MountConfig
    notify: int | None = None  # the pipe to a waiting parent (see daemonize)
    mounted: bool = False
    #: What systemd and the log hear: READY=1, progress while pending data is written.
    service: Service = field(default_factory=Service)

    def _mount(self) -> bool:
        options = set(pyfuse3.default_options)
        options |= {f"fsname={self.config.fsname}", "subtype=sheepfs"}
        if self.config.read_only:
            options.add("ro")
        if self.config.allow_other:
            options |= {"allow_other", "default_permissions"}  # the kernel checks modes
        try:
            pyfuse3.init(self.ops, self.config.mountpoint, options)
        except RuntimeError as e:
            log.error("cannot mount on %s: %s", self.config.mountpoint, e)
            return False
        self.mounted = True
        mountpoint = self.config.mountpoint
        self.ops.after_init = lambda: raise_read_ahead(mountpoint)
        log.info("mounted %s on %s", self.config.fsname, mountpoint)
        return True

    async def serve(self) -> bool:
        """Run until unmounted or signalled; True if every byte reached Sheepdog."""
        try:
            async with self.core.running():
                if not self._mount():
                    self._tell(1)
                    return False
                self._tell(0)
                self.core.start_recovery()
                self.core.warm_up()
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._on_signals)
                    nursery.start_soon(self.service.announce_ready, self.config.mountpoint)
                    await pyfuse3.main(min_tasks=WORKERS)
                    self.service.begin_saving(self.core.tasks)  # written as the core stops
                    nursery.cancel_scope.cancel()
        except BackendError as e:
            if self.mounted:
                raise
            log.error("cannot mount: %s", e)
            self._tell(1)
            return False
        self.service.stopped(self.core.saved)
        return self.core.saved

    def _tell(self, status: int) -> None:
        tell_parent(self.notify, status)
        self.notify = None

    async def _on_signals(self) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                log.info("%s: saving pending data, then unmounting", signal.Signals(signum).name)
                self.service.begin_saving(self.core.tasks)
                await self.core.sync_all()
                pyfuse3.terminate()
                return


def serve(daemon: Daemon) -> bool:
    """Serve ``daemon`` to the end and close its session; whether all data was saved."""
    try:
        return trio.run(daemon.serve)
    finally:
        if daemon.mounted:
            pyfuse3.close(unmount=True)


def clear_dead_mount(mountpoint: str) -> None:
    """A crashed daemon leaves "Transport endpoint is not connected": lazily unmount it."""
    try:
        os.stat(mountpoint)
    except OSError as e:
        if e.errno == errno.ENOTCONN:
            log.warning("%s: clearing the dead mount a crashed sheepfs left", mountpoint)
            subprocess.run(["fusermount3", "-uz", mountpoint], check=False)


def daemonize() -> int:
    """Fork into the background; the parent exits once the child reports the mount."""
    read_end, write_end = os.pipe()
    if os.fork() > 0:
        os.close(write_end)
        status = os.read(read_end, 1)
        os._exit(status[0] if status else 1)
    os.close(read_end)
    os.setsid()
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1):
        os.dup2(devnull, fd)
    return write_end


def tell_parent(fd: int | None, status: int) -> None:
    """Report the mount's outcome to the waiting parent, then let go of the terminal."""
    if fd is None:
        return
    os.write(fd, bytes([status]))
    os.close(fd)
    root = logging.getLogger()
    if not any(isinstance(h, logging.FileHandler) for h in root.handlers):
        # Detached: stderr goes nowhere, so log to syslog where there is one.
        if os.path.exists("/dev/log"):
            handler = logging.handlers.SysLogHandler(address="/dev/log")
            handler.setFormatter(logging.Formatter("sheepfs[%(process)d]: %(message)s"))
            root.handlers[:] = [handler]
        else:
            root.handlers[:] = [logging.NullHandler()]
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 2)  # let go of the terminal (and of a caller waiting for our output)
    os.close(devnull)
