"""What ``dog vdi setattr/getattr`` do, pinned on the fake dog, on the real dog against the
fake sheep, and on a real cluster (marker ``real``), so the fakes stay as unkind as the real
thing (docs/PROTOCOL.md P12, docs/SHEEPDOG.md F20): exit codes and texts, values kept by
the VDI's name (they outlive it and pass to the next VDI of that name), and the slots that
``-d`` and ``-x`` move between."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator

import pytest

from tests.fakedog import control
from tests.fakesheep.process import FakeSheepProcess
from tests.mounting import REAL
from tests.realcluster import Dist, find_sheepdog

pytestmark = pytest.mark.timeout(180)
Dog = Callable[..., subprocess.CompletedProcess]


@pytest.fixture(params=["fake dog", "fake sheep", REAL])
def dog(request, tmp_path) -> Iterator[Dog]:
    """``dog(*args, stdin=b"")``: dog with the address of the cluster after the two words."""
    if request.param == "fake dog":
        store = control.init_store(tmp_path / "store")
        env = {**os.environ, "SHEEPDOG_FAKE_STORE": str(store),
               "SHEEPDOG_FAKE_PYTHON": sys.executable}  # fmt: skip
        yield lambda *a, stdin=b"": subprocess.run(
            [control.dog_path(), *a], input=stdin, capture_output=True, env=env, timeout=60
        )
    elif request.param == "fake sheep":
        dist = find_sheepdog()
        if not isinstance(dist, Dist):
            pytest.skip(f"no Sheepdog build: {dist}")
        with FakeSheepProcess(nodes=3) as fake:
            where = ["-a", "127.0.0.1", "-p", str(fake.ports[0])]
            yield lambda *a, stdin=b"": subprocess.run(
                [str(dist.dog), *a[:2], *where, *a[2:]], input=stdin, capture_output=True,
                timeout=60,
            )  # fmt: skip
            assert fake.control.events() == []
    else:
        cluster = request.getfixturevalue("real_store").cluster
        yield lambda *a, stdin=b"": cluster.dog(*a, stdin=stdin, check=False)


def ok(dog: Dog, *args: str, stdin: bytes = b"") -> bytes:
    r = dog(*args, stdin=stdin)
    assert r.returncode == 0, (args, r.returncode, r.stderr)
    return r.stdout


def said(r: subprocess.CompletedProcess) -> tuple[int, bytes, bytes]:
    return r.returncode, r.stdout, r.stderr.splitlines()[-1] if r.stderr else b""


def test_a_value_is_set_read_and_deleted(dog):
    ok(dog, "vdi", "create", "img", "4M")
    assert ok(dog, "vdi", "setattr", "img", "sheepfs.times", "v1 1 2 3") == b""
    assert ok(dog, "vdi", "getattr", "img", "sheepfs.times") == b"v1 1 2 3"  # no newline
    ok(dog, "vdi", "setattr", "img", "sheepfs.times", "v1 4 5 6")  # replaces it
    assert ok(dog, "vdi", "getattr", "img", "sheepfs.times") == b"v1 4 5 6"
    assert ok(dog, "vdi", "setattr", "-d", "img", "sheepfs.times") == b""
    missing = (5, b"", b"Attribute 'sheepfs.times' not found")
    assert said(dog("vdi", "getattr", "img", "sheepfs.times")) == missing
    assert said(dog("vdi", "setattr", "-d", "img", "sheepfs.times")) == missing


def test_no_such_vdi_is_exit_5_like_a_missing_key(dog):
    assert said(dog("vdi", "getattr", "nosuch", "k")) == (5, b"", b"VDI not found")
    assert said(dog("vdi", "setattr", "nosuch", "k", "v")) == (5, b"", b"VDI not found")
    assert said(dog("vdi", "setattr", "-d", "nosuch", "k")) == (5, b"", b"VDI not found")


def test_a_value_outlives_its_vdi_and_passes_to_the_next_of_that_name(dog):
    ok(dog, "vdi", "create", "img", "4M")
    ok(dog, "vdi", "setattr", "img", "k", "old")
    ok(dog, "vdi", "delete", "img")
    assert said(dog("vdi", "getattr", "img", "k")) == (5, b"", b"VDI not found")
    ok(dog, "vdi", "create", "img", "8M")  # another VDI, the same name
    assert ok(dog, "vdi", "getattr", "img", "k") == b"old"


def test_exclusive_set_after_a_delete_takes_the_next_slot(dog):
    """-x probes past the deleted slot; a plain set writes the hash slot again; deleting
    that brings the -x value back: a delete must be repeated until the key is missing."""
    ok(dog, "vdi", "create", "img", "4M")
    ok(dog, "vdi", "setattr", "img", "k", "one")
    ok(dog, "vdi", "setattr", "-d", "img", "k")
    ok(dog, "vdi", "setattr", "-x", "img", "k", "two")
    assert said(dog("vdi", "setattr", "-x", "img", "k", "3")) == (
        3, b"", b"The attribute 'k' already exists"
    )  # fmt: skip
    ok(dog, "vdi", "setattr", "img", "k", "three")
    ok(dog, "vdi", "setattr", "-d", "img", "k")
    assert ok(dog, "vdi", "getattr", "img", "k") == b"two"
    ok(dog, "vdi", "setattr", "-d", "img", "k")
    assert said(dog("vdi", "getattr", "img", "k"))[0] == 5


def test_a_value_from_stdin_ends_at_its_first_nul(dog):
    ok(dog, "vdi", "create", "img", "4M")
    ok(dog, "vdi", "setattr", "img", "k", stdin=b"ab\0cd")
    assert ok(dog, "vdi", "getattr", "img", "k") == b"ab"


def test_a_snapshot_keeps_the_working_vdis_values(dog):
    ok(dog, "vdi", "create", "img", "4M")
    ok(dog, "vdi", "setattr", "img", "k", "kept")
    ok(dog, "vdi", "snapshot", "-s", "s1", "img")
    assert ok(dog, "vdi", "getattr", "img", "k") == b"kept"
    ok(dog, "vdi", "clone", "-s", "s1", "img", "copy")
    assert said(dog("vdi", "getattr", "copy", "k"))[0] == 5  # a clone starts with none
