"""How the suite finds a real Sheepdog, and says why when it finds none."""

from __future__ import annotations

import os
import stat

from tests import realcluster
from tests.realcluster import Dist, find_sheepdog


def make_bin(tmp_path, *names: str):
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    for n in names:
        p = bindir / n
        p.write_text("#!/bin/sh\n")
        p.chmod(p.stat().st_mode | stat.S_IXUSR)
    return bindir


def test_sheepdog_prefix_comes_first(tmp_path, monkeypatch):
    make_bin(tmp_path, "dog", "sheep", "sheepdog-cluster", "sheepfs-c")
    monkeypatch.setenv("SHEEPDOG_PREFIX", str(tmp_path))
    found = find_sheepdog()
    assert isinstance(found, Dist)
    assert found.dog == tmp_path / "bin" / "dog" and found.origin == "$SHEEPDOG_PREFIX"
    assert found.sheepfs_c == tmp_path / "bin" / "sheepfs-c"


def test_an_incomplete_prefix_is_a_reason_not_a_dist(tmp_path, monkeypatch):
    make_bin(tmp_path, "dog")
    monkeypatch.setenv("SHEEPDOG_PREFIX", str(tmp_path))
    found = find_sheepdog()
    assert isinstance(found, str)
    assert "sheep, sheepdog-cluster missing" in found


def test_path_then_the_shared_dist(tmp_path, monkeypatch):
    monkeypatch.delenv("SHEEPDOG_PREFIX", raising=False)
    bindir = make_bin(tmp_path, "dog", "sheep", "sheepdog-cluster")
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}/usr/bin:/bin")
    found = find_sheepdog()
    assert isinstance(found, Dist) and found.origin == "PATH" and found.sheepfs_c is None
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    monkeypatch.setattr(realcluster, "SHARED_DIST", tmp_path / "nowhere")
    found = find_sheepdog()
    assert isinstance(found, str) and "no Sheepdog found" in found
    monkeypatch.setattr(realcluster, "SHARED_DIST", tmp_path)
    assert isinstance(find_sheepdog(), Dist)


def test_free_ports_are_free(tmp_path):
    import socket

    port = realcluster.free_port_range(3)
    for p in range(port, port + 3):
        with socket.socket() as s:
            s.bind(("127.0.0.1", p))
