"""Running sheepfs the way an operator does: packaging, mount(8) and -o options, ro,
ownership options, daemon mode, the systemd unit."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.mounting import ROOT, fuse_unmount, make_store, mount_of, wait_for

pytestmark = pytest.mark.timeout(90)
SHEEPFS = str(Path(sys.executable).parent / "sheepfs")


def wait_mounted(path: Path) -> None:
    wait_for(lambda: os.path.ismount(path), f"{path} to be mounted", 20)


def test_version_and_help():
    out = subprocess.run([SHEEPFS, "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("sheepfs ")
    text = subprocess.run([SHEEPFS, "--help"], capture_output=True, text=True, check=True).stdout
    options = "--address --port --dog --timeout --local --foreground --ro --allow-other --uid"
    options += " --gid --umask --attr-timeout --direct-io --spool-dir --cache-size --list-ttl"
    options += " --debug"
    for option in (options + " --log-file -o").split():
        assert option in text, option


@pytest.mark.timeout(300)
def test_demo_script_mounts_a_working_store(tmp_path):
    """The README's first Quick start command: set up (idempotent), mount the demo store."""
    mnt, store = tmp_path / "demo", tmp_path / "demo-store"
    env = {**os.environ, "SHEEPFS_DEMO_STORE": str(store)}
    try:
        subprocess.run([str(ROOT / "scripts" / "demo"), str(mnt)], env=env, check=True,
                       capture_output=True, timeout=240)  # fmt: skip
        wait_mounted(mnt)
        (mnt / "hello").write_bytes(b"demo data\n")
        assert (mnt / "hello").read_bytes() == b"demo data\n"
        assert sorted(os.listdir(mnt)) == ["hello"]
    finally:
        fuse_unmount(mnt)
    assert make_store("local", store).read(b"hello") == b"demo data\n"


def test_local_round_trip(tmp_path):
    store = make_store("local", tmp_path / "store")
    with mount_of(store, tmp_path) as m:
        data = os.urandom(5 << 20)
        (m.path / "img").write_bytes(data)
        assert (m.path / "img").read_bytes() == data
        assert store.read(b"img") == data
        os.unlink(m.path / "img")
        assert store.vdis() == {}


def test_mount_t_fuse_sheepfs_with_options(tmp_path):
    """mount(8) -> mount.fuse3 -> sheepfs SOURCE MOUNTPOINT -o ..., daemonized by default."""
    if shutil.which("sheepfs") is None:
        pytest.fail("sheepfs is not on PATH: scripts/setup links it into /usr/local/bin")
    store = tmp_path / "store"
    store.mkdir()
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    opts = "allow_other,cache_size=64M,uid=1234,gid=4321,umask=027,attr_timeout=0.5,"
    opts += f"spool_dir={tmp_path / 'spool'},log_file={tmp_path / 'log'},nofail,_netdev"
    r = subprocess.run(["mount", "-t", "fuse.sheepfs", f"local:{store}", str(mnt), "-o", opts],
                       capture_output=True, text=True, timeout=30)  # fmt: skip
    try:
        assert r.returncode == 0, r.stderr
        wait_mounted(mnt)
        (mnt / "x").write_bytes(b"hello")
        st = os.stat(mnt / "x")
        assert (st.st_uid, st.st_gid) == (1234, 4321)
        assert st.st_mode & 0o777 == 0o640
        assert os.stat(mnt).st_mode & 0o777 == 0o750
        options = next(line for line in open("/proc/mounts") if f" {mnt} " in line)
        assert "allow_other" in options and "default_permissions" in options
    finally:
        fuse_unmount(mnt)
    # the daemon (started by mount, not by us) logs its summary just after the unmount
    log = tmp_path / "log"
    wait_for(lambda: "unmounted" in log.read_text(), "the summary", 20, detail=log.read_text)
    assert (tmp_path / "log").read_text().count("all data saved") == 1


def test_unknown_option_is_an_error(tmp_path):
    (tmp_path / "mnt").mkdir()
    r = subprocess.run([SHEEPFS, "local:" + str(tmp_path), str(tmp_path / "mnt"), "-f",
                        "-o", "bogus=1"], capture_output=True, text=True, timeout=30)  # fmt: skip
    assert r.returncode != 0
    assert "unknown mount option" in r.stderr
    assert not os.path.ismount(tmp_path / "mnt")


def test_ro_refuses_writes_with_erofs(tmp_path):
    store = make_store("local", tmp_path / "store")
    store.create(b"disk", 4096, b"r" * 4096)
    with mount_of(store, tmp_path, "-o", "ro") as m:
        assert (m.path / "disk").read_bytes() == b"r" * 4096
        for attempt in (
            lambda: open(m.path / "disk", "r+b"),
            lambda: open(m.path / "new", "wb"),
            lambda: os.unlink(m.path / "disk"),
            lambda: os.truncate(m.path / "disk", 0),
            lambda: os.rename(m.path / "disk", m.path / "other"),
        ):
            with pytest.raises(OSError) as e:
                attempt()
            assert e.value.errno == errno.EROFS
        assert store.read(b"disk") == b"r" * 4096


def test_uid_gid_umask_in_stat(tmp_path):
    store = make_store("local", tmp_path / "store")
    store.create(b"disk", 4096)
    with mount_of(store, tmp_path, "--uid", "4242", "--gid", "4343", "--umask", "077") as m:
        st = os.stat(m.path / "disk")
        assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (4242, 4343, 0o600)
        assert os.stat(m.path).st_mode & 0o777 == 0o700


def test_systemd_unit_verifies(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    unit = (ROOT / "systemd" / "sheepfs@.service").read_text()
    assert "After=network-online.target" in unit and "Restart=" in unit
    # verify checks that ExecStart's binary exists: point it at this checkout's sheepfs
    (tmp_path / "sheepfs@.service").write_text(unit.replace("/usr/local/bin/sheepfs", SHEEPFS))
    os.symlink(tmp_path / "sheepfs@.service", tmp_path / "sheepfs@mnt-vdis.service")
    r = subprocess.run([analyze, "verify", str(tmp_path / "sheepfs@mnt-vdis.service")],
                       capture_output=True, text=True, timeout=60)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "sheepfs@" not in r.stderr, r.stderr  # no warning about our unit
