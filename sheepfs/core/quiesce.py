"""Deletes wait while the cluster recovers.

Sheepdog 1.0 frees an object shared by snapshots and clones by reference counts that each
replica of a per-object ledger keeps for itself, and those updates race with recovery,
which copies whole ledgers between nodes: a delete made while a node recovers has removed
objects a live clone still read (docs/SHEEPDOG.md F25). Every rename leaves such a clone,
so every delete (a file, a rename's source, a snapshot set aside) first waits, up to a
limit (the core's call deadline, else 60 s), for the recovery to end. Past the limit it
goes on, and says so: holding deletes for ever would hold the user's ``rm`` or ``mv``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from ..errors import BackendError

log = logging.getLogger(__name__)

#: Seconds between two looks at the recovery.
POLL = 1.0


@dataclass
class RecoveryGate:
    """Where deletes wait for a recovery to end. A recovery can also never end (a sheep
    retrying for ever an object it cannot recover): once a wait has run out, deletes go on
    at once, each after one look, until a look finds no recovery under way."""

    recovering: Callable[[], Awaitable[bool]]
    limit: float
    #: The last wait ran out and no look since found the cluster settled.
    gave_up: bool = False

    async def wait(self, op: str, name: bytes) -> None:
        """Return once no recovery is under way, the backend cannot tell, or the wait has
        lasted ``limit`` seconds (at once while ``gave_up``)."""
        deadline = trio.current_time() + (0 if self.gave_up else self.limit)
        waited = False
        while True:
            try:
                busy = await self.recovering()
            except BackendError as e:
                log.debug("%s %r: could not ask whether the cluster recovers (%s)", op, name, e)
                return
            if not busy:
                self.gave_up = False
                if waited:
                    log.info("%s %r: the cluster's recovery has ended, going on", op, name)
                return
            if trio.current_time() >= deadline:
                self._give_up(op, name)
                return
            if not waited:
                log.info("%s %r waits for the cluster's recovery to end", op, name)
                waited = True
            await trio.sleep(POLL)

    def _give_up(self, op: str, name: bytes) -> None:
        if not self.gave_up:
            log.warning(
                "%s %r: the cluster still recovers after %g s; deletes go on until it has "
                "settled (Sheepdog may then drop objects a clone shares, SHEEPDOG.md F25)",
                op, name, self.limit,
            )  # fmt: skip
        self.gave_up = True
