"""The real ``dog`` against the fake sheep: the 43 commands of the wire transcript give the
output the real cluster gave, and a few commands of our own round-trip data. Skipped when no
Sheepdog build is found (``tests/realcluster.py``)."""

from __future__ import annotations

import base64
import hashlib
import os
import re
import zlib

import pytest
import trio

from tests import replay_wire
from tests.fakesheep import RunningFake, fake_cluster
from tests.fakesheep.process import free_port_base
from tests.realcluster import Dist, find_sheepdog

DIST = find_sheepdog()
pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.skipif(not isinstance(DIST, Dist), reason=f"no Sheepdog build: {DIST}"),
]
#: Outputs that vary from run to run (README of the transcript): times, and node ports when
#: the fake does not run on the recorded ones.
_TIMES = [
    (re.compile(r"\b1[6-9]\d{8}\b"), "<epoch>"),
    (re.compile(r"\w{3} \w{3} [ \d]\d \d\d:\d\d:\d\d \d{4}"), "<date>"),
    (re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d(:\d\d)?"), "<time>"),
]


async def dog(fake: RunningFake, *args: str, stdin: bytes = b"") -> trio.CompletedProcess:
    assert isinstance(DIST, Dist)
    return await trio.run_process(
        [str(DIST.dog), *args],
        stdin=stdin,
        capture_stdout=True,
        capture_stderr=True,
        check=False,
        env={**os.environ, "LC_ALL": "C"},
    )


def _normal(text: str, fake: RunningFake) -> str:
    for k, port in enumerate(fake.ports):
        text = text.replace(f"127.0.0.1:{port}", f"127.0.0.1:{17200 + k}")
    for pattern, repl in _TIMES:
        text = pattern.sub(repl, text)
    return text


def _stdin(step: dict) -> bytes:
    s = step["stdin"]
    return zlib.decompress(base64.b64decode(s["zlib_b64"])) if s else b""


async def test_dog_gives_what_the_real_cluster_gave():
    base = free_port_base(3)  # increasing ports: dog lists nodes by port
    async with fake_cluster(ports=[base, base + 1, base + 2]) as fake:
        for step, _ in replay_wire.load():
            argv = list(step["argv"])
            argv[argv.index("-p") + 1] = str(fake.ports[0])
            r = await dog(fake, *argv, stdin=_stdin(step))
            where = f"step {step['step']} ({step['label']})"
            assert r.returncode == step["rc"], (where, r.stderr)
            assert r.stderr.decode() == step["stderr"]["text"], where
            out = step["stdout"]
            if step["argv"][0] in ("cluster", "node") or "-r" in argv:
                assert _normal(r.stdout.decode(), fake) == _normal(out["text"], fake), where
            else:
                got = (len(r.stdout), hashlib.sha256(r.stdout).hexdigest())
                assert got == (out["len"], out["sha256"]), where
        assert fake.events == []


async def test_dog_round_trips_data_and_snapshots():
    data = os.urandom(5 << 20)
    async with fake_cluster(nodes=3) as fake:
        p = ("-p", str(fake.ports[1]))
        assert (await dog(fake, "vdi", "create", *p, "img", "12M")).returncode == 0
        w = await dog(fake, "vdi", "write", *p, "img", "1000", str(len(data)), stdin=data)
        assert w.returncode == 0, w.stderr
        r = await dog(fake, "vdi", "read", *p, "img", "1000", str(len(data)))
        assert r.stdout == data
        assert fake.control.read_vdi("img", 1000, len(data)) == data
        assert (await dog(fake, "vdi", "snapshot", *p, "-s", "one", "img")).returncode == 0
        assert (await dog(fake, "vdi", "delete", *p, "img")).returncode == 0
        rows = (await dog(fake, "vdi", "list", *p, "-r")).stdout.decode().splitlines()
        assert [row.split()[:3] for row in rows] == [["s", "img", "1"]]
        snap = await dog(fake, "vdi", "read", *p, "-s", "one", "img", "1000", str(len(data)))
        assert snap.stdout == data
        assert fake.events == []
