"""The cached VDI listing that serves readdir, lookup and getattr.

``dog vdi list -r`` costs O(all VDIs) (about 330 ms at 1000 VDIs), so one listing is kept and
refreshed at most once per TTL. Our own create/delete/resize update it at once; a refresh that
was already running when such a change happened re-applies the change, so it cannot undo it.
A backend whose ``lookup`` of one name is cheap (``hints.cheap_lookup``) answers a name
directly instead of a stale listing being refreshed for it. Watchers (:meth:`Catalog.watch`)
see each listing as the backend gave it, never our own records: a creation time we guessed
and recorded must not pass for one Sheepdog reported.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import trio

from ..backends.base import Backend, VdiInfo
from ..errors import PartialListing, Unavailable

log = logging.getLogger(__name__)


@dataclass
class Catalog:
    backend: Backend
    ttl: float = 1.0
    _vdis: dict[bytes, VdiInfo] = field(default_factory=dict)
    _fetched_at: float = float("-inf")
    _lock: trio.Lock = field(default_factory=trio.Lock)
    _changes: dict[bytes, tuple[float, VdiInfo | None]] = field(default_factory=dict)
    #: Names spool recovery has yet to decide about (core/recovery.py): asked for, they wait.
    _held: dict[bytes, trio.Event] = field(default_factory=dict)
    #: Names whose old data waits to be put back after a rename over them failed: EIO.
    restoring: set[bytes] = field(default_factory=set)
    #: Set while the listing in use could not read every VDI.
    _partial: PartialListing | None = None
    _watchers: list[Callable[[Iterable[VdiInfo]], None]] = field(default_factory=list)

    def watch(self, watcher: Callable[[Iterable[VdiInfo]], None]) -> None:
        """Call ``watcher`` with every listing read from the backend, less the names we
        changed while it was read (what it shows of them may be older than our change)."""
        self._watchers.append(watcher)

    def hold(self, names: set[bytes]) -> None:
        for name in names:
            self._held.setdefault(name, trio.Event())

    def let_go(self, names: set[bytes]) -> None:
        for name in names:
            if (held := self._held.pop(name, None)) is not None:
                held.set()

    async def settled(self, name: bytes) -> None:
        """Return once spool recovery is done with ``name`` (at once if it never held it);
        Unavailable while its old data waits to be put back (it is neither there nor gone)."""
        if (held := self._held.get(name)) is not None:
            await held.wait()
        if name in self.restoring:
            why = "a replace or rename of it failed; its old data is not back yet (retrying)"
            raise Unavailable("lookup", name, why)

    def _fresh(self) -> bool:
        return trio.current_time() - self._fetched_at < self.ttl

    async def all(self) -> dict[bytes, VdiInfo]:
        """Every file VDI by name, at most ``ttl`` seconds old."""
        if not self._fresh():
            async with self._lock:
                if not self._fresh():
                    await self._refresh()
        return self._vdis

    async def get(self, name: bytes, held: bool = False) -> VdiInfo | None:
        """The VDI ``name``, or None; ``held``: asked by the recovery that holds it."""
        if not held:
            await self.settled(name)
        if self._fresh() or not self.backend.hints.cheap_lookup:
            info = (await self.all()).get(name)
            if info is not None or self._partial is None or name in self._changes:
                return info
            if not self.backend.hints.cheap_lookup:
                why = f"the listing could not read every VDI ({self._partial.detail})"
                raise Unavailable("lookup", name, why)
        return await self._lookup(name)

    async def _lookup(self, name: bytes) -> VdiInfo | None:
        started = trio.current_time()
        info = await self.backend.lookup(name)
        change = self._changes.get(name)
        if change is not None and change[0] >= started:  # ours, made while it was asked
            info = change[1]
        return info

    async def _refresh(self) -> None:
        started = trio.current_time()
        try:
            vdis = dict(await self.backend.list())
            self._partial = None
        except PartialListing as e:  # served as far as it goes; a name it lacks is EIO
            level = logging.DEBUG if self._partial else logging.WARNING  # once, not per TTL
            log.log(level, "%s; names it does not show answer EIO until one is whole", e)
            vdis, self._partial = dict(e.found), e
        newer = {name for name, (when, _) in self._changes.items() if when >= started}
        for watcher in self._watchers:
            watcher([info for name, info in vdis.items() if name not in newer])
        for name, (when, info) in list(self._changes.items()):
            if when >= started:
                if info is None:
                    vdis.pop(name, None)
                else:
                    vdis[name] = info
            else:
                del self._changes[name]
        self._vdis = vdis
        self._fetched_at = started
        log.debug("listing refreshed: %d VDIs", len(vdis))

    def put(self, info: VdiInfo) -> None:
        """Record a VDI we created or changed."""
        self._vdis[info.name] = info
        self._changes[info.name] = (trio.current_time(), info)

    def remove(self, name: bytes) -> None:
        """Record a VDI we deleted."""
        self._vdis.pop(name, None)
        self._changes[name] = (trio.current_time(), None)
