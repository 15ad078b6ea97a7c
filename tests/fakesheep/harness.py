"""Running a fake sheep cluster inside a trio test: ``async with fake_cluster() as fake``."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import trio

from .control import Control
from .proto import ClusterFlag
from .remote import serve_control
from .server import FakeCluster
from .state import ClusterState


@dataclass
class RunningFake:
    """What ``fake_cluster`` yields: the ports, the control API and the server itself."""

    server: FakeCluster
    control: Control
    host: str = "127.0.0.1"

    @property
    def ports(self) -> list[int]:
        return self.server.ports

    @property
    def state(self) -> ClusterState:
        return self.server.state

    @property
    def events(self) -> list[dict[str, object]]:
        return self.server.events

    def address(self, node: int = 0) -> tuple[str, int]:
        return self.host, self.server.ports[node]


@asynccontextmanager
async def fake_cluster(
    nodes: int = 3,
    ports: Sequence[int] | None = None,
    copies: int = 2,
    flags: int = ClusterFlag.AUTO_VNODES,
    block_size_shift: int = 22,
    formatted: bool = True,
    state: ClusterState | None = None,
    control_path: str | Path | None = None,
) -> AsyncIterator[RunningFake]:
    """N nodes on 127.0.0.1 (``ports`` or free ones), formatted like ``dog cluster format
    -c copies`` unless ``formatted`` is false; with ``control_path`` the control API is also
    served there for other processes."""
    if state is None:
        port_list = list(ports) if ports is not None else [0] * nodes
        state = ClusterState.new(port_list, copies, flags, block_size_shift, formatted)
    server = FakeCluster(state)
    fake = RunningFake(server, Control(server))
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        if control_path is not None:
            await nursery.start(serve_control, fake.control, Path(control_path))
        try:
            yield fake
        finally:
            nursery.cancel_scope.cancel()
