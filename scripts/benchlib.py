"""Helpers for scripts/bench: dog that records the VDIs it creates, the two FUSE mounts
(sheepfs and Sheepdog's C sheepfs), fio, timing and cleanup that survives Ctrl-C."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("bench")


# -- timing ----------------------------------------------------------------------------------


def sha256_file(path: Path | str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


Side = Callable[[int], float] | None


def take_turns(runs: int, *sides: Side) -> list[float | None]:
    """Median of ``runs`` runs of each side (None: not measured), the sides taking turns, so
    that whatever drifts during a run (the store's size, the machine's load) weighs on all."""
    results: list[list[float]] = [[] for _ in sides]
    for i in range(runs):
        for side, out in zip(sides, results, strict=True):
            if side is not None:
                out.append(side(i))
    return [statistics.median(r) if r else None for r in results]


def peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def parallel(fn: Callable, items: Iterable, jobs: int = 4) -> list:
    """``fn`` over ``items`` in ``jobs`` threads; on an interrupt, what has not started is
    dropped (the calls under way finish) before it propagates."""
    ex = ThreadPoolExecutor(jobs)
    try:
        return list(ex.map(fn, items))
    finally:
        ex.shutdown(wait=True, cancel_futures=True)


def random_offsets(size: int, count: int, seed: int = 0) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(0, max(1, size - 4096)) // 4096 * 4096 for _ in range(count)]


# -- signals ---------------------------------------------------------------------------------


def raise_on_sigterm() -> None:
    """SIGTERM raises like Ctrl-C does, so that every finally block runs."""

    def handler(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """While cleaning up, Ctrl-C and SIGTERM are logged, not obeyed (cleanup must finish)."""

    def handler(signum: int, _frame: object) -> None:
        log.warning("signal %d: still cleaning up, please wait", signum)

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


# -- dog -------------------------------------------------------------------------------------


class Dog:
    """Runs dog (real or fake) directly and records every VDI the benchmark creates, through
    dog or through a mount, so that :meth:`cleanup` can delete exactly those."""

    def __init__(self, dog: str, address: str, port: int, env: dict[str, str]) -> None:
        self.dog, self.address, self.port, self.env = dog, address, port, env
        self.created: dict[str, None] = {}  # every name ever created, insertion-ordered
        self._lock = threading.Lock()

    def run(self, *args: str, stdin=None, stdout=subprocess.PIPE, input: bytes | None = None):
        argv = [self.dog, *args[:2], "-a", self.address, "-p", str(self.port), *args[2:]]
        return subprocess.run(
            argv, stdin=stdin, input=input, stdout=stdout, stderr=subprocess.PIPE,
            env=self.env, check=True, start_new_session=True,  # a 2nd Ctrl-C spares cleanup
        )  # fmt: skip

    def sha256(self, name: str) -> str:
        h = hashlib.sha256()
        argv = [self.dog, "vdi", "read", "-a", self.address, "-p", str(self.port), "--", name]
        with subprocess.Popen(
            argv, stdout=subprocess.PIPE, env=self.env, start_new_session=True
        ) as p:
            while block := p.stdout.read(1 << 22):
                h.update(block)
        return h.hexdigest()

    def track(self, name: str) -> str:
        """Record ``name`` before anything creates it (an interrupt may come in between)."""
        with self._lock:
            self.created[name] = None
        return name

    def create(self, name: str, size: int | str, data: Path | None = None) -> None:
        self.run("vdi", "create", "--", self.track(name), str(size))
        if data is not None:
            with open(data, "rb") as f:
                self.run("vdi", "write", "--", name, "0", str(size), stdin=f)

    def delete(self, name: str) -> None:
        self.run("vdi", "delete", "--", name)

    def names(self) -> set[str]:
        """Names of the VDIs in the cluster (ours have no spaces or escapes)."""
        out = self.run("vdi", "list", "-r").stdout.decode(errors="replace")
        return {row.split(" ")[1] for row in out.splitlines() if row[:2] in ("= ", "s ", "c ")}

    def cleanup(self) -> list[str]:
        """Delete every VDI we ever created that still exists; return the names still left."""
        for attempt in range(3):
            left = sorted(self.created.keys() & self.names())
            if not left:
                log.info("none of the %d VDI(s) the benchmark created is left", len(self.created))
                return []
            if attempt:
                time.sleep(2)
            log.info("deleting %d VDI(s) the benchmark created", len(left))
            parallel(self._delete_quietly, left)
        left = sorted(self.created.keys() & self.names())
        for name in left:
            log.error("VDI %s could not be deleted", name)
        return left

    def _delete_quietly(self, name: str) -> None:
        try:
            self.delete(name)
        except subprocess.CalledProcessError as e:
            why = e.stderr.decode(errors="replace").strip() or f"exit status {e.returncode}"
            log.warning("dog vdi delete %s: %s", name, why)

    def sample_iops(self, name: str, size: int, jobs: int, write: bool, calls: int = 48) -> float:
        """Calls per second of 4 KiB ``dog vdi read``/``write`` at random offsets, in ``jobs``
        threads: what a client calling dog once per I/O gets (a sample, scaled)."""
        block = random.randbytes(4096)

        def one(off: int) -> None:
            if write:
                self.run("vdi", "write", "--", name, str(off), "4096", input=block)
            else:
                self.run("vdi", "read", "--", name, str(off), "4096")

        offsets = random_offsets(size, calls, seed=jobs)
        return calls / timed(lambda: parallel(one, offsets, jobs))


# -- mounts ----------------------------------------------------------------------------------


def wait_mounted(mnt: Path, alive: Callable[[], bool], what: str, timeout: float = 20) -> None:
    deadline = time.time() + timeout
    while not os.path.ismount(mnt):
        if not alive() or time.time() > deadline:
            raise RuntimeError(f"{what} did not mount on {mnt}")
        time.sleep(0.05)


def unmount(mnt: Path, tool: str) -> None:
    """Unmount ``mnt`` (ours) with ``tool -u``, retrying while it is busy, lazily at last."""
    for _ in range(20):
        if not os.path.ismount(mnt):
            return
        if subprocess.run([tool, "-u", str(mnt)], capture_output=True).returncode == 0:
            return
        time.sleep(0.25)
    log.warning("%s is busy: unmounting it lazily", mnt)
    subprocess.run([tool, "-u", "-z", str(mnt)], check=False)


class Sheepfs:
    """The sheepfs daemon under test, in a session of its own so Ctrl-C reaches only us."""

    def __init__(self, mnt: Path, argv: Sequence[str], env: dict[str, str], cwd: Path) -> None:
        self.mnt = mnt
        mnt.mkdir(exist_ok=True)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sheepfs", str(mnt), "-f", *argv],
            env=env, cwd=cwd, start_new_session=True,
        )  # fmt: skip
        try:
            wait_mounted(mnt, lambda: self.proc.poll() is None, "sheepfs")
        except BaseException:
            self.stop(timeout=5)
            raise

    def stop(self, timeout: float = 120) -> None:
        """Unmount; sheepfs writes what is pending first. Killed (its dog calls too) when it
        takes longer than ``timeout``."""
        log.info("unmounting sheepfs")
        unmount(self.mnt, "fusermount3")
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            log.warning("sheepfs still running %.0f s after unmount: killing it", timeout)
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            unmount(self.mnt, "fusermount3")


class CSheepfs:
    """Sheepdog's own C sheepfs (FUSE 2), one VDI attached at a time by name."""

    def __init__(self, binary: Path, address: str, port: int, mnt: Path) -> None:
        self.mnt = mnt
        mnt.mkdir(exist_ok=True)
        self.cwd = Path(tempfile.mkdtemp(prefix="sheepfs-c-", dir="/var/tmp"))  # user xattrs
        try:
            p = subprocess.run(
                [str(binary), "-a", address, "-p", str(port), str(mnt)],
                cwd=self.cwd, capture_output=True, text=True, timeout=30,
            )  # fmt: skip
            if p.returncode != 0:
                raise RuntimeError(f"sheepfs-c failed ({p.returncode}): {p.stderr.strip()[-200:]}")
            wait_mounted(mnt, lambda: True, "sheepfs-c")
        except BaseException:
            self.stop()
            raise

    def attach(self, name: str) -> Path:
        (self.mnt / "vdi" / "mount").write_text(name + "\n")
        return self.mnt / "volume" / name

    def detach(self, name: str) -> None:
        if (self.mnt / "volume" / name).exists():
            (self.mnt / "vdi" / "unmount").write_text(name + "\n")

    def stop(self) -> None:
        log.info("unmounting C sheepfs")
        unmount(self.mnt, "fusermount" if shutil.which("fusermount") else "umount")
        shutil.rmtree(self.cwd, ignore_errors=True)


