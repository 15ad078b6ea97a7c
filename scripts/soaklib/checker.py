"""Checking the cluster against the model with ``dog vdi read``: at random moments while
the workload runs (when no fault is under way), and every file at the end.

Settling an unsettled file: it is synced through the mount (``sync FILE``: fsync, which
returns once sheepfs has put everything it holds of the file into the cluster), then read
from the cluster and judged against both possibilities; what it holds becomes known.
"""

from __future__ import annotations

import logging
import random
import threading
import time

from .judge import Verdict, judge
from .model import ABSENT, Entry, Model, Version
from .ops import Ctx
from .target import Target, Unavailable

log = logging.getLogger("soak")


class Checker:
    def __init__(self, ctx: Ctx, target: Target) -> None:
        self.ctx, self.target = ctx, target
        self.model: Model = ctx.model
        self.rng = random.Random(ctx.cfg.seed + 7)
        self.last_error = ""

    def verify(self, e: Entry, w: int, adopt: bool, count: bool = True) -> Verdict | None:
        """Judge the VDI of ``e`` (``count``: a failure counts); with ``adopt``, what it
        holds becomes ``e.known``. None: the cluster could not be read now."""
        sink_path = self.model.new_path(w, "read") if adopt else None
        try:
            stream = self.target.open_vdi(e.name)
            with open(sink_path, "wb") if sink_path else _Null() as sink:
                verdict = judge(stream, e.candidates(), sink if sink_path else None, e.maybe_zeros)
            if stream is not None:
                stream.finish()
        except Unavailable as why:
            log.info("check of %s skipped: %s", e.name, why)
            self.last_error = str(why)
            if sink_path:
                sink_path.unlink(missing_ok=True)
            return None
        if count:
            self.ctx.report.verified_one()
        if count and not verdict.ok:
            log.error("%s: %s (after %s)", e.name, verdict.why, " / ".join(e.history))
            self.ctx.report.lose(
                verdict.lost,
                f"{e.name}: {verdict.why} (its last operations: {' / '.join(e.history)})",
                e.last_op,
                e.last_at,
            )
        if adopt:
            if verdict.size is None:
                sink_path.unlink(missing_ok=True)
                e.acknowledged(ABSENT)
            else:
                e.acknowledged(Version(True, verdict.size, sink_path))
        return verdict

    def settle(self, e: Entry, w: int) -> bool:
        """Sync ``e`` through the mount, then adopt what the cluster holds (judged)."""
        r = self.ctx.runner.run(
            ["sync", "--", str(self.ctx.mnt / e.name)],
            self.ctx.cfg.deadline(self.ctx.cfg.max_size),
            f"settle {e.name}",
        )
        if not r.ok and "No such file" not in r.err:
            return False
        return self.verify(e, w, adopt=True) is not None

    def settle_worker(self, w: int) -> None:
        """Settle the files of worker ``w`` that need it (under its lock, in calm)."""
        for e in self.model.of_worker(w):
            if not e.settled and self.ctx.calm.is_set():
                self.settle(e, w)
        self.model.collect(w)

    def spot_check(self) -> None:
        """One settled file of a worker that is between operations."""
        w = self.rng.randrange(self.model.workers)
        lock = self.model.locks[w]
        if not lock.acquire(blocking=False):
            return
        try:
            files = [e for e in self.model.of_worker(w) if e.settled]
            if files and self.ctx.calm.is_set():
                e = self.rng.choice(files)
                verdict = self.verify(e, w, adopt=False)
                if verdict is not None and not verdict.ok:
                    self.verify(e, w, adopt=True, count=False)  # go on from what it holds
        finally:
            lock.release()

    def loop(self, stop: threading.Event, every: float) -> None:
        while not stop.wait(self.rng.uniform(0.5, 1.5) * every):
            try:
                self.spot_check()
            except Exception as e:  # noqa: BLE001 - the soak itself failed: say so
                log.exception("spot check")
                self.ctx.report.crash(f"the soak's checker failed: {e!r}")
                return

    def settle_all(self) -> int:
        """At the end (calm, workers stopped): settle every unsettled file; how many stay."""
        left = 0
        for w in range(self.model.workers):
            for e in self.model.of_worker(w):
                if not e.settled and not self.settle(e, w):
                    left += 1
        return left

    def final(self, tries: int = 6, pause: float = 10) -> None:
        """Every file, read back from the cluster (the mount is gone by now); a read that
        fails is tried again a few times (a node back from a fault may still recover)."""
        for w in range(self.model.workers):
            for e in self.model.of_worker(w):
                verdict = self.verify(e, w, adopt=False)
                for _ in range(tries - 1):
                    if verdict is not None:
                        break
                    time.sleep(pause)
                    verdict = self.verify(e, w, adopt=False)
                if verdict is None:
                    self.ctx.report.lose(
                        max(v.size for v in e.candidates()),
                        f"{e.name}: could not be read at the end: {self.last_error}",
                        e.last_op,
                        e.last_at,
                    )


class _Null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None
