"""What the soak counts, and how it ends: one summary line, exit 0 only with nothing lost,
no hang and no crash; before it, for each failure, what to replay."""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field


@dataclass
class FaultEvent:
    kind: str
    start: float
    detail: str = ""
    end: float | None = None

    def describe(self) -> str:
        until = f"-{self.end:.1f}" if self.end is not None else "-"
        more = f" ({self.detail})" if self.detail else ""
        return f"{self.kind} at {self.start:.1f}{until} s{more}"


@dataclass
class Failure:
    what: str  # "lost", "hang", "crash", "bad read"
    detail: str
    op: str  # the operation it followed, with its time
    fault: str  # the fault that preceded it


@dataclass
class Report:
    """Thread-safe counters of one run."""

    seed: int
    replay: str  # the command line that replays the run
    t0: float = field(default_factory=time.monotonic)
    ops: Counter = field(default_factory=Counter)
    refused: Counter = field(default_factory=Counter)
    faults: list[FaultEvent] = field(default_factory=list)
    verified: int = 0
    lost: int = 0
    hangs: int = 0
    crashes: int = 0
    failures: list[Failure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    _lock: threading.RLock = field(default_factory=threading.RLock)

    def now(self) -> float:
        return time.monotonic() - self.t0

    def op_done(self, kind: str, ok: bool) -> None:
        with self._lock:
            self.ops[kind] += 1
            if not ok:
                self.refused[kind] += 1

    def fault_started(self, kind: str, detail: str = "") -> FaultEvent:
        ev = FaultEvent(kind, self.now(), detail)
        with self._lock:
            self.faults.append(ev)
        return ev

    def fault_ended(self, ev: FaultEvent) -> None:
        ev.end = self.now()

    def fault_before(self, at: float) -> str:
        """The last fault begun before ``at`` (seconds into the run)."""
        with self._lock:
            before = [f for f in self.faults if f.start <= at]
        return before[-1].describe() if before else "none"

    def _fail(self, what: str, detail: str, op: str, at: float) -> None:
        self.failures.append(Failure(what, detail, op, self.fault_before(at)))

    def lose(self, nbytes: int, detail: str, op: str, at: float, what: str = "lost") -> None:
        with self._lock:
            self.lost += nbytes
            self._fail(what, detail, op, at)

    def hang(self, op: str, at: float, detail: str) -> None:
        with self._lock:
            self.hangs += 1
            self._fail("hang", detail, op, at)

    def crash(self, detail: str, op: str = "-") -> None:
        with self._lock:
            self.crashes += 1
            self._fail("crash", detail, op, self.now())

    def verified_one(self) -> None:
        with self._lock:
            self.verified += 1

    def note(self, line: str) -> None:
        with self._lock:
            self.notes.append(line)

    # -- the end ---------------------------------------------------------------------------

    def fault_counts(self) -> Counter:
        return Counter(f.kind for f in self.faults)

    def summary(self) -> str:
        return (
            f"soak: {sum(self.ops.values())} ops, {len(self.faults)} faults injected, "
            f"{self.verified} files verified, {self.lost} bytes lost, {self.hangs} hangs, "
            f"{self.crashes} crashes"
        )

    def exit_code(self) -> int:
        return 0 if self.lost == 0 and self.hangs == 0 and self.crashes == 0 else 1

    def lines(self, kinds: list[str]) -> list[str]:
        counts = self.fault_counts()
        kinds = kinds or sorted(counts)
        out = [f"soak: {line}" for line in self.notes]
        out.append("soak: faults injected: " + ", ".join(f"{k} {counts[k]}" for k in kinds))
        out.append(
            "soak: ops: "
            + ", ".join(f"{k} {n} ({self.refused[k]} refused)" for k, n in sorted(self.ops.items()))
        )
        for f in self.failures:
            out.append(
                f"soak: FAILED ({f.what}): {f.detail}; operation: {f.op}; fault before it: "
                f"{f.fault}; seed {self.seed}; replay: {self.replay}"
            )
        out.append(self.summary())
        return out