# -- fio -------------------------------------------------------------------------------------


def fio(path: Path, rw: str, size: int, jobs: int, runtime: float, *extra: str, timeout: float):
    """Run fio (4 KiB, psync, O_DIRECT, time-based) on ``path``: (its JSON job, wall seconds).
    Raises subprocess.TimeoutExpired (fio killed) after ``timeout`` seconds."""
    argv = [
        "fio", f"--name={rw}", f"--filename={path}", f"--rw={rw}", "--bs=4k", "--ioengine=psync",
        "--direct=1", f"--numjobs={jobs}", f"--runtime={runtime:g}", "--time_based",
        f"--size={size}", "--group_reporting", "--output-format=json", *extra,
    ]  # fmt: skip
    start = time.perf_counter()
    out = run_group(argv, timeout)
    wall = time.perf_counter() - start
    return json.loads(out[out.index("{") :])["jobs"][0], wall


def run_group(argv: Sequence[str], timeout: float) -> str:
    """Run a command that forks workers (fio) in a process group of its own and return its
    stdout; on a timeout or an interrupt the whole group is stopped, workers too."""
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, _ = p.communicate(timeout=timeout)
    except BaseException:
        for sig, grace in ((signal.SIGTERM, 10), (signal.SIGKILL, None)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(grace)
                break
        raise
    if p.returncode != 0:
        raise subprocess.CalledProcessError(p.returncode, argv)
    return out


def fio_randread(path: Path, size: int, jobs: int, runtime: float) -> float:
    """IOPS of random 4 KiB reads with ``jobs`` jobs."""
    job, _ = fio(path, "randread", size, jobs, runtime, timeout=runtime + 300)
    return job["read"]["iops"]


@dataclass
class RandWrite:
    iops: float | None  # write ios / wall time of fio, its final fsync and close included
    close: float  # seconds fio took past its runtime (fsync on close); a lower bound on timeout
    timed_out: bool


def fio_randwrite(path: Path, size: int, runtime: float, timeout: float) -> RandWrite:
    """Random 4 KiB writes for ``runtime`` seconds, then fsync on close."""
    try:
        job, wall = fio(path, "randwrite", size, 1, runtime, "--fsync_on_close=1", timeout=timeout)
    except subprocess.TimeoutExpired:
        log.error("fio randwrite on %s: timeout (%.0f s) hit, fio killed", path, timeout)
        return RandWrite(None, max(0.0, timeout - runtime), True)
    return RandWrite(job["write"]["total_ios"] / wall, max(0.0, wall - runtime), False)


def random_file(path: Path, size: int) -> Path:
    with open(path, "wb") as f:
        for left in range(size, 0, -(1 << 24)):
            f.write(random.randbytes(min(left, 1 << 24)))
    return path


# -- the table -------------------------------------------------------------------------------

Value = float | str | None  # str: printed as it is (a timeout); None: "-"


@dataclass
class Row:
    test: str
    unit: str  # "MiB/s", "IOPS" (higher is better) or "s" (lower is better)
    mount: Value
    dog: Value = None
    c: Value = None
    ratio: str = "speed"  # "speed": mount's over the other's; "time": mount's time over (x)


def cell(v: Value, unit: str) -> str:
    if v is None or isinstance(v, str):
        return v or "-"
    if unit == "MiB/s":
        return f"{v:.1f} MiB/s"
    return f"{v:.0f} IOPS" if unit == "IOPS" else f"{v:.3f} s"


def ratio(row: Row, other: Value) -> str:
    m = row.mount
    numbers = isinstance(m, int | float) and isinstance(other, int | float) and m and other
    if not numbers or row.ratio == "none":
        return "-"
    if row.ratio == "time":
        return f"{m / other:.2f}x"
    r = other / m if row.unit == "s" else m / other
    return f"{r:.2f}" if r >= 0.1 else f"{r:.3f}"


def table(rows: list[Row]) -> list[str]:
    """test | mount | dog | C sheepfs | mount/dog | mount/C, as Markdown."""
    widths = (58, 14, 14, 14, 9, 9)

    def line(cells: tuple[str, ...]) -> str:
        padded = [f"{cells[0]:<{widths[0]}}"]
        padded += [f"{c:>{w}}" for c, w in zip(cells[1:], widths[1:], strict=True)]
        return "| " + " | ".join(padded) + " |"

    out = [line(("test", "mount", "dog", "C sheepfs", "mount/dog", "mount/C"))]
    out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        values = (cell(r.mount, r.unit), cell(r.dog, r.unit), cell(r.c, r.unit))
        out.append(line((r.test, *values, ratio(r, r.dog), ratio(r, r.c))))
    return out
