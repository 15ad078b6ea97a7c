"""systemd's notification protocol: the sender itself (paths, abstract sockets, a listener
gone), READY=1 only once the mount answers, and STOPPING=1 with STATUS= lines naming the
pending upload while a mount stops; nothing READY when the mount fails. A datagram
socket bound in the test's directory plays systemd (``NOTIFY_SOCKET``)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import trio

from sheepfs.notify import ENV, Notifier, socket_address
from sheepfs.service import Service
from tests.fakedog import control
from tests.mounting import ROOT, start_mount, wait_for

pytestmark = pytest.mark.timeout(120)
MiB = 1 << 20


class Listener:
    """What systemd does with NOTIFY_SOCKET: receive datagrams, each a set of fields."""

    def __init__(self, address: str | bytes) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)

    def next(self, timeout: float = 20) -> dict[str, str]:
        self.sock.settimeout(timeout)
        data = self.sock.recv(4096).decode()
        return dict(line.split("=", 1) for line in data.splitlines() if line)

    def pending(self) -> list[dict[str, str]]:
        """The messages already queued (without waiting)."""
        out = []
        while True:
            try:
                self.sock.setblocking(False)
                data = self.sock.recv(4096).decode()
            except BlockingIOError:
                return out
            out.append(dict(line.split("=", 1) for line in data.splitlines() if line))

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def listener(tmp_path):
    lst = Listener(str(tmp_path / "notify.sock"))
    yield lst
    lst.close()


# -- the sender ------------------------------------------------------------------------------


def test_messages_reach_a_path_socket(listener, tmp_path) -> None:
    n = Notifier(str(tmp_path / "notify.sock"))
    assert n.enabled
    assert n.ready("serving x\non /mnt")
    msg = listener.next()
    assert msg["READY"] == "1" and msg["MAINPID"] == str(os.getpid())
    assert msg["STATUS"] == "serving x on /mnt"  # a newline would start a field of its own
    assert n.stopping("bye") and listener.next() == {"STOPPING": "1", "STATUS": "bye"}


def test_messages_reach_an_abstract_socket() -> None:
    name = f"@sheepfs-test-{os.getpid()}-{time.monotonic_ns()}"
    lst = Listener(socket_address(name))
    try:
        assert Notifier(name).status("hello") and lst.next() == {"STATUS": "hello"}
    finally:
        lst.close()


def test_without_a_socket_nothing_is_sent(monkeypatch, caplog) -> None:
    monkeypatch.delenv(ENV, raising=False)
    n = Notifier.from_environment()
    assert not n.enabled and not n.ready("x")
    assert not Notifier("relative/path").enabled  # AF_UNIX needs / or @
    assert "is no AF_UNIX socket" in caplog.text


def test_the_variable_is_taken_from_the_environment(monkeypatch, listener, tmp_path) -> None:
    monkeypatch.setenv(ENV, str(tmp_path / "notify.sock"))
    n = Notifier.from_environment()
    assert ENV not in os.environ  # the dog processes we start do not inherit it
    assert n.status("up") and listener.next() == {"STATUS": "up"}


def test_a_listener_gone_costs_one_log_line_not_the_mount(tmp_path, caplog) -> None:
    n = Notifier(str(tmp_path / "nobody.sock"))
    assert not n.status("a") and not n.status("b")
    assert caplog.text.count("cannot notify the service manager") == 1


async def test_ready_waits_until_the_mount_answers(listener, tmp_path) -> None:
    """READY=1 goes only once the probe (a stat of the mount, from a worker thread) has
    returned, never before."""
    answered = threading.Event()
    probes: list[str] = []

    def probe(path: str) -> None:
        probes.append(path)
        answered.wait(10)

    service = Service(Notifier(str(tmp_path / "notify.sock")))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(service.announce_ready, "/mnt/x", probe)
        await trio.sleep(0.3)
        assert probes == ["/mnt/x"] and listener.pending() == []
        answered.set()
    msg = listener.next(5)
    assert msg["READY"] == "1" and "on /mnt/x" in msg["STATUS"]


async def test_no_ready_when_the_mount_does_not_answer(listener, tmp_path, caplog) -> None:
    def probe(path: str) -> None:
        raise OSError(107, "Transport endpoint is not connected")

    await Service(Notifier(str(tmp_path / "notify.sock"))).announce_ready("/mnt/x", probe)
    assert listener.pending() == [] and "does not answer" in caplog.text


# -- a mounted sheepfs -----------------------------------------------------------------------


def test_a_mount_is_ready_once_it_answers_and_reports_its_stop(
    dog_store, tmp_path, listener, monkeypatch
) -> None:
    monkeypatch.setenv(ENV, str(tmp_path / "notify.sock"))
    m = start_mount(dog_store, tmp_path, wait=False)
    try:
        ready = listener.next()
        # Checked the moment READY=1 arrives: the mount is there and answers.
        assert os.path.ismount(m.path) and os.stat(m.path).st_ino == 1
        assert ready["READY"] == "1" and ready["MAINPID"] == str(m.proc.pid)
        assert ready["STATUS"] == f"serving 127.0.0.1:7000 on {m.path}"
        src = tmp_path / "src"
        src.write_bytes(os.urandom(5 * MiB))
        control.add_fault(dog_store.path, {"match": ["vdi", "write"], "sleep": 4, "times": 1})
        cp = subprocess.Popen(["cp", str(src), str(m.path / "slow")])
        wait_for(lambda: control.count_calls(dog_store.path, "vdi", "write") != 0,
                 "the first `dog vdi write`", 10, interval=0.02)  # fmt: skip
        m.proc.send_signal(signal.SIGTERM)
        messages = [listener.next(30)]
        while "stopped" not in messages[-1].get("STATUS", ""):
            messages.append(listener.next(30))
        assert m.proc.wait(timeout=30) == 0 and cp.wait(timeout=30) == 0
    finally:
        m.cleanup()
    assert messages[0] == {"STOPPING": "1", "STATUS": "stopping: writing pending data"}
    saving = [msg["STATUS"] for msg in messages[1:-1]]
    assert saving and all(s.startswith("stopping: writing 'slow' ") for s in saving), saving
    assert " of 5.0 MiB" in saving[0]
    assert messages[-1] == {"STATUS": "stopped: all data saved"}
    assert listener.pending() == []  # READY=1 came once, before all of it
    log = m.log_text()
    assert "writing pending data: 'slow' " in log and "all data saved" in log
    assert dog_store.read(b"slow") == src.read_bytes()


def test_an_unmount_with_data_left_to_write_reports_it(
    dog_store, tmp_path, listener, monkeypatch
) -> None:
    """A close whose upload failed (and the release's retry) leaves the file in the spool;
    the unmount writes it, and says so in the log and to systemd while it does."""
    monkeypatch.setenv(ENV, str(tmp_path / "notify.sock"))
    control.add_fault(dog_store.path, {"match": ["vdi", "write"], "rc": 1, "times": 2,
                                       "stderr": "Failed to write object\n"})  # fmt: skip
    m = start_mount(dog_store, tmp_path)
    try:
        assert listener.next()["READY"] == "1"
        with pytest.raises(OSError):
            with open(m.path / "kept", "wb") as f:
                f.write(b"k" * MiB)
        assert m.unmount() == 0
    finally:
        m.cleanup()
    statuses = [msg.get("STATUS", "") for msg in listener.pending()]
    assert statuses[0] == "stopping: writing pending data"
    assert "stopping: writing 'kept' 0 B of 1.0 MiB; 1.0 MiB to go" in statuses
    assert statuses[-1] == "stopped: all data saved"
    assert "writing pending data: 'kept' 0 B of 1.0 MiB" in m.log_text()
    assert dog_store.read(b"kept") == b"k" * MiB


def test_no_ready_when_the_mount_fails(tmp_path, listener) -> None:
    with socket.socket() as s:  # a port nobody listens on: no cluster there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (tmp_path / "mnt").mkdir()
    env = {**os.environ, ENV: str(tmp_path / "notify.sock")}
    argv = [sys.executable, "-m", "sheepfs", str(tmp_path / "mnt"), "-f", "--backend", "sheep",
            "-a", "127.0.0.1", "-p", str(port), "--timeout", "2",
            "--spool-dir", str(tmp_path / "spool")]  # fmt: skip
    r = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "cannot mount" in r.stderr
    assert not any(msg.get("READY") for msg in listener.pending())


def test_the_unit_is_type_notify() -> None:
    unit = (Path(ROOT) / "systemd" / "sheepfs@.service").read_text()
    lines = unit.splitlines()
    assert "Type=notify" in lines and "NotifyAccess=main" in lines
    assert any(line.startswith("ExecStart=") and "--foreground" in line for line in lines)
    assert "man:sheepfs(8)" in unit
