"""scripts/bench never leaves anything in a cluster it did not make: not when it runs to the
end, not when it is interrupted in the middle. The cluster here is a fake dog's store, given
to the benchmark as a user's cluster would be (``--dog``, ``-a``, ``-p``)."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from tests.mounting import ROOT, make_store, wait_for

pytestmark = pytest.mark.timeout(300)
TINY = ["--size", "8M", "--runs", "1", "--vdis", "5", "--fio-runtime", "1",
        "--randwrite-runtime", "1", "--randwrite-size", "8M"]  # fmt: skip


def start_bench(store) -> subprocess.Popen:
    argv = [sys.executable, str(ROOT / "scripts" / "bench"), "--backend", "dog",
            "--dog", store.dog, "-a", "127.0.0.1", "-p", "7000", *TINY]  # fmt: skip
    return subprocess.Popen(
        argv,
        env=store.env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # Ctrl-C must reach it even where this suite runs with SIGINT ignored (a background
        # job of a shell): Python then keeps ignoring it instead of raising KeyboardInterrupt.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def nothing_left(store) -> None:
    assert sorted(store.vdis()) == [b"keep"]
    assert store.snapshots() == []
    with open("/proc/mounts") as f:
        assert "sheepfs-bench-" not in f.read()


def test_a_whole_run_deletes_every_vdi_it_made(tmp_path):
    store = make_store("dog", tmp_path / "store")
    store.create(b"keep", 4096, b"the user's own")
    p = start_bench(store)
    out, err = p.communicate(timeout=280)
    assert p.returncode == 0, err[-3000:]
    assert out.startswith("sheepfs benchmark: 8 MiB, median of 1 runs, real cluster (127.0.0.1")
    assert "| sequential read" in out and "| fio randwrite 4 KiB" in out, out
    nothing_left(store)
    assert store.read(b"keep")[:14] == b"the user's own"


def test_ctrl_c_in_the_middle_still_deletes_every_vdi_it_made(tmp_path):
    store = make_store("dog", tmp_path / "store")
    store.create(b"keep", 4096, b"the user's own")
    p = start_bench(store)
    stderr = p.stderr
    assert stderr is not None

    def third_test_or_the_end() -> bool:  # its progress lines: interrupt once a test is under way
        line = stderr.readline()
        return line.startswith("in-place overwrite") or line == ""  # "": it ended early

    wait_for(third_test_or_the_end, "the benchmark to get to its third test", 120, interval=0)
    assert store.vdis(), "the benchmark made no VDI before the interrupt"
    p.send_signal(signal.SIGINT)
    rest = stderr.read()
    assert p.wait(timeout=120) == 130, rest[-3000:]
    assert "interrupted: cleaning up" in rest
    nothing_left(store)
