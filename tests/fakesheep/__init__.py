"""A fake sheep cluster for tests: the sheep wire protocol of Sheepdog 1.0, served on N
loopback ports that share one in-memory cluster, with the faults a real sheep cannot be made
to show on demand. Kept honest by replaying ``tests/data/wire-transcript.jsonl`` (recorded
on a real cluster) with 0 differences.

In a trio test::

    async with fake_cluster(nodes=3) as fake:
        stream = await trio.open_tcp_stream(*fake.address(0))
        fake.control.inject("EIO", op="WRITE_OBJ", count=1)
        ...
        assert fake.events == []

From another process: ``python -m tests.fakesheep --nodes 3 --port-base P --control SOCK``
and ``ControlClient(SOCK)``, or ``FakeSheepProcess`` (``tests/fakesheep/process.py``).
"""

from __future__ import annotations

from .control import Control
from .harness import RunningFake, fake_cluster
from .remote import ControlClient, RemoteError
from .server import FakeCluster
from .state import ClusterState

__all__ = [
    "ClusterState",
    "Control",
    "ControlClient",
    "FakeCluster",
    "RemoteError",
    "RunningFake",
    "fake_cluster",
]
