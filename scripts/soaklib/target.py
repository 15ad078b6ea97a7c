"""Where the soak runs: a throwaway real cluster (found as the test suite finds Sheepdog,
tests/realcluster.py), else the fake dog (tests/fakedog), saying so. Both offer the same
faults where they can, and reading a VDI back with ``dog vdi read``."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import BinaryIO

log = logging.getLogger("soak")

#: What a log says when its process crashed: sheep (C) and sheepfs (Python).
CRASH_WORDS = (
    "PANIC",
    "panic:",
    "exits unexpectedly",
    "Segmentation fault",
    "SIGSEGV",
    "signal 11",
    "Traceback (most recent call last)",
    "Fatal Python error",
)


#: Seconds a ``dog vdi read`` of a whole VDI may take (the soak's files are at most a few
#: hundred MiB; a loaded 2-core machine reads 20 MiB/s or more).
READ_DEADLINE = 300.0
#: A lookup of a name no one makes (``wedged``), and how long it may take.
PROBE, WEDGED_AFTER = "soak-probe-of-the-cluster-driver", 15.0


class Unavailable(Exception):
    """The cluster could not be read just now (it is down, or the read failed)."""


class VdiStream:
    """The bytes of one ``dog vdi read``; :meth:`finish` says whether it ended well."""

    def __init__(self, proc: subprocess.Popen, first: bytes, timer: threading.Timer) -> None:
        self.proc, self.first, self.timer = proc, first, timer

    def read(self, n: int) -> bytes:
        if self.first:
            out, self.first = self.first, b""
            return out
        return b"" if self.proc.stdout.closed else self.proc.stdout.read(n)

    def finish(self) -> None:
        self.timer.cancel()
        self.proc.stdout.close()
        err = self.proc.stderr.read().decode(errors="replace").strip()
        if self.proc.wait(60) != 0:
            raise Unavailable(f"dog vdi read failed ({self.proc.returncode}): {err[-300:]}")


class Target:
    """The cluster under test; subclasses say how to fault it."""

    label = ""
    fake = False
    nodes = 0
    env: dict[str, str] | None = None
    addresses: list[tuple[str, int]] = []

    def dog_argv(self, *args: str) -> list[str]:
        raise NotImplementedError

    def open_vdi(self, name: str) -> BinaryIO | VdiStream | None:
        """A stream of the VDI's bytes, None if there is no such VDI."""
        argv = self.dog_argv("vdi", "read", "--", name)
        p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=self.env)
        # A read never blocks the soak, from its first byte on: a sheep can keep a read
        # waiting for ever (one whose recovery retries an object it cannot recover).
        timer = threading.Timer(READ_DEADLINE, p.kill)
        timer.daemon = True
        timer.start()
        first = p.stdout.read(1 << 16)
        if first:
            return VdiStream(p, first, timer)
        err = p.stderr.read().decode(errors="replace")
        p.stdout.close()
        if p.wait(60) == 0:
            return VdiStream(p, b"", timer)  # an empty VDI
        timer.cancel()
        if "No VDI found" in err:
            return None
        raise Unavailable(f"dog vdi read {name}: {err.strip()[-300:]}")

    def names(self) -> list[str]:
        """Every VDI and snapshot row of ``dog vdi list -r`` as (kind name tag)."""
        p = subprocess.run(
            self.dog_argv("vdi", "list", "-r"), capture_output=True, env=self.env, timeout=120
        )
        if p.returncode != 0:
            raise Unavailable(p.stderr.decode(errors="replace").strip())
        return p.stdout.decode(errors="replace").splitlines()

    def problems(self, down: set[int]) -> list[str]:
        """Sheep that are not running, but for nodes ``down`` on purpose."""
        return []

    def log_crashes(self) -> list[str]:
        """What the sheep logs say of crashes since the soak began."""
        return []

    def remove(self, keep_logs: Path | None = None) -> None:
        """Remove the cluster; first copy its nodes' logs into ``keep_logs`` if given."""


