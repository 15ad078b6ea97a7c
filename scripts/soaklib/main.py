"""The soak from start to end: the cluster, the proxy, the spool disk and the mount; the
workers, the faults, the spot checks and the watch on every process for ``--duration``;
then everything settled, unmounted, read back and judged; and always, whatever happens,
everything it made removed."""

from __future__ import annotations

import contextlib
import faulthandler
import logging
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchlib import raise_on_sigterm, signals_deferred

from . import ops, ops_more
from .checker import Checker
from .daemon import Daemon, SpoolDisk
from .ext4 import Ext4
from .faults import Injector, kinds_for
from .model import Model
from .options import Config, parse
from .proxy import ProxyProcess
from .report import Report
from .runner import Runner
from .target import Target, Unavailable, choose

log = logging.getLogger("soak")

OPS = [
    ("cp_new", 20, ops.cp_new),
    ("dd", 20, ops.dd),
    ("cp_over", 8, ops.cp_over),
    ("truncate_up", 5, ops.truncate_up),
    ("rename", 8, ops.rename),
    ("rm", 6, ops.rm),
    ("rsync", 6, ops_more.rsync),
    ("fio", 6, ops_more.fio),
    ("read", 12, ops_more.readers),
]


def mount_args(cfg: Config, target: Target, proxy: ProxyProcess | None) -> list[str]:
    """sheepfs's options: through the proxy to every sheep (sheep backend), to one sheep
    (dog backend), or the fake dog."""
    args = ["--timeout", f"{cfg.timeout:g}", *(["--debug"] if cfg.debug else [])]
    if proxy is None:
        return ["--backend", "dog", "--dog", target.dog, *args]
    if cfg.backend == "sheep":
        return ["--backend", "sheep", "-a", ",".join(f"127.0.0.1:{p}" for p in proxy.ports), *args]
    return [
        "--backend",
        "dog",
        "--dog",
        str(target.dist.dog),
        "-a",
        "127.0.0.1",
        "-p",
        str(proxy.ports[0]),
        *args,
    ]


def watch(
    stop: threading.Event, faults: Injector, daemon: Daemon, target: Target, report: Report
) -> None:
    """Every 2 s between faults: sheepfs and every sheep must be running."""
    seen: set[str] = set()
    while not stop.wait(2):
        if not faults.busy.acquire(blocking=False):
            continue
        try:
            if not daemon.alive():
                report.crash(
                    f"sheepfs died (exit {daemon.proc.returncode}): {daemon.log_text()[-600:]}"
                )
                daemon.cleanup()
                daemon.start()
            for p in set(target.problems(faults.down)) - seen:
                seen.add(p)
                report.crash(p)
        finally:
            faults.busy.release()


def soak(cfg: Config, report: Report, work: Path, stack: contextlib.ExitStack) -> list[str]:
    """The run; returns the fault kinds it could inject."""
    target = choose(cfg.backend, cfg.fake)
    stack.callback(target.remove, work / "logs" if cfg.keep else None)
    backend = "dog" if target.fake else cfg.backend
    print(
        f"soak: seed {cfg.seed}, {cfg.duration:g} s, {backend} backend, {target.label}", flush=True
    )
    proxy = None
    if not target.fake:
        proxy = ProxyProcess(target.addresses if backend == "sheep" else target.addresses[:1])
        stack.callback(proxy.close)
    spool = SpoolDisk(work, cfg.spool_size)
    stack.callback(spool.remove)
    (work / "logs").mkdir()
    daemon = Daemon(
        work / "mnt", spool.spool, work / "logs", mount_args(cfg, target, proxy), target.env
    )
    stack.callback(daemon.remove)
    runner = Runner(report, env=target.env)
    stack.callback(runner.kill_all)
    daemon.start()
    model = Model(work / "shadow", cfg.workers, 6, f"soak{cfg.seed}")
    faults = Injector(cfg, random.Random(cfg.seed), target, daemon, spool, proxy, report)
    (work / "tmp").mkdir()
    stop = threading.Event()
    ctx = ops.Ctx(cfg, model, runner, report, daemon.mnt, work / "tmp", None, faults.calm, stop)
    checker = Checker(ctx, target)
    ctx.checker = checker
    ext4 = Ext4(f"soak{cfg.seed}-ext4")
    run_for(
        cfg.duration,
        ctx,
        faults,
        checker,
        ext4,
        threading.Thread(target=watch, args=(stop, faults, daemon, target, report), daemon=True),
    )
    finish(cfg, report, ctx, checker, daemon, target, ext4, faults)
    return kinds_for(target)


def run_for(
    seconds: float,
    ctx: ops.Ctx,
    faults: Injector,
    checker: Checker,
    ext4: Ext4,
    watcher: threading.Thread,
) -> None:
    """The workers, the faults, the spot checks and the watch for ``seconds``; then the
    faults end (the last one undone), the workers finish what they do, the rest stops."""
    workers = [
        ops.Worker(w, ctx, OPS + ([("ext4", 5, ext4.op)] if w == 0 else []))
        for w in range(ctx.cfg.workers)
    ]
    side_stop = threading.Event()
    checks = threading.Thread(target=checker.loop, args=(side_stop, 5), daemon=True)
    for t in [faults, *workers, checks, watcher]:
        t.start()
    time.sleep(seconds)
    log.info("the end: stopping faults and workers")
    faults.stop.set()
    faults.join()
    ctx.stop.set()
    for t in workers:
        t.join()
    side_stop.set()
    checks.join()
    watcher.join()


def finish(
    cfg: Config,
    report: Report,
    ctx: ops.Ctx,
    checker: Checker,
    daemon: Daemon,
    target: Target,
    ext4: Ext4,
    faults: Injector,
) -> None:
    """Settle, unmount, read every file back, look at every log."""
    faults.unwedge("at the end")
    left = checker.settle_all()
    if left:
        report.note(f"{left} file(s) could not be settled before the unmount")
    rc = daemon.unmount(cfg.deadline(cfg.budget))
    if rc is None:
        report.hang("the final unmount", report.now(), "sheepfs did not exit")
    elif rc != 0:
        report.note(f"sheepfs exited {rc} at the final unmount: {daemon.log_text()[-300:]}")
    checker.final()
    ext4.final(ctx.runner, report, target, ctx.tmp)
    with contextlib.suppress(Unavailable):
        snaps = sum(row.startswith("s ") for row in target.names())
        report.note(
            f"{snaps} snapshot(s) left in the cluster (old data set aside by operations "
            "a fault cut short, never dropped: space only)"
        )
    for line in (daemon.crashes() + target.problems(set()) + target.log_crashes())[:20]:
        report.crash(line)


def main(argv: list[str]) -> int:
    cfg = parse(argv)
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # where is it stuck? kill -USR1
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s"
    )
    raise_on_sigterm()
    report = Report(cfg.seed, cfg.replay())
    work = Path(tempfile.mkdtemp(prefix="sheepfs-soak-", dir="/var/tmp"))
    kinds: list[str] = []
    interrupted = False
    with contextlib.ExitStack() as stack:
        try:
            kinds = soak(cfg, report, work, stack)
        except KeyboardInterrupt:
            interrupted = True
            report.note("interrupted: what was found so far")
        finally:
            with signals_deferred():
                stack.close()
                if cfg.keep:
                    print(f"soak: work directory kept: {work}")
                else:
                    shutil.rmtree(work, ignore_errors=True)
    for line in report.lines(kinds):
        print(line, flush=True)
    return 130 if interrupted else report.exit_code()
