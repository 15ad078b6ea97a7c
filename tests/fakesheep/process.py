"""A fake sheep cluster in a process of its own, for tests that mount sheepfs elsewhere::

with FakeSheepProcess(nodes=3) as fake:
    port = fake.ports[0]
    fake.control.inject("EIO", op="WRITE_OBJ")
    ...
    assert fake.control.events() == []
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.realcluster import free_port_range

from .remote import ControlClient, RemoteError

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[2]


def free_port_base(count: int) -> int:
    """The first P such that P..P+count-1 are free on 127.0.0.1 (above the real
    clusters' ports)."""
    return free_port_range(count, start=20000)


class FakeSheepProcess:
    """``python -m tests.fakesheep`` with a control socket; started on enter, stopped on exit."""

    def __init__(
        self,
        nodes: int = 3,
        port_base: int | None = None,
        state: Path | None = None,
        extra: list[str] | None = None,
        timeout: float = 15.0,
    ) -> None:
        self.nodes = nodes
        self.port_base = port_base or free_port_base(nodes)
        self.state = state
        self.extra = extra or []
        self.timeout = timeout
        self._dir = tempfile.TemporaryDirectory(prefix="fakesheep-")
        self.control_path = Path(self._dir.name) / "control.sock"
        self.log_path = Path(self._dir.name) / "fakesheep.log"
        self.control = ControlClient(self.control_path)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def ports(self) -> list[int]:
        return [self.port_base + k for k in range(self.nodes)]

    def start(self) -> None:
        argv = [
            sys.executable,
            "-m",
            "tests.fakesheep",
            "--nodes",
            str(self.nodes),
            "--port-base",
            str(self.port_base),
            "--control",
            str(self.control_path),
        ]
        if self.state is not None:
            argv += ["--state", str(self.state)]
        with open(self.log_path, "ab") as logf:
            self.proc = subprocess.Popen(argv + self.extra, cwd=ROOT, stdout=logf, stderr=logf)
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"fake sheep exited: {self.log_path.read_text()[-2000:]}")
            try:
                if self.control.ping() == "pong":
                    return
            except (OSError, RemoteError):
                time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"fake sheep did not start in {self.timeout} s")

    def stop(self) -> None:
        """SIGTERM (the state is saved), then SIGKILL if it lingers."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(self.timeout)
        except subprocess.TimeoutExpired:
            log.warning("fake sheep %d ignored SIGTERM; killing it", self.proc.pid)
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> FakeSheepProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self._dir.cleanup()
