"""A throwaway real Sheepdog cluster for the tests and the benchmark.

Sheepdog is in no package registry, so it is looked for, in this order: the directory
``$SHEEPDOG_PREFIX`` (with ``bin/dog``, ``bin/sheep``, ``bin/sheepdog-cluster``), then ``dog``
and ``sheep`` on PATH (``sheepdog-cluster`` beside that ``dog`` or on PATH), then a
``shared/sheepdog/dist`` folder beside the checkout. Where none is found the real-cluster
tests skip with one line saying why.

``sheepdog-cluster`` (shipped with that build) runs N sheep on loopback with the local
cluster driver, every store and log under one directory of ours, and knows two traps a
hand-written start would fall into: a killed node restarted while the others still list it
panics every node ("insert duplicate"), and the driver's lock directory is shared between
clusters unless each runs in its own mount namespace.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED_DIST = ROOT.parent / "shared" / "sheepdog" / "dist"


@dataclass(frozen=True)
class Dist:
    """Where a Sheepdog build is: its CLI, daemon, cluster script and C sheepfs (if any)."""

    dog: Path
    sheep: Path
    cluster: Path
    sheepfs_c: Path | None
    origin: str  # how it was found, for messages


def _complete(bindir: Path, origin: str) -> Dist | str:
    dog, sheep, cluster = bindir / "dog", bindir / "sheep", bindir / "sheepdog-cluster"
    missing = [p.name for p in (dog, sheep, cluster) if not os.access(p, os.X_OK)]
    if missing:
        return f"{origin}: {', '.join(missing)} missing in {bindir}"
    c = bindir / "sheepfs-c"
    return Dist(dog, sheep, cluster, c if os.access(c, os.X_OK) else None, origin)


def find_sheepdog() -> Dist | str:
    """The Sheepdog build to test against, or the reason there is none."""
    prefix = os.environ.get("SHEEPDOG_PREFIX")
    if prefix:
        return _complete(Path(prefix) / "bin", "$SHEEPDOG_PREFIX")
    dog, sheep = shutil.which("dog"), shutil.which("sheep")
    if dog and sheep:
        bindir = Path(dog).resolve().parent
        found = _complete(bindir, "PATH")
        if isinstance(found, Dist):
            return found
        script = shutil.which("sheepdog-cluster")
        if script:
            return Dist(Path(dog), Path(sheep), Path(script), None, "PATH")
        return "dog and sheep are on PATH but sheepdog-cluster is not"
    if SHARED_DIST.is_dir():
        return _complete(SHARED_DIST / "bin", "shared/sheepdog/dist")
    return "no Sheepdog found ($SHEEPDOG_PREFIX, dog and sheep on PATH, shared/sheepdog/dist)"


def free_port_range(count: int, start: int = 17400, end: int = 30000) -> int:
    """The first port P such that P..P+count-1 are all free on 127.0.0.1."""
    port = start + (os.getpid() % 200) * 10  # parallel runs rarely pick the same range
    for _ in range((end - start) // count):
        if port + count > end:
            port = start
        if all(_free(p) for p in range(port, port + count)):
            return port
        port += count
    raise RuntimeError("no free range of loopback ports")


def _free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class ClusterError(RuntimeError):
    pass


#: Script commands that start sheep processes.
_STARTS_SHEEP = ("start", "wipe", "start-node")
#: docs/SHEEPDOG.md F18: each sheep runs in a mount namespace of its own (``unshare -m``),
#: which copies every mount there is, our FUSE mounts too: a sheep started while sheepfs is
#: mounted would hold that mount alive, so ``fusermount3 -u`` never ends the daemon. So
#: the script runs in a private namespace from which the FUSE mounts are removed first.
_WITHOUT_FUSE = (
    "awk '$3 ~ /^fuse/ {print $2}' /proc/self/mounts | while read -r m; do"
    ' umount -l "$(printf %b "$m")"; done; exec "$0" "$@"'
)


class RealCluster:
    """N sheep on 127.0.0.1:port.., stores and logs in a directory of its own."""

    def __init__(self, dist: Dist, nodes: int = 3, copies: int = 2, port: int | None = None):
        self.dist = dist
        self.nodes = nodes
        self.copies = copies
        self.port = port or free_port_range(nodes)
        self.dir = Path(tempfile.mkdtemp(prefix="sheepfs-cluster-", dir="/var/tmp"))
        self.address = "127.0.0.1"

    def _script(self, *args: str, timeout: float = 120) -> str:
        argv = [str(self.dist.cluster), *args]
        if args[0] in _STARTS_SHEEP and shutil.which("unshare"):
            argv = ["unshare", "-m", "--propagation", "private", "sh", "-c", _WITHOUT_FUSE, *argv]
        p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        if p.returncode != 0:
            raise ClusterError(f"sheepdog-cluster {' '.join(args)}: {p.stderr.strip()}")
        return p.stdout

    def _layout(self) -> list[str]:
        return ["--nodes", str(self.nodes), "--port", str(self.port), "--copies", str(self.copies)]

    def start(self) -> None:
        self._script("start", str(self.dir), *self._layout())

    def stop(self) -> None:
        self._script("stop", str(self.dir))

    def wipe(self) -> None:
        """Stop, delete every store, start a freshly formatted cluster."""
        self._script("wipe", str(self.dir), *self._layout())

    def kill_node(self, k: int) -> None:
        self._script("kill-node", str(self.dir), str(k))

    def start_node(self, k: int) -> None:
        self._script("start-node", str(self.dir), str(k))

    def running(self) -> bool:
        """Whether every node is up and the cluster runs."""
        p = subprocess.run([str(self.dist.cluster), "status", str(self.dir)], capture_output=True)
        return p.returncode == 0

    def node_pids(self) -> list[int]:
        pids = []
        for k in range(self.nodes):
            f = self.dir / "run" / f"sheep{k}.pid"
            if f.exists() and f.read_text().strip().isdigit():
                pids.append(int(f.read_text()))
        return pids

    def logs(self, since: list[int] | None = None) -> str:
        """Every node's log (from the sizes ``since`` gave on), for failure messages and
        panic checks."""
        parts = []
        for k in range(self.nodes):
            log = self.dir / str(k) / "sheep.log"
            if log.exists():
                start = since[k] if since and k < len(since) else 0
                with open(log, "rb") as f:
                    f.seek(start)
                    parts.append(f"--- node {k}\n" + f.read().decode(errors="replace"))
        return "\n".join(parts)

    def log_sizes(self) -> list[int]:
        """Where each node's log ends now (for :meth:`logs`)."""
        sizes = []
        for k in range(self.nodes):
            log = self.dir / str(k) / "sheep.log"
            sizes.append(log.stat().st_size if log.exists() else 0)
        return sizes

    def remove(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    # -- dog ---------------------------------------------------------------------------------

    def dog_argv(self, *args: str | bytes) -> list[str | bytes]:
        """``dog`` with ``-a/-p`` after the two command words (``vdi create -p P -- NAME``)."""
        return [str(self.dist.dog), *args[:2], "-a", self.address, "-p", str(self.port), *args[2:]]

    def dog(self, *args: str | bytes, stdin: bytes = b"", check: bool = True, timeout: float = 120):
        p = subprocess.run(self.dog_argv(*args), input=stdin, capture_output=True, timeout=timeout)
        if check and p.returncode != 0:
            raise ClusterError(f"dog {args!r} failed ({p.returncode}): {p.stderr!r}")
        return p

    def drop_times(self, name: bytes) -> None:
        """Drop sheepfs's times of VDI ``name``, as sheepfs does before a delete: Sheepdog
        keeps attributes by name, and the next test's VDI of that name would find them."""
        for _ in range(9):  # each -d clears one slot that holds the key
            r = self.dog("vdi", "setattr", "-d", "--", name, "sheepfs.times", check=False)
            if r.returncode:
                return

    def delete_everything(self) -> None:
        """Delete every VDI and snapshot, so the next test starts from an empty cluster.

        A hyper volume cannot be deleted with dog (its zeroing step wipes the B-tree root and
        the sheep panics): where one is left, the whole cluster is wiped instead.
        """
        from sheepfs.backends.dog.listing import parse_vdi_list

        rows = parse_vdi_list(self.dog("vdi", "list", "-r").stdout)
        flat_max = {r.name: r.object_size << 20 for r in rows}
        if any(r.size > flat_max[r.name] for r in rows):
            self.wipe()
            return
        for r in rows:  # working VDIs and clones first, then the snapshots they leave
            if r.kind != "s":
                self.drop_times(r.name)
                self.dog("vdi", "delete", "--", r.name)
        for r in rows:
            if r.kind == "s":
                self.dog("vdi", "delete", "-s", str(r.snap_id), "--", r.name)
