"""``sheepfs status`` against a real mount: during a large ``cp`` it shows the upload and
its progress, afterwards nothing pending; ``--json`` parses; ``getfattr`` shows the same
attributes; ``--metrics`` serves the counters, and a busy port fails the mount."""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.fakedog import control
from tests.mounting import mount_of, start_mount

pytestmark = pytest.mark.timeout(120)
MiB = 1 << 20
SHEEPFS = str(Path(sys.executable).parent / "sheepfs")


def status(mnt: Path, *args: str) -> subprocess.CompletedProcess:
    """``sheepfs status MNT ...`` in its own process, as a user runs it."""
    return subprocess.run(
        [SHEEPFS, "status", str(mnt), *args], capture_output=True, text=True, timeout=30
    )


def status_json(mnt: Path) -> dict:
    r = status(mnt, "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_status_shows_a_large_cp_uploading_then_nothing_pending(dog_store, tmp_path):
    """Every ``dog vdi write`` takes two seconds longer, so the upload behind the writer and
    the one at close can be watched: the file is listed as uploading with part of it done."""
    size = 48 * MiB
    src = tmp_path / "src"
    src.write_bytes(os.urandom(size))
    control.add_fault(dog_store.path, {"match": ["vdi", "write"], "sleep": 2})
    with mount_of(dog_store, tmp_path) as m:
        cp = subprocess.Popen(["cp", str(src), str(m.path / "big")])
        seen, texts = [], []
        try:
            while cp.poll() is None:
                s = status_json(m.path)
                seen += [(p["name"], p["state"], p["done"], p["size"], p["uploading"])
                         for p in s["pending"]]  # fmt: skip
                texts.append(status(m.path).stdout)
                time.sleep(0.1)
        finally:
            assert cp.wait(timeout=60) == 0
        uploading = [x for x in seen if x[0] == "big" and x[4]]
        assert uploading, seen
        assert any(0 < done < total for _, _, done, total, _ in uploading), uploading
        assert any(
            "uploads pending: 1" in t and "big  " in t and "upload under way" in t for t in texts
        ), texts
        after = status_json(m.path)
        assert after["pending"] == [] and after["pending_files"] == after["pending_bytes"] == 0
        assert after["files_uploaded"] >= 1 and after["bytes_uploaded"] >= size
        assert after["where"]["backend"] == "dog" and after["where"]["mountpoint"] == str(m.path)
        text = status(m.path)
        assert text.returncode == 0 and "uploads pending: none" in text.stdout
    assert dog_store.read(b"big") == src.read_bytes()


def test_getfattr_shows_the_status_and_files_have_no_attributes(fast_mounted):
    m = fast_mounted
    (m.path / "f").write_bytes(b"data")
    r = subprocess.run(["getfattr", "-d", "-m", "user.sheepfs", str(m.path)],
                       capture_output=True, text=True, timeout=30)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert 'user.sheepfs.pending_files="0"' in r.stdout
    assert "user.sheepfs.status=" in r.stdout and "user.sheepfs.uptime=" in r.stdout
    s = json.loads(os.getxattr(m.path, "user.sheepfs.status"))
    assert s["files_uploaded"] == 1 and s["where"]["pid"] == m.proc.pid
    assert os.listxattr(m.path / "f") == []
    with pytest.raises(OSError) as e:
        os.getxattr(m.path / "f", "user.sheepfs.status")
    assert e.value.errno == errno.ENOTSUP
    for k in range(8):
        (m.path / f"more{k}").write_bytes(b"x")
    ls = subprocess.run(["strace", "-f", "-e", "trace=lgetxattr,getxattr", "ls", "-l", str(m.path)],
                        capture_output=True, text=True, timeout=30)  # fmt: skip
    asked = [line for line in ls.stderr.splitlines() if "xattr(" in line]
    assert len(asked) <= 5, ls.stderr  # the root's, then one file's: not each of the 9 files


def test_status_of_a_directory_that_is_no_sheepfs_mount_fails(tmp_path):
    r = status(tmp_path)
    assert r.returncode == 1 and r.stdout == ""
    assert "not a mount point" in r.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        return r.read().decode()


def test_metrics_serve_the_same_counters(dog_store, tmp_path):
    from prometheus_client.parser import text_string_to_metric_families

    port = _free_port()
    with mount_of(dog_store, tmp_path, "--metrics", f"127.0.0.1:{port}") as m:
        (m.path / "f").write_bytes(b"x" * MiB)
        samples = {
            s.name: s
            for family in text_string_to_metric_families(_scrape(port))
            for s in family.samples
        }
        assert samples["sheepfs_uploaded_files_total"].value == 1
        assert samples["sheepfs_info"].labels["mountpoint"] == str(m.path)
        assert samples["sheepfs_backend_calls_total"].value == status_json(m.path)["calls"]["calls"]


def test_a_busy_metrics_port_fails_the_mount(dog_store, tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        m = start_mount(dog_store, tmp_path, "--metrics", f"127.0.0.1:{port}", wait=False)
        try:
            assert m.proc.wait(timeout=30) == 1
        finally:
            m.cleanup()
    assert "cannot serve metrics on 127.0.0.1" in m.log_text()
    assert not os.path.ismount(m.path)
