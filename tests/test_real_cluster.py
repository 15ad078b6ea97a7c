"""What only a real cluster can show: a sheep dies under reads and writes.

The other real-cluster tests are the behaviour tests of the other modules, run on the real
cluster as one of their store parameters (marker ``real``).
"""

from __future__ import annotations

import threading

import pytest

from tests.helpers import rand, sha
from tests.mounting import mount_of

pytestmark = [pytest.mark.real, pytest.mark.timeout(240)]
MiB = 1 << 20


def test_a_node_killed_while_reading_and_writing_costs_nothing(real_store, tmp_path):
    """3 nodes, 2 copies: losing one sheep (not the one sheepfs talks to) must fail no read
    and no write, and lose no byte; it comes back afterwards."""
    cluster = real_store.cluster
    old = rand(48 * MiB, 1)
    new = rand(40 * MiB, 2)
    real_store.create(b"old", len(old), old)
    errors: list[BaseException] = []
    reads: list[str] = []

    with mount_of(real_store, tmp_path) as m:

        def reader() -> None:
            try:
                for _ in range(3):
                    reads.append(sha((m.path / "old").read_bytes()))
            except BaseException as e:  # noqa: BLE001 - reported by the test
                errors.append(e)

        def writer() -> None:
            try:
                with open(m.path / "new", "wb") as f:
                    for at in range(0, len(new), MiB):
                        f.write(new[at : at + MiB])
                with open(m.path / "old", "r+b") as f:
                    f.seek(20 * MiB)
                    f.write(b"patched while a node was down")
            except BaseException as e:  # noqa: BLE001 - reported by the test
                errors.append(e)

        threads = [threading.Thread(target=reader), threading.Thread(target=writer)]
        for t in threads:
            t.start()
        cluster.kill_node(2)
        for t in threads:
            t.join(180)
        assert not any(t.is_alive() for t in threads), "a read or write hung"
        cluster.start_node(2)
    assert errors == []
    patched = old[: 20 * MiB] + b"patched while a node was down" + old[20 * MiB + 29 :]
    assert set(reads) <= {sha(old), sha(patched)} and len(reads) == 3
    assert real_store.read(b"new") == new
    assert real_store.read(b"old") == patched
    assert "Traceback" not in m.log_text()
