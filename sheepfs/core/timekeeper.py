"""The times of every VDI: read, cached, stored and dropped (values: :mod:`.times`).

The key is dropped before a VDI is deleted (:meth:`TimeKeeper.delete`) and set right after
one is created (:meth:`TimeKeeper.bind`), because Sheepdog would hand it to the next VDI of
the name. Where reading many names costs one call (``hints.cheap_attrs``: the sheep backend
pipelines them) the mount reads the times of its first listing as it starts, and a listing
waits for them until one listing's have been read; after that a listing shows the creation
time of a VDI it has not read (one new since) and reads it behind, in one call with those
read more than a listing TTL ago, and a lookup of one name reads it first if it is older than
that. Behind a listing, "nothing kept" is read again only after REFRESH_AFTER: each read of
a missing attribute object writes error lines into the gateway sheep's log. Otherwise (dog:
a process per name) a listing never waits: a name not read yet shows its creation time and
is read in the background, and a lookup of one name waits for that one call. What is read
is trusted only for the VDI it was set for (:func:`.times.trusted`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass

import trio

from ..backends.base import Backend, VdiInfo
from ..errors import BackendError, NotFound
from ..supervisor import Supervisor
from .times import KEY, Times, encode, trusted

log = logging.getLogger(__name__)

#: Seconds "nothing kept" is used before it is read again (any backend), and where a name
#: costs a call of its own, a read value too (a lookup reads it again in the background).
#: Where a name costs a call: reads running at once in the background, and seconds they
#: wait before they begin, so that the listing that queued them is served first (dog's
#: processes take the CPU the kernel's further readdir pages would wait for).
REFRESH_AFTER = 60.0
BACKGROUND_READS = 2
BACKGROUND_DELAY = 1.0
#: A VDI whose creation time could not be read back (dog) is bound to the time we created
#: it; the listing's time may differ by this much and still be that VDI.
GUESS_SLACK = 5


@dataclass
class _Known:
    """What is known of one name's times: for the VDI created at ``ctime``."""

    ctime: int
    ctime_ns: int
    times: Times | None  # None: read, and nothing valid is kept
    at: float  # trio clock: when read or stored
    confirmed: bool = True  # False: bound to a guessed creation time (see GUESS_SLACK)

    def valid_for(self, info: VdiInfo) -> bool:
        if not self.confirmed:
            return abs(info.ctime - self.ctime) <= GUESS_SLACK
        if self.ctime_ns and info.ctime_ns:
            return self.ctime_ns == info.ctime_ns
        return self.ctime == info.ctime


