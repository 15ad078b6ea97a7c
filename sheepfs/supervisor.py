"""The supervisor: one nursery for every background task of a mount, and its shutdown.

Read-ahead streams, write-behind of cached chunks, uploads behind a writer, periodic
write-back and spool recovery all run here, never in a nursery of their own that outlives
its caller. Tasks start only while the supervisor accepts them; shutdown goes in order
(see :meth:`sheepfs.core.filesystem.Filesystem.running`): stop accepting, write every
pending byte, cancel what is left (read-ahead, timers), then the backend closes.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import trio

log = logging.getLogger(__name__)


class Supervisor:
    """Starts background tasks into the nursery it owns while :meth:`running`."""

    def __init__(self) -> None:
        self._nursery: trio.Nursery | None = None

    @property
    def accepting(self) -> bool:
        return self._nursery is not None

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Supervisor]:
        """Own the nursery; on leaving, stop accepting and cancel the tasks still running."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            try:
                yield self
            finally:
                self._nursery = None
                nursery.cancel_scope.cancel()

    def stop_accepting(self) -> None:
        """From now on :meth:`start` refuses: shutdown has begun."""
        self._nursery = None

    def start(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> bool:
        """Run ``fn(*args)`` in the background; False (nothing started) once shut down."""
        if self._nursery is None:
            return False
        self._nursery.start_soon(fn, *args)
        return True
