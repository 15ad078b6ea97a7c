"""Fixtures the fake sheep's own tests share: a 3-node fake cluster and a raw connection
to its first node (tests/fakesheep/client.py), for tests that write every request."""

from __future__ import annotations

import pytest

from tests.fakesheep import fake_cluster
from tests.fakesheep.client import SheepConn


@pytest.fixture
async def fake():
    async with fake_cluster(nodes=3) as f:
        yield f


@pytest.fixture
async def conn(fake):
    c = await SheepConn.open(fake.ports[0])
    yield c
    await c.aclose()
