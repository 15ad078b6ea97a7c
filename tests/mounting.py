"""Mount sheepfs for real in a separate process, and look at the backing store directly.

Tests use the mount from their own process (never from the daemon's event loop) and always
unmount in teardown: ``fusermount3 -u``, then ``-uz`` if the mount is busy.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.realcluster import RealCluster, find_sheepdog

ROOT = Path(__file__).resolve().parent.parent
FAKEDOG = ROOT / "tests" / "fakedog"


def is_mounted(path: Path) -> bool:
    """Whether ``path`` is a mount point in /proc/mounts (alive or not)."""
    with open("/proc/mounts") as f:
        return any(line.split()[1] == str(path) for line in f)


def fuse_unmount(path: Path) -> None:
    """Unmount ``path`` if it is mounted (also a dead mount): ``fusermount3 -u``, then
    ``-uz`` if the mount is busy."""
    if is_mounted(path):
        r = subprocess.run(["fusermount3", "-u", str(path)], capture_output=True)
        if r.returncode != 0:
            subprocess.run(["fusermount3", "-uz", str(path)], capture_output=True)


def fake_dog_env(store: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["SHEEPDOG_FAKE_STORE"] = str(store)
    env.setdefault("SHEEPDOG_FAKE_PYTHON", sys.executable)
    return env


@dataclass
class Store:
    """The backing store of one test: the fake dog, a real cluster or a --local directory."""

    #: "dog" (the fake dog), "real" (a throwaway real cluster through dog), "sheep" (the same
    #: cluster through the sheep backend) or "local"
    kind: str
    path: Path
    dog: str = str(FAKEDOG / "dog")
    cluster: RealCluster | None = None  # kinds "real" and "sheep"

    @property
    def speaks_dog(self) -> bool:
        return self.kind in ("dog", "real", "sheep")

    def env(self) -> dict[str, str]:
        return fake_dog_env(self.path) if self.kind == "dog" else dict(os.environ)

    def backend_args(self) -> list[str]:
        if self.cluster is not None:
            c = self.cluster
            where = ["-a", c.address, "-p", str(c.port)]
            if self.kind == "sheep":
                return ["--backend", "sheep", *where]
            return ["--backend", "dog", "--dog", str(c.dist.dog), *where]
        if self.kind == "dog":
            return ["--backend", "dog", "--dog", self.dog]
        return ["--local", str(self.path)]

    def dog_run(self, *args: str | bytes, stdin: bytes = b"", check: bool = True):
        """Run dog directly: the fake one, or the real one against the test's cluster."""
        assert self.speaks_dog
        argv = self.cluster.dog_argv(*args) if self.cluster is not None else [self.dog, *args]
        p = subprocess.run(argv, input=stdin, capture_output=True, env=self.env(), timeout=60)
        if check and p.returncode != 0:
            raise AssertionError(f"dog {args!r} failed ({p.returncode}): {p.stderr!r}")
        return p

    # -- looking at VDIs without the mount -------------------------------------------------

    def create(self, name: bytes, size: int, data: bytes = b"", offset: int = 0) -> None:
        if self.speaks_dog:
            self.dog_run("vdi", "create", "--", name, str(size))
            if data:
                self.dog_run("vdi", "write", "--", name, str(offset), str(len(data)), stdin=data)
            return
        import trio

        from sheepfs.backends.local import LocalBackend

        async def go() -> None:
            b = LocalBackend(self.path)
            await b.create(name, size)
            if data:
                await b.write(name, offset, data)

        trio.run(go)

    def vdis(self) -> dict[bytes, tuple[int, int]]:
        """name -> (size, used) of every file VDI."""
        if self.speaks_dog:
            from sheepfs.backends.dog.listing import parse_vdi_list

            out = self.dog_run("vdi", "list", "-r").stdout
            return {r.name: (r.size, r.used) for r in parse_vdi_list(out) if r.is_file}
        index = self.path / "vdis.json"
        if not index.exists():
            return {}
        out = {}
        for key, entry in json.loads(index.read_text()).items():
            p = self.path / entry["file"]
            st = p.stat()
            out[base64.b64decode(key)] = (st.st_size, st.st_blocks * 512)
        return out

    def snapshots(self) -> list[tuple[bytes, bytes]]:
        """(name, tag) of every snapshot."""
        if self.speaks_dog:
            from sheepfs.backends.dog.listing import parse_vdi_list

            out = self.dog_run("vdi", "list", "-r").stdout
            return [(r.name, r.tag) for r in parse_vdi_list(out) if r.kind == "s"]
        snaps = self.path / "snaps.json"
        if not snaps.exists():
            return []
        return [
            (base64.urlsafe_b64decode(k.split("/")[0]), k.split("/", 1)[1].encode())
            for k in json.loads(snaps.read_text())
        ]

    def read(self, name: bytes) -> bytes:
        if self.speaks_dog:
            return self.dog_run("vdi", "read", "--", name).stdout
        entry = json.loads((self.path / "vdis.json").read_text())[base64.b64encode(name).decode()]
        return (self.path / entry["file"]).read_bytes()

    def dog_calls(self) -> int:
        """Calls the fake dog has logged."""
        assert self.kind == "dog"
        log = self.path / "calls.log"
        return len(log.read_text().splitlines()) if log.exists() else 0


