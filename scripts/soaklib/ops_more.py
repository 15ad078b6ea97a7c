"""More of the workload: rsync of a changed file, fio random writes with verify, and
sequential readers at once (each read checked against the model)."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from . import content
from .judge import differences, judge
from .model import Entry, materialize
from .ops import MiB, Worker

log = logging.getLogger("soak")


def rsync(wk: Worker) -> bool:
    """rsync of a changed copy over a file: a temporary file and a rename over it, or (with
    ``--inplace``) writes into it; the delta algorithm reads it back through the mount."""
    files = [e for e in wk.files(exists=True, min_size=1) if e.known.size <= 64 * MiB]
    if not files:
        return False
    e = wk.rng.choice(files)
    size = e.known.size
    off = wk.rng.randrange(0, size + 1)
    change = content.data(wk.rng.randrange(1 << 62), 0, wk.rng.randrange(1, MiB))
    v = materialize(e.known.patched(off, change), wk.ctx.model.new_path(wk.w, "rsync"))
    inplace = wk.rng.random() < 0.4
    argv = [
        "rsync",
        "--no-whole-file",
        "--ignore-times",
        *(["--inplace"] if inplace else []),
        "--",
        str(v.base),
        str(wk.path(e)),
    ]
    desc = f"{e.name} ({len(change)} bytes changed at {off}{', in place' if inplace else ''})"
    r = wk.do("rsync", [e], argv, 2 * v.size, desc)
    # In place, a block rsync copies within the file but cannot read is written as zeros.
    wk.outcome(e, r, v, zeros=inplace)
    return True


def fio(wk: Worker) -> bool:
    """fio random 4 KiB O_DIRECT writes over a region of a file, every block once, with a
    pattern, then read back and verified by fio itself, then fsync."""
    files = wk.files(exists=True, min_size=MiB)
    if not files:
        return False
    e = wk.rng.choice(files)
    off = wk.rng.randrange(0, e.known.size - 64 * 1024) // 4096 * 4096
    length = min(wk.rng.choice([64 << 10, MiB, 4 * MiB, 16 * MiB]), e.known.size - off)
    length = length // 4096 * 4096
    pattern = bytes(wk.rng.randrange(1, 256) for _ in range(4))
    argv = [
        "fio",
        "--name=soak",
        f"--filename={wk.path(e)}",
        "--rw=randwrite",
        "--bs=4k",
        "--ioengine=psync",
        "--direct=1",
        f"--offset={off}",
        f"--size={length}",
        "--allow_file_create=0",
        "--verify=pattern",
        f"--verify_pattern=0x{pattern.hex()}",
        "--do_verify=1",
        "--verify_state_save=0",  # else fio leaves a state file in the working directory
        "--end_fsync=1",
        "--output-format=terse",
    ]
    r = wk.do("fio", [e], argv, 4 * length, f"{e.name} {length} bytes at {off}")
    said = r.out.decode(errors="replace") + r.err
    if not r.ok and ("bad pattern" in said or "verify:" in said):
        wk.ctx.report.lose(
            length,
            f"fio read back from {e.name} other data than it wrote: {said[-300:]}",
            e.last_op,
            e.last_at,
            what="bad read",
        )
    wk.outcome(e, r, wk.ctx.model.compact(wk.w, e.known.patched(off, pattern * (length // 4))))
    return True


def _judge_read(wk: Worker, e: Entry, kept: Path) -> None:
    """A read that succeeded must have returned exactly what the model says ``e`` holds;
    what a bad one returned stays beside (``--keep`` keeps it)."""
    with open(kept, "rb") as f:
        bad = judge(f, [e.known]).lost
    if not bad:
        return
    with open(kept, "rb") as f:
        where = differences(f, e.known)
    kept.rename(kept.with_name(f"bad-{kept.name}-{e.name}"))
    wk.ctx.report.lose(
        e.known.size,
        f"a sequential read of {e.name} returned other data than it holds: {where} "
        f"(its last operations: {' / '.join(e.history)})",
        e.last_op,
        e.last_at,
        what="bad read",
    )


def readers(wk: Worker) -> bool:
    """Sequential readers at once (two on one file, one each on others): each must read
    exactly what the model says the file holds, or fail (a read refused under a fault)."""
    files = wk.files(exists=True, min_size=1)
    if not files:
        return False
    chosen = wk.rng.sample(files, min(len(files), wk.rng.randrange(1, 4)))
    jobs = [chosen[0], *chosen]
    results: list = [None] * len(jobs)

    def read(i: int) -> None:
        e = jobs[i]
        # Each keeps what it read (cp, not sha256sum), so a bad read says where it differs.
        argv = ["cp", "--sparse=never", "--", str(wk.path(e)), str(wk.ctx.tmp / f"read{wk.w}-{i}")]
        results[i] = wk.do("read", [e], argv, e.known.size, f"{e.name} ({e.known.size} bytes)")

    threads = [threading.Thread(target=read, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, (e, r) in enumerate(zip(jobs, results, strict=True)):
        kept = wk.ctx.tmp / f"read{wk.w}-{i}"
        if r is not None and r.ok:
            _judge_read(wk, e, kept)
        kept.unlink(missing_ok=True)
    return True
