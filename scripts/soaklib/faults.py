"""The faults, injected one at a time at random moments while the workload runs: every
kind once per round, in an order the seed shuffles, so a long run has them all many times.

While a fault and the recovery after it last, ``calm`` is clear: checks against the cluster
and the settling of unsettled files wait for calm; the workload does not.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable

from .daemon import Daemon, SpoolDisk
from .proxy import ProxyProcess
from .report import FaultEvent, Report
from .target import FakeTarget, RealTarget, Target

log = logging.getLogger("soak")

KINDS = ["node_kill", "cluster_restart", "sheepfs_kill", "sheepfs_term", "spool_full", "sheep_hang"]


def kinds_for(target: Target) -> list[str]:
    """The fake dog has no nodes to kill."""
    return [k for k in KINDS if k != "node_kill"] if target.fake else list(KINDS)


#: What a sheep says when the cluster itself cannot take a request now: unreachable, busy
#: recovering, or a VDI left broken by a cut-off snapshot (its inode "No object found").
CLUSTER_SAYS = ("No object found", "I/O error", "Waiting for", "System is shutting down",
                "failed to read a response", "Connection refused", "did not answer within",
                "Network error", "Failed to get node list")  # fmt: skip
#: sheepfs's own confusion, never the cluster's: these make an exit 1 a crash.
OWN_MISTAKES = ("exists already", "No VDI found", "Traceback", "no transition")


def cluster_refused(log: str) -> str:
    """Why SIGTERM's save failed, if only because the cluster refused it: the errors of
    the last shutdown (after "saving pending data"), each one the cluster's; else ""."""
    tail = log.rsplit("saving pending data", 1)[-1] if "saving pending data" in log else ""
    errors = [line for line in tail.splitlines() if " ERROR sheepfs.core.openfiles: " in line]
    if not errors or any(w in line for line in errors for w in OWN_MISTAKES):
        return ""
    if not all(any(w in line for w in CLUSTER_SAYS) for line in errors):
        return ""
    return f"{len(errors)} save(s), data kept in the spool: {errors[-1][-300:]}"


