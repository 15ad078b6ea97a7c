"""Names as users type them, through a real mount: a `%` that starts no escape is part of
the name, on the way in (`cp`) and in listings; the older `%25` form still reaches the same
VDI; and VDIs whose names look like escapes or directories are reachable under theirs."""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from sheepfs.names import SNAPSHOTS_DIR
from tests.mounting import mount_of

pytestmark = pytest.mark.timeout(120)
MiB = 1 << 20
TTL = 1.1  # past the listing TTL: listings then come from the cluster, not from our files


def files(m) -> list[str]:
    """The mount's root as listed, sorted, without the snapshots directory."""
    return sorted(n for n in os.listdir(m.path) if n != SNAPSHOTS_DIR.decode())


@pytest.fixture
def store(any_store):
    """The fake dog, the local backend, and a real cluster through dog and the sheep backend."""
    return any_store


def test_cp_to_50_percent_off_makes_the_vdi_of_that_name(store, tmp_path):
    src = tmp_path / "f"
    src.write_bytes(os.urandom(MiB + 5))
    with mount_of(store, tmp_path) as m:
        subprocess.run(["cp", str(src), str(m.path / "50%off.img")], check=True)
        assert list(store.vdis()) == [b"50%off.img"]
        assert store.read(b"50%off.img") == src.read_bytes()
        time.sleep(TTL)
        assert files(m) == ["50%off.img"]
        assert (m.path / "50%off.img").read_bytes() == src.read_bytes()


def test_typed_names_are_those_vdis_and_listed_as_typed(store, tmp_path):
    typed = ["100%", "a%2", "%zz", "%2f", "%", "%%2F", "%2E%2F"]  # the last two hold a /
    vdis = [b"100%", b"a%2", b"%zz", b"%2f", b"%", b"%/", b"%2E/"]
    with mount_of(store, tmp_path) as m:
        for i, name in enumerate(typed):
            (m.path / name).write_bytes(b"%d" % i)
        assert sorted(store.vdis()) == sorted(vdis)
        assert [store.read(v)[:1] for v in vdis] == [b"%d" % i for i in range(len(vdis))]
        time.sleep(TTL)
        assert files(m) == sorted(typed)


def test_the_older_25_form_reaches_the_same_vdi(store, tmp_path):
    with mount_of(store, tmp_path) as m:
        (m.path / "50%25").write_bytes(b"written as 50%25")
        assert list(store.vdis()) == [b"50%"]
        time.sleep(TTL)
        assert files(m) == ["50%"]
        assert (m.path / "50%25").read_bytes() == (m.path / "50%").read_bytes()
        os.unlink(m.path / "50%25")
        assert list(store.vdis()) == []


def test_vdis_named_like_escapes_or_directories_are_reachable(store, tmp_path):
    shown = {b".snapshots": "%2Esnapshots", b"%2E": "%252E", b"%2E%2E": "%252E%2E",
             b"%25": "%2525", b"a/b": "a%2Fb"}  # fmt: skip
    with mount_of(store, tmp_path) as m:
        for vdi in shown:
            store.create(vdi, 4096, vdi)
        time.sleep(TTL)
        assert files(m) == sorted(shown.values())
        for vdi, file in shown.items():
            assert (m.path / file).read_bytes()[: len(vdi)] == vdi
