"""What the service manager and the log hear of a mount's life: READY=1 once the mount
answers, and while pending data is written at the end, what is left, every few seconds.

The mount answers only when the event loop serves FUSE requests, so the check is a stat
of the mount's root from a worker thread (from the loop's own thread it would wait for
itself). Progress at shutdown runs as a task of the supervisor, whose nursery lives until
every pending byte has been written (see :meth:`sheepfs.core.filesystem.Filesystem.running`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from .notify import Notifier
from .status import StatusSource, progress_line
from .supervisor import Supervisor

log = logging.getLogger("sheepfs")

#: Seconds between progress lines while pending data is written at shutdown.
PROGRESS_EVERY = 3.0


@dataclass
class Service:
    """One mount's messages to systemd (``notifier``) and its shutdown progress."""

    notifier: Notifier = field(default_factory=lambda: Notifier(None))
    status: StatusSource | None = None
    interval: float = PROGRESS_EVERY
    saving: bool = False  # shutdown has begun

    async def announce_ready(
        self, mountpoint: str, probe: Callable[[str], object] = os.stat
    ) -> None:
        """READY=1 once ``probe(mountpoint)`` (a stat of the root) has been answered."""
        if self.status is not None:
            self.status.bind()
        if not self.notifier.enabled:
            return
        try:
            await trio.to_thread.run_sync(probe, mountpoint, abandon_on_cancel=True)
        except OSError as e:
            log.error("%s does not answer (%s): not reporting it ready", mountpoint, e)
            return
        source = self.status.where.source if self.status is not None else "sheepfs"
        self.notifier.ready(f"serving {source} on {mountpoint}")

    def begin_saving(self, tasks: Supervisor) -> None:
        """Shutdown has begun: STOPPING=1, then progress until every pending byte is written
        (the task ends with the supervisor's nursery)."""
        if self.saving:
            return
        self.saving = True
        self.notifier.stopping("stopping: writing pending data")
        if self.status is not None:
            self.status.stopping = True
            tasks.start(self._report)

    async def _report(self) -> None:
        assert self.status is not None
        while True:
            try:
                line = progress_line(self.status.snapshot())
            except Exception:  # a bug costs the progress lines, never the data
                log.exception("shutdown progress failed")
                return
            if line is not None:
                log.info("writing pending data: %s", line)
                self.notifier.status(f"stopping: writing {line}")
            await trio.sleep(self.interval)

    def stopped(self, saved: bool) -> None:
        self.notifier.status(
            "stopped: all data saved" if saved else "stopped: SOME DATA COULD NOT BE SAVED"
        )
        self.notifier.close()
