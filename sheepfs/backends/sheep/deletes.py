"""Deletes Sheepdog answered whose emptied inode could not be checked (docs/SHEEPDOG.md
F23): kept, and checked again until they can be, so that a VDI deleted while nodes went
down does not come back at the next cluster start (found by scripts/soak: a replace's
delete checked in vain under a node kill, the old VDI back after a restart)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from ...errors import BackendError
from .client import SheepClient
from .inode import finish_delete

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Unchecked:
    name: bytes
    vid: int
    create_time: int


@dataclass
class Deletes:
    _unchecked: dict[int, Unchecked] = field(default_factory=dict)  # by vid

    async def finish(self, client: SheepClient, name: bytes, vid: int, create_time: int) -> None:
        """:func:`finish_delete`; one that fails is kept, to be checked again."""
        try:
            await finish_delete(client, name, vid, create_time)
        except BackendError:
            self._unchecked[vid] = Unchecked(name, vid, create_time)
            raise

    async def recheck(self, client: SheepClient, name: bytes | None = None) -> None:
        """Check again the deletes not checked yet (of ``name``, or all). Quietly: one that
        fails again waits for the next time."""
        for u in [u for u in self._unchecked.values() if name in (None, u.name)]:
            try:
                await finish_delete(client, u.name, u.vid, u.create_time)
            except BackendError as e:
                log.debug("delete %r: vid %#x still not checked: %s", u.name, u.vid, e)
                continue
            self._unchecked.pop(u.vid, None)
            log.info("delete %r: its emptied inode (vid %#x) is checked now", u.name, u.vid)

    def __len__(self) -> int:
        return len(self._unchecked)
