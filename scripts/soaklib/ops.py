"""The workload: workers, each with files of its own, doing what users do with ordinary
tools through the mount. Each operation updates the model by its outcome: exit 0 (every
write acknowledged by close or fsync) makes its result the known content; anything else
leaves it as a possibility only (``Entry.refused``), settled at the next quiet moment."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from . import content
from .model import ABSENT, Entry, Model, Version
from .options import Config
from .report import Report
from .runner import Result, Runner

log = logging.getLogger("soak")
MiB = 1 << 20


@dataclass
class Ctx:
    """What every worker shares."""

    cfg: Config
    model: Model
    runner: Runner
    report: Report
    mnt: Path
    tmp: Path  # local scratch files (sources of dd and fio)
    checker: object  # checker.Checker (settles and verifies)
    calm: threading.Event
    stop: threading.Event


Op = Callable[["Worker"], bool]  # False: not possible now (no file fits)


class Worker(threading.Thread):
    def __init__(self, w: int, ctx: Ctx, ops: Sequence[tuple[str, int, Op]]) -> None:
        super().__init__(name=f"worker{w}", daemon=True)
        self.w, self.ctx, self.ops = w, ctx, list(ops)
        self.rng = random.Random(ctx.cfg.seed * 1000 + w)

    def run(self) -> None:
        try:
            while not self.ctx.stop.is_set():
                with self.ctx.model.locks[self.w]:
                    if self.ctx.calm.is_set():
                        self.ctx.checker.settle_worker(self.w)
                    self.one()
                time.sleep(0.05)
        except Exception as e:  # noqa: BLE001 - the soak itself failed: say so, loudly
            log.exception("worker %d", self.w)
            self.ctx.report.crash(f"the soak's worker {self.w} failed: {e!r}")

    def one(self) -> None:
        over = self.ctx.model.live_bytes() > self.ctx.cfg.budget
        for _ in range(8):
            kind, _, op = ("rm", 0, rm) if over else self._weighted()
            if op(self):
                return

    def _weighted(self) -> tuple[str, int, Op]:
        return self.rng.choices(self.ops, weights=[w for _, w, _ in self.ops])[0]

    # -- helpers for the operations ------------------------------------------------------

    def files(self, exists: bool | None = None, min_size: int = 0) -> list[Entry]:
        """This worker's settled files (that exist, or not, and hold at least min_size)."""
        out = []
        for e in self.ctx.model.of_worker(self.w):
            if not e.settled or (exists is not None and e.known.exists != exists):
                continue
            if e.known.size >= min_size or not e.known.exists:
                out.append(e)
        return out

    def path(self, e: Entry) -> Path:
        return self.ctx.mnt / e.name

    def size(self) -> int:
        r, cap = self.rng.random(), self.ctx.cfg.max_size
        if r < 0.08:
            return 0
        if r < 0.3:
            return self.rng.randrange(1, 64 << 10)
        if r < 0.75:
            return min(cap, self.rng.randrange(64 << 10, 16 * MiB))
        if r < 0.95:
            return min(cap, self.rng.randrange(16 * MiB, 64 * MiB))
        return self.rng.randrange(min(cap, 64 * MiB), cap + 1)

    def new_content(self, size: int, what: str) -> Version:
        """A new shadow file of ``size`` bytes: all data, or sparse (holes and extents)."""
        path = self.ctx.model.new_path(self.w, what)
        sparse = content.extents(self.rng, size) if self.rng.random() < 0.3 else None
        content.write_file(path, size, self.rng.randrange(1 << 62), sparse)
        return Version(True, size, path)

    def do(
        self, kind: str, entries: list[Entry], argv: list[str], nbytes: int, desc: str
    ) -> Result:
        """Run one operation's command, count it, and note it on the files it touches."""
        at = self.ctx.report.now()
        r = self.ctx.runner.run(argv, self.ctx.cfg.deadline(nbytes), f"{kind} {desc}")
        what = f"{kind} {desc} at {at:.1f}-{self.ctx.report.now():.1f} s"
        if not r.ok:
            what += f" (failed: {r.err[-200:] or r.rc})"
            log.info("refused: %s", what)
        for e in entries:
            e.did(what, self.ctx.report.now())
        self.ctx.report.op_done(kind, r.ok)
        if not r.ok:
            time.sleep(0.5)  # under a fault: do not spin through refusals
        return r

    def outcome(self, e: Entry, r: Result, v: Version, zeros: bool = False) -> None:
        """``zeros``: refused, it may also have left zeros (``Entry.maybe_zeros``)."""
        e.acknowledged(v) if r.ok else e.refused(v, zeros)


