"""Every command of the soak runs with a deadline: one still running then is a hang (it is
killed, with all it started, and counted). Names never pass through a shell: argv only."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from .report import Report

log = logging.getLogger("soak")


@dataclass(frozen=True)
class Result:
    rc: int | None  # None: killed at its deadline (a hang)
    out: bytes
    err: str
    seconds: float

    @property
    def ok(self) -> bool:
        return self.rc == 0


class Runner:
    def __init__(self, report: Report, env: dict[str, str] | None = None) -> None:
        self.report = report
        self.env = env
        self._procs: set[subprocess.Popen] = set()
        self._lock = threading.Lock()
        self.stopping = False  # interrupted: what is killed now is no hang

    def run(
        self,
        argv: Sequence[str],
        deadline: float,
        op: str,
        input: bytes | None = None,
        stdout: int | None = subprocess.PIPE,
        env: dict[str, str] | None = None,
    ) -> Result:
        """Run ``argv`` (for operation ``op``); a hang if it takes over ``deadline`` s."""
        start = time.monotonic()
        at = self.report.now()
        p = subprocess.Popen(
            list(argv),
            stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
            stdout=stdout,
            stderr=subprocess.PIPE,
            env=env or self.env,
            start_new_session=True,
        )
        with self._lock:
            self._procs.add(p)
        try:
            out, err = p.communicate(input, timeout=deadline)
        except subprocess.TimeoutExpired:
            self._kill(p)
            if not self.stopping:
                what = f"{os.path.basename(argv[0])} still running after {deadline:.0f} s"
                log.error("hang: %s: %s", op, what)
                self.report.hang(f"{op} (begun at {at:.1f} s)", at, what)
            return Result(None, b"", "", time.monotonic() - start)
        finally:
            with self._lock:
                self._procs.discard(p)
        text = (err or b"").decode(errors="replace").strip()
        return Result(p.returncode, out or b"", text, time.monotonic() - start)

    def _kill(self, p: subprocess.Popen) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)
        try:
            p.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            log.error("pid %d does not die (stuck in the kernel?)", p.pid)

    def kill_all(self) -> None:
        self.stopping = True
        with self._lock:
            procs = list(self._procs)
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