def make_store(kind: str, path: Path) -> Store:
    path.mkdir(parents=True, exist_ok=True)
    if kind == "dog":
        sys.path.insert(0, str(ROOT / "tests"))
        from fakedog import control

        control.init_store(path)
    return Store(kind, path)


@dataclass
class Mount:
    store: Store
    path: Path
    spool: Path
    log: Path
    proc: subprocess.Popen
    extra: list[str] = field(default_factory=list)

    def name(self, file_name: str | bytes) -> Path:
        return self.path / os.fsdecode(file_name)

    def unmount(self, timeout: float = 60) -> int:
        """Unmount as a user would and return the daemon's exit code."""
        if os.path.ismount(self.path):
            subprocess.run(["fusermount3", "-u", str(self.path)], capture_output=True)
        return self.proc.wait(timeout=timeout)

    def terminate(self, timeout: float = 60) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def crash(self, *open_fds: int) -> None:
        """SIGKILL the daemon, as a crash would, then close the test's descriptors on the
        dead mount (closing them may fail: nobody answers)."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)
        for fd in open_fds:
            try:
                os.close(fd)
            except OSError:
                pass

    def cleanup(self) -> None:
        fuse_unmount(self.path)  # also a dead mount, which ismount() cannot see
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def start_mount(store: Store, base: Path, *extra: str, wait: bool = True) -> Mount:
    mnt = base / "mnt"
    mnt.mkdir(parents=True, exist_ok=True)
    spool = base / "spool"
    log = base / "sheepfs.log"
    argv = [
        sys.executable, "-m", "sheepfs", str(mnt), "-f", *store.backend_args(),
        "--spool-dir", str(spool), "--debug", "--log-file", str(log), *extra,
    ]  # fmt: skip
    proc = subprocess.Popen(
        argv, env=store.env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    m = Mount(store, mnt, spool, log, proc, list(extra))
    if wait:
        deadline = time.monotonic() + 20
        while not os.path.ismount(mnt):
            if proc.poll() is not None:
                err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                raise AssertionError(
                    f"sheepfs exited with {proc.returncode}: {err}\n{m.log_text()}"
                )
            if time.monotonic() > deadline:
                m.cleanup()
                raise AssertionError(f"sheepfs did not mount within 20 s\n{m.log_text()}")
            time.sleep(0.02)
    return m


def wait_for(
    predicate: Callable[[], object],
    what: str,
    timeout: float = 30,
    interval: float = 0.05,
    detail: Callable[[], str] | None = None,
) -> None:
    """Poll ``predicate`` every ``interval`` seconds until it is true; fail after ``timeout``
    seconds, saying what was awaited and, if given, what ``detail()`` tells then (the
    daemon's log, say)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            more = f"\n{detail()}" if detail is not None else ""
            raise AssertionError(f"timed out waiting for {what}{more}")
        time.sleep(interval)


# -- pytest fixtures (this module is loaded as a plugin: see pyproject's addopts) ----------


#: The real-cluster parameter of a store fixture: marked ``real`` (``-m real`` runs just
#: those, ``-m "not real"`` leaves them out).
REAL = pytest.param("real", marks=pytest.mark.real, id="real")
#: The same real cluster through the sheep backend (marked ``real`` and ``sheep``).
SHEEP = pytest.param("sheep", marks=[pytest.mark.real, pytest.mark.sheep], id="sheep")


def store_kinds() -> list:
    """Backends the mount tests run on: the fake dog, --local and a real cluster."""
    real = [REAL, SHEEP]
    return ["dog", "local", *real] if (FAKEDOG / "dog").exists() else ["local", *real]


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "real: needs a real Sheepdog cluster (skips without one)")
    config.addinivalue_line("markers", "sheep: runs through the sheep (wire protocol) backend")