class RealTarget(Target):
    def __init__(self, dist, nodes: int = 3, copies: int = 2) -> None:
        from realcluster import RealCluster

        self.cluster = RealCluster(dist, nodes=nodes, copies=copies)
        self.nodes = nodes
        self.dist = dist
        log.info("starting a throwaway cluster on 127.0.0.1:%d", self.cluster.port)
        self.cluster.start()
        self.addresses = [(self.cluster.address, self.cluster.port + k) for k in range(nodes)]
        self.seen = self.cluster.log_sizes()
        self.label = f"real cluster ({nodes} nodes, {copies} copies, throwaway, {dist.origin})"

    def dog_argv(self, *args: str) -> list[str]:
        return [str(a) for a in self.cluster.dog_argv(*args)]

    def kill_node(self, k: int) -> None:
        self.cluster.kill_node(k)

    def start_node(self, k: int) -> None:
        self.cluster.start_node(k)

    def stop(self) -> None:
        self.cluster.stop()

    def start(self) -> None:
        self.cluster.start()

    def running(self) -> bool:
        return self.cluster.running()

    def wedged(self) -> bool:
        """Whether the cluster's own operations hang on every node while its nodes answer:
        Sheepdog's local cluster driver stuck behind an event no node will end
        (docs/SHEEPDOG.md F26). Probed with a lookup of a name no one makes, which says
        "No VDI found" at once while the driver's queue moves."""
        for address, port in self.addresses:
            argv = [str(self.dist.dog), "vdi", "read", "-a", address, "-p", str(port), "--",
                    PROBE, "0", "1"]  # fmt: skip
            try:
                subprocess.run(argv, capture_output=True, timeout=WEDGED_AFTER)
                return False
            except subprocess.TimeoutExpired:
                pass
        argv = self.dog_argv("node", "list")
        try:
            return subprocess.run(argv, capture_output=True, timeout=WEDGED_AFTER).returncode == 0
        except subprocess.TimeoutExpired:
            return False  # the nodes do not answer at all: not that

    def problems(self, down: set[int]) -> list[str]:
        pids = self.cluster.node_pids()
        return [
            f"sheep {k} (pid {pid}) is not running"
            for k, pid in enumerate(pids)
            if k not in down and not os.path.exists(f"/proc/{pid}")
        ]

    def log_crashes(self) -> list[str]:
        found, node = [], "?"
        for line in self.cluster.logs(since=self.seen).splitlines():
            if line.startswith("--- node "):
                node = line.removeprefix("--- node ")
            elif any(w in line for w in CRASH_WORDS):
                found.append(f"sheep {node}: {line.strip()}")
        return found

    def remove(self, keep_logs: Path | None = None) -> None:
        if keep_logs is not None:  # --keep: what the sheep said, for the failure's story
            keep_logs.mkdir(parents=True, exist_ok=True)
            for k in range(self.nodes):
                log_file = self.cluster.dir / str(k) / "sheep.log"
                if log_file.exists():
                    shutil.copyfile(log_file, keep_logs / f"sheep{k}.log")
            with contextlib.suppress(Exception):  # and its stores, to start it again and look
                self.cluster.stop()
                shutil.move(self.cluster.dir, keep_logs.parent / "cluster")
                return
        self.cluster.remove()


class FakeTarget(Target):
    """The fake dog: no nodes to kill, no sheep to proxy; the whole cluster can go away
    (its ``reachable`` switch) or hang (its ``hang`` switch)."""

    fake = True

    def __init__(self, why: str) -> None:
        from fakedog import control

        self.control = control
        self.dir = Path(tempfile.mkdtemp(prefix="sheepfs-soak-fake-", dir="/var/tmp"))
        self.store = control.init_store(self.dir / "store")
        self.env = control.env(self.store)
        self.dog = control.dog_path()
        self.label = f"fake dog ({why})"

    def dog_argv(self, *args: str) -> list[str]:
        return [self.dog, *args]

    def set(self, **switches: bool) -> None:
        self.control.set_config(self.store, **switches)

    def remove(self, keep_logs: Path | None = None) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def choose(backend: str, fake: bool) -> Target:
    """A throwaway real cluster if Sheepdog is found (and we are root), else the fake dog;
    with SHEEPFS_REQUIRE_REAL set (CI), no real cluster is an error."""
    from realcluster import Dist, find_sheepdog

    dist = find_sheepdog()
    why = "--fake" if fake else None
    if why is None and not isinstance(dist, Dist):
        why = f"no Sheepdog found: {dist}"
    if why is None and os.geteuid() != 0:
        why = "a real cluster needs root"
    if why is None:
        return RealTarget(dist)
    if os.environ.get("SHEEPFS_REQUIRE_REAL") and not fake:
        raise SystemExit(f"soak: SHEEPFS_REQUIRE_REAL is set but {why}")
    if backend == "sheep":
        why += "; the sheep backend needs a real cluster, so the dog backend runs"
    return FakeTarget(why)