class Injector(threading.Thread):
    def __init__(
        self,
        cfg,
        rng: random.Random,
        target: Target,
        daemon: Daemon,
        spool: SpoolDisk,
        proxy: ProxyProcess | None,
        report: Report,
    ) -> None:
        super().__init__(name="faults", daemon=True)
        self.cfg, self.rng, self.target, self.daemon = cfg, rng, target, daemon
        self.spool, self.proxy, self.report = spool, proxy, report
        self.kinds = kinds_for(target)
        self.calm = threading.Event()
        self.calm.set()
        self.stop = threading.Event()
        self.busy = threading.Lock()  # held while a fault and its recovery last
        self.down: set[int] = set()

    def pause(self, lo: float, hi: float) -> None:
        time.sleep(self.rng.uniform(lo, hi))

    def run(self) -> None:
        order: list[str] = []
        while not self.stop.wait(self.rng.uniform(0.5, 1.5) * self.cfg.fault_gap):
            if not order:
                order = self.rng.sample(self.kinds, len(self.kinds))
            kind = order.pop()
            with self.busy:
                self.calm.clear()
                ev = self.report.fault_started(kind)
                log.info("fault: %s", kind)
                try:
                    getattr(self, kind)(ev)
                except Exception as e:  # noqa: BLE001 - a fault that cannot be undone
                    log.exception("fault %s", kind)
                    self.report.crash(f"{kind}: {e}", "-")
                finally:
                    self.report.fault_ended(ev)
                self.recover(kind)
                self.calm.set()

    # -- the faults ----------------------------------------------------------------------

    def node_kill(self, ev: FaultEvent) -> None:
        """SIGKILL one sheep, restart it a few seconds later. The dog backend's only
        address (node 0) is spared: losing it is the cluster restart, below."""
        assert isinstance(self.target, RealTarget)
        first = 0 if self.cfg.backend == "sheep" else 1
        k = self.rng.randrange(first, self.target.nodes)
        ev.detail = f"node {k}"
        self.down.add(k)
        self.target.kill_node(k)
        self.pause(3, 10)
        self.target.start_node(k)
        self.down.discard(k)

    def cluster_restart(self, ev: FaultEvent) -> None:
        if isinstance(self.target, FakeTarget):
            self.target.set(reachable=False)
            self.pause(3, 10)
            self.target.set(reachable=True)
            return
        self.restart_cluster(lambda: self.pause(3, 10))

    def sheepfs_kill(self, ev: FaultEvent) -> None:
        """SIGKILL, at a moment with data staged: best while a replace or a rename over a
        file has the old data set aside, else while one is staged, else any new file."""
        why = (
            self.moment(self.spool.setting_aside, 15)
            or self.moment(self.spool.replacing, 5)
            or self.moment(self.staged, 5)
        )
        ev.detail = why or "nothing staged"
        self.daemon.kill()
        left = self.spool.staged()
        self.daemon.start()
        waiting = self.daemon.wait_recovered(left, 30 * self.cfg.timeout)
        if waiting:
            self.report.note(f"spool recovery did not finish: {len(waiting)} file(s) left")

    def sheepfs_term(self, ev: FaultEvent) -> None:
        ev.detail = self.moment(self.staged, 20) or "nothing staged"
        rc = self.daemon.term(self.cfg.deadline(self.cfg.budget))
        if rc is None:
            self.report.hang("SIGTERM of sheepfs", ev.start, "sheepfs did not exit")
        elif rc != 0 and (refused := cluster_refused(self.daemon.log_text())):
            self.report.note(f"sheepfs exited {rc} after SIGTERM: the cluster refused {refused}")
        elif rc != 0:
            self.report.crash(
                f"sheepfs exited {rc} after SIGTERM (all pending data must be "
                f"saved, and the exit code 0): {self.daemon.log_text()[-600:]}"
            )
        self.daemon.start()

    def spool_full(self, ev: FaultEvent) -> None:
        leave = self.rng.choice([0, 64 << 10, 1 << 20])
        ev.detail = f"{self.spool.fill(leave) >> 20} MiB of ballast, {leave} bytes left"
        try:
            self.pause(3, 8)
        finally:
            self.spool.drain()

    def sheep_hang(self, ev: FaultEvent) -> None:
        """The sheep in use stops answering for longer than sheepfs's timeout."""
        hold = self.rng.uniform(1.5, 2.5) * self.cfg.timeout
        if isinstance(self.target, FakeTarget):
            ev.detail = f"every dog call hangs for {hold:.0f} s"
            self.target.set(hang=True)
            try:
                time.sleep(hold)
            finally:
                self.target.set(hang=False)
            return
        assert self.proxy is not None
        stats = self.proxy.stats()
        k = max(range(len(stats)), key=lambda i: (stats[i][1] > 0, stats[i][0]))
        ev.detail = f"sheep {k} holds its replies for {hold:.0f} s"
        self.proxy.hold(k)
        try:
            time.sleep(hold)
        finally:
            self.proxy.release(k)

    # -- helpers -------------------------------------------------------------------------

    def staged(self) -> bool:
        return any(p.stat().st_size for p in self.spool.staged() if p.exists())

    def moment(self, ready: Callable[[], bool], wait: float) -> str | None:
        """Wait up to ``wait`` s for ``ready()``; what was waited for, None if it did not come."""
        end = time.monotonic() + wait
        while time.monotonic() < end:
            try:
                if ready():
                    return f"at a moment when {ready.__name__}"
            except OSError:
                pass  # a spool file went while we looked
            time.sleep(0.1)
        return None

    def recover(self, kind: str) -> None:
        """Wait until the cluster runs and sheepfs is mounted again."""
        end = time.monotonic() + 30 * self.cfg.timeout
        while isinstance(self.target, RealTarget) and not self.target.running():
            if time.monotonic() > end:
                self.report.crash(f"the cluster does not run again after {kind}")
                break
            time.sleep(1)
        self.unwedge(f"after {kind}")
        if not self.daemon.alive():
            self.report.crash(
                f"sheepfs is not running after {kind} (exit {self.daemon.proc.returncode}): "
                f"{self.daemon.log_text()[-600:]}"
            )
            self.daemon.cleanup()
            self.daemon.start()

    def unwedge(self, when: str) -> None:
        """A cluster whose own operations hang on every node for good (docs/SHEEPDOG.md
        F26, Sheepdog's local cluster driver, not sheepfs) is restarted, as the fault of
        that name does: only that clears it, and nothing could be checked meanwhile."""
        if not isinstance(self.target, RealTarget) or not self.target.wedged():
            return
        log.warning("the cluster's operations hang on every node %s: restarting it", when)
        self.report.note(
            f"the cluster's own operations hung on every node {when} (Sheepdog's local "
            "cluster driver, docs/SHEEPDOG.md F26): it was restarted"
        )
        self.restart_cluster(lambda: None)

    def restart_cluster(self, between: Callable[[], None]) -> None:
        """Stop every node, ``between()``, start them again; the nodes count as down."""
        assert isinstance(self.target, RealTarget)
        self.down.update(range(self.target.nodes))
        self.target.stop()
        between()
        self.target.start()
        self.down.clear()
