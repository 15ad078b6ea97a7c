"""Times that stick, through a real mount (fake dog, --local, and a real cluster through
dog and through the sheep backend): ``rsync -a`` of an unchanged image transfers nothing
the second time, also after a remount; ``touch`` and ``cp -p`` times are kept; and a
different image put under the name of a deleted one never shows the old time."""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from tests.helpers import rand, sha
from tests.mounting import mount_of

pytestmark = pytest.mark.timeout(300)
MiB = 1 << 20
OLD = 1_262_304_000  # 2010-01-01, far from any creation time


def rsync(src, dst) -> tuple[str, float]:
    """``rsync -ai`` of the image in ``src`` into ``dst``: what it itemized, how long it
    took. (Of the directory, the mount's root would be itemized too: its own times are not
    kept, it is no VDI.)"""
    start = time.monotonic()
    r = subprocess.run(["rsync", "-ai", f"{src}/disk.img", f"{dst}/"], capture_output=True,
                       text=True, timeout=240)  # fmt: skip
    assert r.returncode == 0, r.stderr
    return r.stdout, time.monotonic() - start


def image(tmp_path, seed: int, size: int = 9 * MiB):
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    data = bytearray(rand(size, seed=seed))
    data[2 * MiB : 6 * MiB] = bytes(4 * MiB)
    (src / "disk.img").write_bytes(data)
    os.utime(src / "disk.img", ns=(OLD * 10**9 + 123_456_789, OLD * 10**9 + 123_456_789))
    return src


def test_a_second_rsync_of_an_unchanged_image_transfers_nothing(any_store, tmp_path):
    src = image(tmp_path, 1)
    with mount_of(any_store, tmp_path) as m:
        first, _ = rsync(src, m.path)
        assert ">f+++++++++ disk.img" in first
        assert int(os.stat(m.path / "disk.img").st_mtime) == int(os.stat(src / "disk.img").st_mtime)
        second, took = rsync(src, m.path)
        assert second == "" and took < 5
        whole = subprocess.run(["rsync", "-ai", f"{src}/", f"{m.path}/"], capture_output=True,
                               text=True, check=True).stdout  # fmt: skip
        assert "disk.img" not in whole  # a directory's run: only the root's times, if any
        log = m.log_text()
    assert "Traceback" not in log
    with mount_of(any_store, tmp_path) as m:  # the times are in Sheepdog, not in the daemon
        again, took = rsync(src, m.path)
        assert again == "" and took < 5
        (src / "disk.img").write_bytes(rand(9 * MiB, seed=2))  # changed: it must go again
        changed, _ = rsync(src, m.path)
        assert "disk.img" in changed
        assert sha((m.path / "disk.img").read_bytes()) == sha((src / "disk.img").read_bytes())
        assert "Traceback" not in m.log_text()


def test_touch_and_cp_p_times_are_kept(any_store, tmp_path):
    src = image(tmp_path, 3, size=MiB)
    any_store.create(b"other", MiB)
    with mount_of(any_store, tmp_path) as m:
        subprocess.run(["cp", "-p", str(src / "disk.img"), str(m.path / "copy")], check=True)
        subprocess.run(["touch", "-m", "-d", "2011-02-03 04:05:06 UTC", str(m.path / "other")],
                       check=True)  # fmt: skip
        subprocess.run(["touch", "-a", "-d", "@1300000000", str(m.path / "other")], check=True)
    with mount_of(any_store, tmp_path) as m:
        st = os.stat(m.path / "copy")
        assert st.st_mtime_ns == os.stat(src / "disk.img").st_mtime_ns
        other = os.stat(m.path / "other")
        assert (other.st_mtime, other.st_atime) == (1296705906, 1300000000)
        listed = subprocess.run(["ls", "-l", "--time-style=+%s", str(m.path)],
                                capture_output=True, text=True, check=True).stdout  # fmt: skip
        assert f" {OLD} copy" in listed and " 1296705906 other" in listed


def test_rm_then_cp_of_another_image_never_shows_the_old_time(any_store, tmp_path):
    src = image(tmp_path, 4, size=2 * MiB)
    with mount_of(any_store, tmp_path) as m:
        subprocess.run(["cp", "-p", str(src / "disk.img"), str(m.path / "disk.img")], check=True)
        assert int(os.stat(m.path / "disk.img").st_mtime) == OLD
        os.unlink(m.path / "disk.img")
        other = tmp_path / "other.img"
        other.write_bytes(rand(MiB, seed=5))
        subprocess.run(["cp", str(other), str(m.path / "disk.img")], check=True)
        assert os.stat(m.path / "disk.img").st_mtime > time.time() - 120
    with mount_of(any_store, tmp_path) as m:
        assert os.stat(m.path / "disk.img").st_mtime > time.time() - 120
        out, _ = rsync(src, m.path)  # the old image's time must not make rsync skip it
        assert "disk.img" in out
        assert sha((m.path / "disk.img").read_bytes()) == sha((src / "disk.img").read_bytes())


def test_a_vdi_deleted_and_made_again_by_dog_shows_its_own_time(any_store, tmp_path):
    """``dog vdi delete`` leaves sheepfs's attribute behind (Sheepdog keeps attributes by
    name); the next VDI of that name must not show it."""
    if not any_store.speaks_dog:
        pytest.skip("needs dog")
    src = image(tmp_path, 6, size=MiB)
    with mount_of(any_store, tmp_path) as m:
        subprocess.run(["cp", "-p", str(src / "disk.img"), str(m.path / "disk.img")], check=True)
    time.sleep(1.1)  # dog shows creation times in seconds: the next VDI is a second later
    any_store.dog_run("vdi", "delete", "--", "disk.img")
    any_store.create(b"disk.img", MiB)
    with mount_of(any_store, tmp_path) as m:
        assert os.stat(m.path / "disk.img").st_mtime > time.time() - 120
        out, _ = rsync(src, m.path)
        assert "disk.img" in out


@pytest.mark.real
@pytest.mark.sheep
def test_sheep_listings_show_new_vdis_at_once_and_do_not_reprobe_missing_times(
    real_store, tmp_path
):
    """On a real cluster, sheep backend: a remount shows the times kept with a VDI in its
    first ``ls``; a VDI made by dog after the mount is listed at once; and a listing after
    the TTL does not read the missing times of every VDI again, each of which would cost
    the gateway sheep an error line in its log (docs/SHEEPDOG.md F22)."""
    real_store.kind = "sheep"
    kept = OLD * 10**9 + 123_456_789
    with mount_of(real_store, tmp_path) as m:
        (m.path / "kept").write_bytes(b"x")
        os.utime(m.path / "kept", ns=(kept, kept))
    for k in range(5):
        real_store.create(b"none%d" % k, MiB)
    with mount_of(real_store, tmp_path) as m:
        assert os.stat(m.path / "kept").st_mtime_ns == kept
        real_store.create(b"later", MiB)  # by someone else, after the mount
        time.sleep(1.1)  # the listing TTL
        names = os.listdir(m.path)
        assert "later" in names and "kept" in names
        time.sleep(1.1)
        before = real_store.cluster.log_sizes()
        assert sorted(os.listdir(m.path)) == sorted(names)
        time.sleep(0.5)  # what a listing would read behind it
        assert "No object found" not in real_store.cluster.logs(since=before)
        assert os.stat(m.path / "kept").st_mtime_ns == kept