class TimeKeeper:
    """The times of every VDI: read, cached, stored and dropped (see the module docstring).

    Reading never fails an operation (a failure is logged and the creation time shown);
    storing and dropping raise, and each caller decides what that means.
    """

    def __init__(self, backend: Backend, tasks: Supervisor, ttl: float = 1.0) -> None:
        self.backend = backend
        self.tasks = tasks
        self.ttl = ttl
        self.cheap = backend.hints.cheap_attrs
        self._known: dict[bytes, _Known] = {}
        self._changed: dict[bytes, float] = {}  # when we last stored or dropped a name's
        self._reading: dict[bytes, trio.Event] = {}
        self._guesses: dict[bytes, int] = {}  # bind's guessed creation time of a name
        self._queue: dict[bytes, VdiInfo] = {}  # names to read in the background
        self._reader = False
        self._listing_read = False  # the times of one listing have been read
        self._failing = False  # the last read failed: later failures are logged at debug

    # -- what is shown -----------------------------------------------------------------------

    def known(self, info: VdiInfo) -> Times | None:
        k = self._known.get(info.name)
        return k.times if k is not None and k.valid_for(info) else None

    def shown(self, info: VdiInfo) -> Times:
        return self.known(info) or Times.created(info.ctime)

    # -- reading -----------------------------------------------------------------------------

    def _unread(self, info: VdiInfo) -> bool:
        k = self._known.get(info.name)
        return k is None or not k.valid_for(info)

    def _stale(self, info: VdiInfo, max_age: float, none_kept_age: float | None = None) -> bool:
        """Read (for this VDI) ``max_age`` seconds ago or more; "nothing kept", behind a
        listing, only after REFRESH_AFTER (``none_kept_age``), because reading a missing
        attribute object costs the gateway sheep an error line in its log per copy
        (docs/SHEEPDOG.md F22): a listing would read every such VDI again."""
        k = self._known[info.name]
        limit = max_age if k.times is not None or none_kept_age is None else none_kept_age
        return trio.current_time() - k.at >= limit

    async def listed(self, listing: dict[bytes, VdiInfo]) -> None:
        """A listing is about to be shown. Until the times of one listing have been read,
        it waits for them (one call; the mount starts that read as it starts:
        ``Filesystem.warm_up``); after that, names it has not read (VDIs new since) show their
        creation time and are read in one call behind it, with those read more than a TTL
        ago. dog (a process per name): never waited for, read a few at a time."""
        infos = list(listing.values())
        self._prune(listing)
        unread = [i for i in infos if self._unread(i)]
        if self.cheap:
            if not self._listing_read:
                await self._read(unread)
                self._listing_read, unread = True, []
            stale = [
                i for i in infos if not self._unread(i) and self._stale(i, self.ttl, REFRESH_AFTER)
            ]
            self._read_later(unread + stale)
        else:
            self._read_later(i for i in unread if i.name not in self._reading)

    async def looked_up(self, info: VdiInfo) -> None:
        """One name is about to be shown: its times are read first if not read yet (one
        call), or (cheap) read more than a TTL ago, "nothing kept" too (one probe per TTL
        of a file being looked at); dog: those read more than REFRESH_AFTER ago are read
        again in the background."""
        if self._unread(info) or (self.cheap and self._stale(info, self.ttl)):
            self._queue.pop(info.name, None)
            await self._read([info])
        elif self._stale(info, REFRESH_AFTER):
            self._read_later([info])

    async def _read(self, infos: list[VdiInfo]) -> None:
        """Read the times of ``infos`` in one call; a name already being read is waited
        for, not read twice."""
        theirs = {self._reading[i.name] for i in infos if i.name in self._reading}
        mine = [i for i in infos if i.name not in self._reading]
        if mine:
            event = trio.Event()
            self._reading.update((i.name, event) for i in mine)
            try:
                await self._fetch(mine)
            finally:
                for i in mine:
                    if self._reading.get(i.name) is event:
                        del self._reading[i.name]
                event.set()
        for other in theirs:
            await other.wait()

    async def _fetch(self, infos: list[VdiInfo]) -> None:
        started = trio.current_time()
        try:
            got = await self.backend.get_attrs(KEY, [i.name for i in infos])
        except BackendError as e:
            log.log(logging.DEBUG if self._failing else logging.WARNING,
                    "times not read (creation times shown): %s", e)  # fmt: skip
            self._failing = True
            return
        self._failing = False
        for info in infos:
            if self._changed.get(info.name, float("-inf")) >= started:
                continue  # stored or dropped by us while this read ran: that is newer
            attr = got.get(info.name)
            times = trusted(attr, info) if attr is not None else None
            self._known[info.name] = _Known(info.ctime, info.ctime_ns, times, started)

    def _read_later(self, infos: Iterable[VdiInfo]) -> None:
        for info in infos:
            self._queue[info.name] = info
        if self._queue and not self._reader and self.tasks.start(self._read_queue):
            self._reader = True

    async def _read_queue(self) -> None:
        """Background reads of the queued names: all in one call where that is cheap
        (again while names were queued meanwhile), else a few at a time, after a delay."""
        try:
            if self.cheap:
                while self._queue:
                    batch = list(self._queue.values())
                    self._queue.clear()
                    await self._guarded(self._read(batch), len(batch))
            else:
                await trio.sleep(BACKGROUND_DELAY)
                await self._read_one_by_one()
        finally:
            self._reader = False

    async def _read_one_by_one(self) -> None:
        room = trio.Semaphore(BACKGROUND_READS)

        async def one(info: VdiInfo) -> None:
            try:
                await self._guarded(self._read([info]), 1)
            finally:
                room.release()

        while self._queue:  # names queued while the last ones were read go too
            async with trio.open_nursery() as nursery:
                while self._queue:
                    await room.acquire()
                    if self._queue:
                        nursery.start_soon(one, self._queue.popitem()[1])
                    else:
                        room.release()

    @staticmethod
    async def _guarded(read: Awaitable[None], count: int) -> None:
        try:
            await read
        except Exception:  # a bug costs this read, never the mount
            log.exception("reading the times of %d VDI(s) failed", count)

    def _prune(self, listing: dict[bytes, VdiInfo]) -> None:
        """Forget names the listing no longer has (not ones we changed a moment ago)."""
        recent = trio.current_time() - GUESS_SLACK
        for name in [n for n in self._known if n not in listing]:
            if self._changed.get(name, float("-inf")) < recent:
                del self._known[name]
                self._guesses.pop(name, None)
        for name in [n for n, when in self._changed.items() if when < recent]:
            del self._changed[name]

    # -- storing -----------------------------------------------------------------------------

    async def store(self, name: bytes, ctime: int, ctime_ns: int, times: Times,
                    confirmed: bool = True) -> None:  # fmt: skip
        """Keep ``times`` for the VDI ``name`` created at ``ctime``."""
        self._changed[name] = trio.current_time()
        await self.backend.set_attr(name, KEY, encode(ctime, times))
        self._known[name] = _Known(ctime, ctime_ns, times, trio.current_time(), confirmed)
        self._changed[name] = trio.current_time()

    async def keep(self, name: bytes, ctime: int, times: Times) -> None:
        """:meth:`store` for the VDI created at ``ctime`` (as :meth:`bind` returned it: a
        guess, maybe, that a listing has corrected since)."""
        k = self._known.get(name)
        if k is not None and self._guesses.get(name) == ctime:
            ctime = k.ctime
        same = k is not None and k.ctime == ctime
        ctime_ns, confirmed = (k.ctime_ns, k.confirmed) if k is not None and same else (0, True)
        await self.store(name, ctime, ctime_ns, times, confirmed)

    async def bind(self, name: bytes, times: Times) -> tuple[int, int]:
        """A VDI of ours was just created as ``name``: store its times, over whatever an
        earlier VDI of the name left. Returns its creation time (s, ns): read back where a
        lookup is cheap, else the time now, checked against the next listing read from
        the backend (:meth:`seen`; our own record of the VDI holds the guess)."""
        if self.backend.hints.cheap_lookup:
            info = await self.backend.lookup(name)
            if info is None:
                raise NotFound("set times", name, "the VDI just created is gone")
            await self.store(name, info.ctime, info.ctime_ns, times)
            return info.ctime, info.ctime_ns
        guess = self._guesses[name] = int(time.time())
        await self.store(name, guess, 0, times, confirmed=False)
        return guess, 0

    def seen(self, infos: Iterable[VdiInfo]) -> None:
        """A listing read from the backend (``Catalog.watch``): guessed creation times it
        shows otherwise are bound again. Never our own records: they hold the guess."""
        self._rebind_later(infos)

    def _rebind_later(self, infos: Iterable[VdiInfo]) -> None:
        for name, ctime, times in self._confirm(infos):
            self.tasks.start(self._rebind, name, ctime, times)

    def _confirm(self, infos: Iterable[VdiInfo]) -> list[tuple[bytes, int, Times]]:
        """Check guessed creation times against listed ones; the names to store again."""
        again = []
        for info in infos:
            k = self._known.get(info.name)
            if k is None or k.confirmed:
                continue
            if info.ctime == k.ctime:
                k.confirmed, k.ctime_ns = True, info.ctime_ns
            elif k.valid_for(info) and k.times is not None:
                again.append((info.name, info.ctime, k.times))
            else:
                del self._known[info.name]  # not the VDI we created any more
        return again

    async def _rebind(self, name: bytes, ctime: int, times: Times) -> None:
        try:
            await self.store(name, ctime, 0, times)
        except BackendError as e:
            log.warning("times of %r not stored again for its creation time: %s", name, e)

    async def confirm_all(self) -> None:
        """At unmount: bind every guessed creation time to the listed one (one listing)."""
        if not any(not k.confirmed for k in self._known.values()):
            return
        try:
            for name, ctime, times in self._confirm((await self.backend.list()).values()):
                await self.store(name, ctime, 0, times)
        except BackendError as e:
            log.warning("times of new files may not be kept: %s", e)

    async def drop(self, name: bytes) -> None:
        self._changed[name] = trio.current_time()
        self._known.pop(name, None)
        self._guesses.pop(name, None)
        try:
            await self.backend.drop_attr(name, KEY)
        except NotFound:
            pass  # no VDI of that name: nothing that a drop could reach
        self._changed[name] = trio.current_time()

    async def delete(self, name: bytes) -> None:
        """Delete the VDI ``name``, its times first; if the delete fails they are put back."""
        kept = (await self.backend.get_attrs(KEY, [name])).get(name)
        await self.drop(name)
        try:
            await self.backend.delete(name)
        except BackendError:
            if kept is not None:
                try:
                    await self.backend.set_attr(name, KEY, kept.value)
                except BackendError as e:
                    log.warning("times of %r lost with its failed delete: %s", name, e)
            raise
