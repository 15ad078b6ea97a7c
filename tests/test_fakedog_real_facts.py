"""What a real cluster showed that the fake dog did not, now reproduced by it.

Each was found by running the suite's behaviour tests on a real Sheepdog 1.0 cluster; the
fake must be no kinder than the real thing, or tests on it prove nothing.
"""

from __future__ import annotations

import os

import pytest

from tests.fakedog import control
from tests.test_fakedog_facts import dog, ok, rows

pytestmark = pytest.mark.timeout(120)
MiB = 1 << 20


@pytest.fixture
def store(tmp_path):
    return control.init_store(tmp_path / "store")


def test_a_hyper_volume_cannot_be_snapshotted(store):
    ok(store, "vdi", "create", "-y", "big", "5T")
    r = dog(store, "vdi", "snapshot", "-s", "s1", "big")
    assert (r.returncode, r.stdout) == (1, b"")
    assert r.stderr == b"creating a snapshot of hypervolume is not supported\n"
    assert [row.kind for row in rows(store)] == ["="]


def test_deleting_a_hyper_volume_takes_the_cluster_down(store):
    """Real dog zeroes the index as if the VDI were flat, wiping the B-tree root: every
    sheep panics, and dog still exits 0."""
    ok(store, "vdi", "create", "-y", "big", "5T")
    r = dog(store, "vdi", "delete", "big")
    assert r.returncode == 0 and r.stderr
    assert dog(store, "vdi", "list", "-r").returncode == 2  # nothing answers any more
    assert dog(store, "node", "list", "-r").returncode == 2


@pytest.mark.parametrize(
    "offset, length, zeroed",
    [(512, 3, (515, 1024)), (0, 511, (511, 512)), (100, 3, None), (0, 1000, None),
     (700, 2000, None)],
)  # fmt: skip
def test_short_stripe_aligned_writes_to_erasure_coded_vdis_zero_the_stripe(
    store, offset, length, zeroed
):
    old = os.urandom(4 * MiB)
    ok(store, "vdi", "create", "-c", "2:1", "ec", "4M")
    ok(store, "vdi", "write", "ec", "0", str(len(old)), stdin=old)
    ok(store, "vdi", "write", "ec", str(offset), str(length), stdin=b"Q" * length)
    want = bytearray(old)
    want[offset : offset + length] = b"Q" * length
    if zeroed:
        want[zeroed[0] : zeroed[1]] = bytes(zeroed[1] - zeroed[0])
    assert ok(store, "vdi", "read", "ec") == want