# -- the operations --------------------------------------------------------------------------


def cp_new(wk: Worker) -> bool:
    free = wk.files(exists=False)
    if not free:
        return False
    e = wk.rng.choice(free)
    v = wk.new_content(wk.size(), "new")
    sparse = "--sparse=always" if wk.rng.random() < 0.5 else "--sparse=auto"
    r = wk.do(
        "cp_new",
        [e],
        ["cp", sparse, "--", str(v.base), str(wk.path(e))],
        v.size,
        f"{e.name} ({v.size} bytes)",
    )
    wk.outcome(e, r, v)
    return True


def dd(wk: Worker) -> bool:
    """``dd conv=notrunc`` at a random offset (now and then past the end)."""
    files = wk.files(exists=True)
    if not files:
        return False
    e = wk.rng.choice(files)
    size = e.known.size
    off = wk.rng.randrange(0, size + 1)
    if wk.rng.random() < 0.1:
        off = size + wk.rng.randrange(0, 4 * MiB)
    n = wk.rng.choice(
        [wk.rng.randrange(1, 4097), wk.rng.randrange(1, MiB), wk.rng.randrange(1, 8 * MiB)]
    )
    data = content.data(wk.rng.randrange(1 << 62), 0, n)
    src = wk.ctx.tmp / f"w{wk.w}-dd"
    src.write_bytes(data)
    argv = [
        "dd",
        f"if={src}",
        f"of={wk.path(e)}",
        "bs=1M",
        f"seek={off}",
        "oflag=seek_bytes",
        "conv=notrunc,fsync",
        "status=none",
    ]
    r = wk.do("dd", [e], argv, n, f"{e.name} {n} bytes at {off}")
    wk.outcome(e, r, wk.ctx.model.compact(wk.w, e.known.patched(off, data)))
    return True


def cp_over(wk: Worker) -> bool:
    """``cp`` of other content over an existing file, bigger or smaller than it."""
    files = wk.files(exists=True)
    if not files:
        return False
    e = wk.rng.choice(files)
    old = e.known.size
    size = wk.rng.randrange(0, old + 1) if wk.rng.random() < 0.5 else wk.size() + old // 2
    v = wk.new_content(min(size, wk.ctx.cfg.max_size), "over")
    r = wk.do(
        "cp_over",
        [e],
        ["cp", "--", str(v.base), str(wk.path(e))],
        v.size,
        f"{e.name} ({old} -> {v.size} bytes)",
    )
    wk.outcome(e, r, v)
    return True


def truncate_up(wk: Worker) -> bool:
    files = wk.files(exists=True)
    if not files:
        return False
    e = wk.rng.choice(files)
    size = e.known.size + wk.rng.randrange(1, 64 * MiB)
    r = wk.do(
        "truncate_up",
        [e],
        ["truncate", "-s", str(size), "--", str(wk.path(e))],
        0,
        f"{e.name} {e.known.size} -> {size}",
    )
    wk.outcome(e, r, e.known.grown(size))
    return True


def rename(wk: Worker) -> bool:
    """``mv`` to another name of the worker's, which may exist (it is replaced)."""
    files = wk.files(exists=True)
    if not files:
        return False
    a = wk.rng.choice(files)
    others = [e for e in wk.files() if e is not a]
    if not others:
        return False
    b = wk.rng.choice(others)
    desc = f"{a.name} -> {b.name}" + (" (over it)" if b.known.exists else "")
    r = wk.do("rename", [a, b], ["mv", "-T", "--", str(wk.path(a)), str(wk.path(b))], 0, desc)
    moved = a.known
    wk.outcome(a, r, ABSENT)
    wk.outcome(b, r, moved)
    return True


def rm(wk: Worker) -> bool:
    files = wk.files(exists=True)
    if not files:
        return False
    e = wk.rng.choice(files)
    r = wk.do("rm", [e], ["rm", "--", str(wk.path(e))], 0, e.name)
    wk.outcome(e, r, ABSENT)
    return True
