"""scripts/soak's own logic: what the model accepts (a refused write may be absent, an
acknowledged one never), the report's last line and exit code, the proxy that holds a
sheep's replies; and one short run on the fake dog, end to end."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from tests.mounting import ROOT

sys.path.insert(0, str(ROOT / "scripts"))

from soaklib.judge import judge  # noqa: E402
from soaklib.model import ABSENT, Entry, Version, materialize  # noqa: E402
from soaklib.proxy import ProxyProcess  # noqa: E402
from soaklib.report import Report  # noqa: E402

pytestmark = pytest.mark.timeout(120)
MiB = 1 << 20


def version(tmp_path, data: bytes, name: str = "v") -> Version:
    (tmp_path / name).write_bytes(data)
    return Version(True, len(data), tmp_path / name)


def stream(data: bytes | None):
    return None if data is None else io.BytesIO(data)


# -- the model's rules ---------------------------------------------------------------------


def test_an_acknowledged_file_must_hold_exactly_its_bytes(tmp_path) -> None:
    data = os.urandom(3 * MiB + 5)
    e = Entry("f", known=version(tmp_path, data))
    assert judge(stream(data), e.candidates()).ok
    flipped = bytearray(data)
    flipped[2 * MiB + 7] ^= 1
    v = judge(stream(bytes(flipped)), e.candidates())
    assert not v.ok and v.lost == 1
    assert judge(stream(data[:-1]), e.candidates()).lost == 1  # one byte short
    assert judge(stream(None), e.candidates()).lost == len(data)  # missing


def test_a_refused_new_file_may_be_absent_or_partly_there(tmp_path) -> None:
    new = os.urandom(2 * MiB)
    e = Entry("f")
    e.refused(version(tmp_path, new))
    assert judge(stream(None), e.candidates()).ok
    assert judge(stream(new), e.candidates()).ok
    partial = new[: MiB + 3] + bytes(MiB - 3)  # uploaded in part: the rest reads zero
    assert judge(stream(partial), e.candidates()).ok
    assert judge(stream(new[:100]), e.candidates()).ok  # a staged prefix, uploaded later
    garbage = new[:MiB] + b"\x01" * MiB
    lost = judge(stream(garbage), e.candidates()).lost  # a 0x01 of ``new`` matches by chance
    assert MiB - MiB // 64 < lost <= MiB


def test_a_refused_write_may_be_there_in_part_but_never_loses_the_acknowledged(tmp_path) -> None:
    old = os.urandom(MiB)
    e = Entry("f", known=version(tmp_path, old))
    patch = os.urandom(5000)
    e.refused(e.known.patched(1234, patch))
    new = old[:1234] + patch + old[1234 + 5000 :]
    assert judge(stream(old), e.candidates()).ok
    assert judge(stream(new), e.candidates()).ok
    split = 1234 + 2777  # the write cut anywhere, not on a block boundary
    assert judge(stream(new[:split] + old[split:]), e.candidates()).ok
    lost = bytearray(old)
    lost[900_000] ^= 0xFF  # outside the refused write: acknowledged data changed
    assert judge(stream(bytes(lost)), e.candidates()).lost == 1
    assert judge(stream(None), e.candidates()).lost == len(old)  # the file must exist


def test_an_acknowledged_write_is_never_optional(tmp_path) -> None:
    old = os.urandom(MiB)
    e = Entry("f", known=version(tmp_path, old))
    e.acknowledged(e.known.patched(10, b"acknowledged"))
    v = judge(stream(old), e.candidates())
    assert not v.ok and v.lost == sum(
        a != b for a, b in zip(old[10:22], b"acknowledged", strict=True)
    )


def test_a_deleted_file_that_comes_back_is_a_failure(tmp_path) -> None:
    e = Entry("f", known=ABSENT)
    assert judge(stream(None), e.candidates()).ok
    v = judge(stream(b""), e.candidates())  # even empty
    assert not v.ok and v.lost >= 1
    e.refused(version(tmp_path, b"x"))  # a refused new file: there or not
    assert judge(stream(b"x"), e.candidates()).ok


def test_a_refused_rm_leaves_the_file_whole_zeroed_or_gone(tmp_path) -> None:
    """Sheepdog deletes a VDI by zeroing its index first: a delete a fault cut off may
    leave the file there with zeros; never cut short, never other data."""
    data = os.urandom(MiB)
    e = Entry("f", known=version(tmp_path, data))
    e.refused(ABSENT)
    assert judge(stream(None), e.candidates()).ok and judge(stream(data), e.candidates()).ok
    assert judge(stream(bytes(MiB)), e.candidates()).ok
    assert judge(stream(data[:1000]), e.candidates()).lost == MiB - 1000  # not cut short
    other = os.urandom(MiB)
    assert judge(stream(other), e.candidates()).lost > MiB - MiB // 64  # nor other data
    e = Entry("f", known=version(tmp_path, data))
    e.refused(version(tmp_path, os.urandom(MiB), "new"))  # a refused write: no zeros
    assert judge(stream(bytes(MiB)), e.candidates()).lost > MiB - MiB // 64


def test_a_refused_replace_by_a_shorter_file_bounds_the_size(tmp_path) -> None:
    old, new = os.urandom(2 * MiB), os.urandom(MiB)
    e = Entry("f", known=version(tmp_path, old, "old"))
    e.refused(version(tmp_path, new, "new"))
    assert judge(stream(old), e.candidates()).ok and judge(stream(new), e.candidates()).ok
    assert judge(stream(old + b"\0"), e.candidates()).lost == 1  # longer than either


def test_only_a_settled_file_takes_an_operation(tmp_path) -> None:
    e = Entry("f")
    e.refused(version(tmp_path, b"abc"))
    with pytest.raises(AssertionError):
        e.refused(ABSENT)
    e.acknowledged(ABSENT)  # settled: what the cluster held
    assert e.settled and e.candidates() == [ABSENT]


def test_a_version_reads_its_base_with_patches_and_zeros_past_it(tmp_path) -> None:
    v = version(tmp_path, b"0123456789").patched(3, b"ab").patched(12, b"Z").grown(20)
    assert v.read(0, 20) == b"012ab56789\0\0Z" + bytes(7)
    assert v.read(18, 10) == bytes(2)


@pytest.mark.parametrize("base", [b"0123456789", None])
def test_a_version_made_one_file_holds_its_patches_where_they_were_written(tmp_path, base) -> None:
    """Found by the soak: the shadow file was opened for appending, so every patch landed
    at its end and was cut off again, and rsync's source lacked the change it was to make
    (and every earlier dd or fio write of the file)."""
    v = version(tmp_path, base) if base is not None else Version(True, 10)
    v = v.patched(3, b"ab").patched(12, b"Z").grown(20)
    made = materialize(v, tmp_path / "made")
    assert (tmp_path / "made").read_bytes() == v.read(0, 20)
    assert made.read(0, 20) == v.read(0, 20) and made.size == 20 and not made.patches


def test_a_refused_in_place_rsync_may_leave_zeros_other_refusals_not(tmp_path) -> None:
    """Found by the soak: an in-place rsync whose reads of the file failed under a cluster
    restart wrote zeros, in its own block size, where it copied blocks within the file
    (rsync fills a block it cannot read with zeros), and only then failed."""
    old = os.urandom(MiB)
    new = old[:1000] + os.urandom(5000) + old[6000:]
    holed = bytearray(old)
    holed[300_000:310_128] = bytes(10_128)  # two of rsync's blocks, copied from an unreadable place
    for zeros in (False, True):
        e = Entry("f", known=version(tmp_path, old))
        e.refused(version(tmp_path, new, "new"), zeros=zeros)
        assert judge(stream(new), e.candidates(), zeros=e.maybe_zeros).ok
        lost = judge(stream(bytes(holed)), e.candidates(), zeros=e.maybe_zeros).lost
        assert (lost == 0) is zeros
        e.acknowledged(e.known)  # settled: zeros no longer allowed
        assert not e.maybe_zeros and judge(stream(bytes(holed)), e.candidates()).lost > 0


# -- the report ----------------------------------------------------------------------------


def test_the_last_line_and_the_exit_code() -> None:
    r = Report(seed=5, replay="scripts/soak --seed 5")
    r.op_done("cp_new", True)
    r.op_done("dd", False)
    ev = r.fault_started("sheepfs_kill")
    r.fault_ended(ev)
    r.verified_one()
    assert r.summary() == (
        "soak: 2 ops, 1 faults injected, 1 files verified, 0 bytes lost, 0 hangs, 0 crashes"
    )
    assert r.exit_code() == 0
    r.lose(7, "f: 7 bytes differ", "dd f at 3.0 s", r.now())
    lines = r.lines(["node_kill", "sheepfs_kill"])
    assert lines[-1].endswith("7 bytes lost, 0 hangs, 0 crashes") and r.exit_code() == 1
    assert "soak: faults injected: node_kill 0, sheepfs_kill 1" in lines
    [failed] = [line for line in lines if "FAILED" in line]
    assert "dd f at 3.0 s" in failed and "sheepfs_kill" in failed and "--seed 5" in failed


@pytest.mark.parametrize("what", ["hang", "crash"])
def test_a_hang_or_a_crash_alone_fails_the_run(what) -> None:
    r = Report(seed=1, replay="")
    if what == "hang":
        r.hang("cp", 0.0, "cp still running after 9 s")
    else:
        r.crash("sheepfs died")
    assert r.exit_code() == 1
    assert r.summary().endswith("1 hangs, 0 crashes" if what == "hang" else "0 hangs, 1 crashes")


def test_an_exit_1_after_sigterm_is_a_crash_unless_the_cluster_refused_the_save() -> None:
    """A save the cluster refused (a VDI a cut-off snapshot left without its inode) keeps
    its data in the spool, as the log says; one sheepfs got wrong is a crash."""
    from soaklib.faults import cluster_refused

    start = "INFO sheepfs.fuse.mount: SIGTERM: saving pending data, then unmounting\n"
    theirs = ("E ERROR sheepfs.core.openfiles: snapshot 'v' failed: Failed to write object "
              "805e531600000000: No object found; the new data is kept in /s/1.data\n")  # fmt: skip
    ours = ("E ERROR sheepfs.core.openfiles: create 'v' failed: Failed to create VDI v: "
            "VDI exists already; the new data is kept in /s/1.data\n")  # fmt: skip
    assert "No object found" in cluster_refused(start + theirs)
    assert cluster_refused(start + theirs + ours) == ""
    assert cluster_refused(theirs + start) == ""  # before this shutdown: not its errors
    assert cluster_refused(start) == ""  # exit 1 with no error said: a crash


def test_a_cluster_whose_operations_hang_on_every_node_is_restarted_once() -> None:
    """Sheepdog's local cluster driver can stop every lookup, create and delete for good
    after a node kill (docs/SHEEPDOG.md F26): the soak restarts such a cluster and says so,
    and leaves one that answers alone."""
    import random

    from soaklib.faults import Injector
    from soaklib.target import RealTarget

    class Wedged(RealTarget):
        def __init__(self) -> None:  # no cluster: what the injector asks of one, recorded
            self.nodes, self.calls, self.hung = 3, [], True

        def wedged(self) -> bool:
            return self.hung

        def stop(self) -> None:
            self.calls.append("stop")

        def start(self) -> None:
            self.calls.append("start")
            self.hung = False

    target, report = Wedged(), Report(seed=1, replay="")
    faults = Injector(None, random.Random(1), target, None, None, None, report)
    faults.unwedge("after node_kill")
    assert target.calls == ["stop", "start"] and not faults.down
    assert any("hung on every node after node_kill" in n and "F26" in n for n in report.notes)
    faults.unwedge("at the end")
    assert target.calls == ["stop", "start"] and len(report.notes) == 1
    assert report.exit_code() == 0  # the cluster's fault, said, not sheepfs's


# -- the proxy -----------------------------------------------------------------------------


def echo(c: socket.socket) -> None:
    while data := c.recv(65536):
        c.sendall(data)


def echo_server() -> socket.socket:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()

    def serve() -> None:
        while True:
            try:
                c, _ = srv.accept()
            except OSError:
                return
            threading.Thread(target=echo, args=(c,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    return srv


def test_the_proxy_holds_replies_until_released_and_loses_none() -> None:
    srv = echo_server()
    proxy = ProxyProcess([("127.0.0.1", srv.getsockname()[1])])
    try:
        c = socket.create_connection(("127.0.0.1", proxy.ports[0]), timeout=5)
        c.sendall(b"ping")
        assert c.recv(4) == b"ping"
        proxy.hold(0)
        c.sendall(b"held")  # the request goes through; its reply does not
        c.settimeout(0.5)
        with pytest.raises(TimeoutError):
            c.recv(4)
        proxy.release(0)
        c.settimeout(5)
        assert c.recv(4) == b"held"  # late, but whole
        [(relayed, conns)] = proxy.stats()
        assert relayed == 8 and conns == 1
        c.close()
    finally:
        proxy.close()
        srv.close()


def test_the_proxy_of_a_dead_sheep_closes_connections_at_once() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nobody listens there once closed
    proxy = ProxyProcess([("127.0.0.1", port)])
    try:
        c = socket.create_connection(("127.0.0.1", proxy.ports[0]), timeout=5)
        start = time.monotonic()
        assert c.recv(1) == b"" and time.monotonic() - start < 3
    finally:
        proxy.close()


# -- a short run ---------------------------------------------------------------------------


@pytest.mark.timeout(400)
@pytest.mark.skipif(os.geteuid() != 0, reason="the soak mounts its spool disk (tmpfs): root")
def test_a_short_soak_on_the_fake_dog_ends_clean_and_leaves_nothing() -> None:
    before = soak_mounts()
    argv = [sys.executable, str(ROOT / "scripts" / "soak"), "--fake", "--duration", "20",
            "--seed", "3", "--max-size", "16M", "--fault-gap", "3"]  # fmt: skip
    p = subprocess.run(argv, capture_output=True, text=True, timeout=380,
                       env={**os.environ, "SHEEPFS_REQUIRE_REAL": ""})  # fmt: skip
    lines = p.stdout.strip().splitlines()
    assert p.returncode == 0, p.stdout + p.stderr[-3000:]
    assert lines[0].startswith("soak: seed 3, 20 s, dog backend, fake dog (--fake")
    last = lines[-1]
    assert last.startswith("soak: ") and " ops, " in last and " faults injected, " in last
    assert last.endswith(" 0 bytes lost, 0 hangs, 0 crashes")
    ops = int(last.split()[1])
    faults = int(last.split(", ")[1].split()[0])
    assert ops > 20 and faults >= 2
    assert soak_mounts() <= before  # its spool disk, its mount point: all gone


def soak_mounts() -> set[str]:
    """Mounts a soak made (another soak may run beside this test)."""
    with open("/proc/mounts") as f:
        return {line.split()[1] for line in f if "sheepfs-soak-" in line}


@pytest.mark.real
@pytest.mark.timeout(900)
@pytest.mark.parametrize("backend", ["dog", "sheep"])
@pytest.mark.skipif(os.geteuid() != 0, reason="the soak mounts its spool disk (tmpfs): root")
def test_a_two_minute_soak_on_a_real_cluster_loses_nothing(backend) -> None:
    """The soak meant for CI: 2 minutes of the whole workload under every kind of fault, on
    a throwaway real cluster of its own. A random seed each run (``SHEEPFS_SOAK_SEED`` sets
    one); a failure prints it, with the command that replays it."""
    from tests.realcluster import find_sheepdog

    if isinstance(why := find_sheepdog(), str):
        if os.environ.get("SHEEPFS_REQUIRE_REAL"):  # CI: it must run
            pytest.fail(f"no real Sheepdog: {why}")
        pytest.skip(f"no real Sheepdog: {why}")
    seed = os.environ.get("SHEEPFS_SOAK_SEED") or str(int.from_bytes(os.urandom(3), "big"))
    argv = [sys.executable, str(ROOT / "scripts" / "soak"), "--duration", "120", "--backend",
            backend, "--seed", seed, "--max-size", "128M", "--fault-gap", "6"]  # fmt: skip
    p = subprocess.run(argv, capture_output=True, text=True, timeout=840)
    assert p.returncode == 0, f"seed {seed}:\n" + p.stdout + p.stderr[-3000:]
    first, last = p.stdout.splitlines()[0], p.stdout.strip().splitlines()[-1]
    assert f"{backend} backend, real cluster" in first
    assert last.endswith(" 0 bytes lost, 0 hangs, 0 crashes")