@pytest.fixture(scope="session")
def real_cluster():
    """One throwaway 3-node cluster (2 copies) for the whole run, removed at the end."""
    dist = find_sheepdog()
    why = None
    if isinstance(dist, str):
        why = f"no real Sheepdog: {dist}"
    elif os.geteuid() != 0:
        why = "a real Sheepdog cluster needs root (dog cluster format refuses others)"
    if why is not None:
        if os.environ.get("SHEEPFS_REQUIRE_REAL"):  # CI: these tests must run
            pytest.fail(why)
        pytest.skip(why)
    cluster = RealCluster(dist)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.remove()


#: What a sheep's log says when a request crashed it (a panic or a fatal signal).
CRASH_WORDS = (
    "PANIC",
    "panic:",
    "exits unexpectedly",
    "Segmentation fault",
    "SIGSEGV",
    "signal 11",
)


@pytest.fixture
def real_store(request, tmp_path) -> Store:
    """The session's real cluster, emptied for this test; afterwards every sheep must
    still run (a test that crashed one fails, and the cluster is wiped for the next)."""
    cluster: RealCluster = request.getfixturevalue("real_cluster")
    if not cluster.running():
        cluster.wipe()
    cluster.delete_everything()
    seen = cluster.log_sizes()
    yield Store("real", tmp_path / "store", cluster=cluster)
    logs = cluster.logs(since=seen)
    crashed = [w for w in CRASH_WORDS if w in logs]
    if not cluster.running() or crashed:
        cluster.wipe()
        why = f" (its log says {', '.join(crashed)})" if crashed else ""
        pytest.fail(f"a sheep died or crashed during the test{why}:\n{logs[-3000:]}")


def store_for(request, tmp_path) -> Store:
    """The store a ``request.param`` of ``store_kinds()`` names."""
    if request.param in ("real", "sheep"):
        store = request.getfixturevalue("real_store")
        store.kind = request.param  # the same cluster, through dog or the sheep backend
        return store
    return make_store(request.param, tmp_path / "store")


@pytest.fixture(params=store_kinds())
def any_store(request, tmp_path) -> Store:
    return store_for(request, tmp_path)


@pytest.fixture(params=[k for k in store_kinds() if k in ("dog", "local")])
def fast_mounted(request, tmp_path):
    """A mount of the fake dog or the local backend (no real cluster: cheap requests)."""
    with mount_of(store_for(request, tmp_path), tmp_path) as m:
        yield m


@pytest.fixture(params=[REAL, SHEEP])
def real_mounted(request, tmp_path):
    """A mount of the real cluster, through dog and through the sheep backend."""
    with mount_of(store_for(request, tmp_path), tmp_path) as m:
        yield m


@pytest.fixture(params=["dog", REAL, SHEEP])
def dog_like_store(request, tmp_path) -> Store:
    """The fake dog, then a real cluster (through dog, and through the sheep backend): for
    behaviour all must show alike."""
    return store_for(request, tmp_path)


@pytest.fixture
def dog_store(tmp_path) -> Store:
    """A fake dog cluster (for the tests of its fault switches)."""
    return make_store("dog", tmp_path / "store")


@contextmanager
def small_spool(base: Path, size: int) -> Iterator[Path]:
    """``base``/spool (where :func:`start_mount` puts it) on a tmpfs of ``size`` bytes, so
    the spool disk fills up; lazily unmounted afterwards."""
    spool = base / "spool"
    spool.mkdir(mode=0o700)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(spool)],
                   check=True)  # fmt: skip
    try:
        yield spool
    finally:
        subprocess.run(["umount", "-l", str(spool)], check=False)


@contextmanager
def mount_of(store: Store, base: Path, *extra: str) -> Iterator[Mount]:
    """A mount of ``store``; unmounted (and its daemon reaped) afterwards, whatever happens."""
    m = start_mount(store, base, *extra)
    try:
        yield m
    finally:
        m.cleanup()


@pytest.fixture
def mounted(any_store, tmp_path):
    """A mount of ``any_store`` (the fake dog, the local backend, a real cluster)."""
    with mount_of(any_store, tmp_path) as m:
        yield m


@pytest.fixture
def mnt(store, tmp_path):
    """A mount of the ``store`` fixture of the test's module."""
    with mount_of(store, tmp_path) as m:
        yield m
