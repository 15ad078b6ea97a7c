"""The status of a mount, in-process: what a snapshot says of staged files, uploads under
way, cached changes and backend calls; its JSON; the root's extended attributes that carry
it; its text for people; and the Prometheus metrics made of it."""

from __future__ import annotations

import errno
import json
import socket
import urllib.request

import pyfuse3
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry

from sheepfs.core import upload
from sheepfs.core.upload import slices
from sheepfs.errors import BackendError
from sheepfs.fuse import xattrs
from sheepfs.fuse.xattrs import ROOT, STATUS, RootXattrs
from sheepfs.metrics import StatusCollector, serve_metrics
from sheepfs.status import MAX_LISTED, Status, StatusSource, Where, progress_line
from sheepfs.statuscmd import StatusError, read_status, render
from tests.core_helpers import OBJ, SMALL, MiB, mount, new_file, open_name, write_file
from tests.memory_backend import MemoryBackend

WHERE = Where("/mnt/vdis", "127.0.0.1:7000", "sheep")


def source(fs) -> StatusSource:
    return StatusSource(fs, WHERE)


async def test_a_new_file_is_pending_until_its_close_uploads_it(tmp_path) -> None:
    backend = MemoryBackend()
    async with mount(backend, tmp_path) as fs:
        fh = await new_file(fs, b"new", b"x" * (3 * MiB))
        s = source(fs).snapshot()
        assert (s.files_open, s.handles, s.staged, s.pending_files) == (1, 1, 1, 1)
        p = s.pending[0]
        assert (p.name, p.state, p.size, p.done, p.uploading) == (
            "new",
            "staged",
            3 * MiB,
            0,
            False,
        )
        assert s.pending_bytes == 3 * MiB
        assert s.spool.used >= 3 * MiB and s.spool.free > 0 and s.spool.path.endswith("spool")
        await fs.flush(fh)
        await fs.release(fh)
        s = source(fs).snapshot()
        assert (s.files_open, s.staged, s.pending_files, s.pending_bytes) == (0, 0, 0, 0)
        assert s.pending == [] and s.files_uploaded == 1 and s.bytes_uploaded == 3 * MiB


async def test_progress_moves_while_an_upload_runs(tmp_path, monkeypatch) -> None:
    """Each slice of an upload counts when it is sent: done grows 0 -> size, one object at
    a time, and the file shows as being uploaded meanwhile."""
    monkeypatch.setattr(upload, "UPLOAD_SLICE", OBJ)
    backend = MemoryBackend()
    size = 4 * OBJ
    async with mount(backend, tmp_path) as fs:
        fh = await new_file(fs, b"big", b"y" * size)
        backend.delays["write"] = 0.05
        status, seen = source(fs), []

        async def watch() -> None:
            while True:
                s = status.snapshot()
                if s.pending:
                    seen.append((s.pending[0].done, s.pending[0].uploading))
                await trio.sleep(0.005)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch)
            await fs.flush(fh)
            nursery.cancel_scope.cancel()
        await fs.release(fh)
        assert status.snapshot().pending_files == 0
    dones = [d for d, uploading in seen if uploading]
    assert dones == sorted(dones), "progress never goes back"
    assert {OBJ, 2 * OBJ, 3 * OBJ} <= set(dones), seen


async def test_changes_to_a_live_file_are_pending_with_no_byte_count(tmp_path) -> None:
    backend = MemoryBackend()
    backend.put(b"disk", b"a" * MiB, block_size_shift=SMALL)
    async with mount(backend, tmp_path) as fs:
        fh = await open_name(fs, b"disk", writing=True)
        await fs.write(fh, 0, b"changed")
        s = source(fs).snapshot()
        assert [(p.name, p.state, p.done) for p in s.pending] == [("disk", "live", None)]
        assert s.pending_bytes == 0 and s.staged == 0
        await fs.flush(fh)
        assert source(fs).snapshot().pending_files == 0
        await fs.release(fh)


async def test_backend_calls_errors_and_latency_are_counted(tmp_path) -> None:
    backend = MemoryBackend(delay=0.002)
    async with mount(backend, tmp_path) as fs:
        await write_file(fs, b"a", b"data")
        backend.fail("create")
        fh = await new_file(fs, b"b", b"more")
        with pytest.raises(BackendError):
            await fs.flush(fh)
        s = source(fs).snapshot()
        assert s.calls.calls >= 3 and s.calls.errors == 1
        assert 0.002 <= s.calls.median <= s.calls.p99
        await fs.flush(fh)
        await fs.release(fh)


async def test_the_list_is_capped_and_its_json_fits_an_attribute(tmp_path) -> None:
    """However many files wait, the JSON stays far below an xattr's 64 KiB: the longest
    names (255 bytes that are no UTF-8) of 40 files, of which MAX_LISTED are listed."""
    backend = MemoryBackend()
    async with mount(backend, tmp_path) as fs:
        handles = [await new_file(fs, bytes([0xFF, i]) * 127 + b"z", b"d") for i in range(1, 41)]
        s = source(fs).snapshot()
        text = s.to_json()
        assert (len(s.pending), s.pending_files) == (MAX_LISTED, 40)
        assert len(text.encode()) < 60_000
        assert Status.from_json(text) == s
        assert s.pending[0].name.startswith("\\xff")
        for fh in handles:
            await fs.flush(fh)
            await fs.release(fh)


def test_json_from_a_newer_or_broken_daemon_is_refused() -> None:
    s = Status(WHERE)
    newer = json.loads(s.to_json()) | {"format": 99}
    for text in (json.dumps(newer), "[1, 2]", '{"where": 5}', "not json"):
        with pytest.raises(ValueError):
            Status.from_json(text)
    extra = json.loads(s.to_json()) | {"a_field_of_later_versions": 1}
    assert Status.from_json(json.dumps(extra)) == s


def test_slices_cut_runs_at_the_limit_and_keep_every_byte() -> None:
    runs = [(0, 10), (20, 25), (100, 3)]
    parts = list(slices(runs, 8))
    assert all(sum(n for _, n in part) <= 8 for part in parts)
    assert [sum(n for _, n in part) for part in parts] == [8, 8, 8, 8, 6]
    covered = [b for part in parts for off, n in part for b in range(off, off + n)]
    assert covered == [b for off, n in runs for b in range(off, off + n)]
    assert list(slices([], 8)) == []


# -- the root's extended attributes ---------------------------------------------------------


class Counting:
    """A snapshot source whose answer changes at every call."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> Status:
        self.calls += 1
        return Status(WHERE, uptime=self.calls, pending_files=self.calls)


def test_the_root_answers_the_status_and_other_inodes_have_no_attributes() -> None:
    x = RootXattrs(Counting())
    assert STATUS in x.names(ROOT) and b"user.sheepfs.pending_files" in x.names(ROOT)
    assert Status.from_json(x.get(ROOT, STATUS, pid=10)).where == WHERE
    assert x.get(ROOT, b"user.sheepfs.version", pid=10) == WHERE.version.encode()
    assert x.names(ROOT + 1) == []
    for inode, name in ((ROOT, b"user.other"), (ROOT, b"security.capability")):
        with pytest.raises(pyfuse3.FUSEError) as e:
            x.get(inode, name, pid=10)
        assert e.value.errno == errno.ENODATA
    with pytest.raises(pyfuse3.FUSEError) as e:  # files: ls -l asks once per mount, not per file
        x.get(ROOT + 1, STATUS, pid=10)
    assert e.value.errno == errno.ENOTSUP
    without = RootXattrs()
    assert without.names(ROOT) == []
    with pytest.raises(pyfuse3.FUSEError):
        without.get(ROOT, STATUS, pid=10)


def test_one_caller_sees_one_snapshot_for_the_size_and_the_value(monkeypatch) -> None:
    """getfattr asks the size, then the value: the same bytes both times (no ERANGE for a
    value grown in between), while another caller, or the same one later, gets news."""
    clock = [100.0]
    monkeypatch.setattr(xattrs.time, "monotonic", lambda: clock[0])
    x = RootXattrs(Counting())
    first = x.get(ROOT, STATUS, pid=10)
    assert x.get(ROOT, STATUS, pid=10) == first
    assert x.get(ROOT, STATUS, pid=11) != first
    clock[0] += xattrs.SAME_FOR
    assert x.get(ROOT, STATUS, pid=10) != first


def test_a_failing_snapshot_costs_the_answer_not_the_mount(caplog) -> None:
    def broken() -> Status:
        raise RuntimeError("bug")

    with pytest.raises(pyfuse3.FUSEError) as e:
        RootXattrs(broken).get(ROOT, STATUS, pid=1)
    assert e.value.errno == errno.EIO
    assert "the snapshot failed" in caplog.text


# -- for people ------------------------------------------------------------------------------


async def test_the_text_names_each_pending_file_with_its_progress(tmp_path) -> None:
    backend = MemoryBackend()
    async with mount(backend, tmp_path) as fs:
        fh = await new_file(fs, b"img", b"z" * (2 * MiB))
        s = source(fs).snapshot()
        text = render(s)
        assert "127.0.0.1:7000, sheep backend" in text
        assert "uploads pending: 1 (2.0 MiB to go)" in text
        assert "  img  0 B of 2.0 MiB (0%), staged" in text
        assert "files open: 1 (1 handle); new files staged: 1" in text
        assert progress_line(s) == "'img' 0 B of 2.0 MiB; 2.0 MiB to go"
        await fs.flush(fh)
        await fs.release(fh)
        s = source(fs).snapshot()
        assert "uploads pending: none" in render(s) and progress_line(s) is None


def test_a_directory_that_is_no_mount_says_so(tmp_path) -> None:
    with pytest.raises(StatusError, match="not a mount point"):
        read_status(str(tmp_path))
    with pytest.raises(StatusError, match="No such file"):
        read_status(str(tmp_path / "missing"))


# -- metrics ---------------------------------------------------------------------------------


def _metrics(text: str) -> dict[str, float]:
    return {
        sample.name + "".join(f"{{{v}}}" for v in sample.labels.values() if v != "1"): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_metrics_are_the_status_counters() -> None:
    from prometheus_client import generate_latest

    s = Status(WHERE, pending_files=2, pending_bytes=1234, errors=3)
    s.calls.calls, s.calls.median, s.calls.p99 = 17, 0.001, 0.25
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatusCollector(lambda: s))
    got = _metrics(generate_latest(registry).decode())
    assert got["sheepfs_uploads_pending"] == 2 and got["sheepfs_pending_bytes"] == 1234
    assert got["sheepfs_backend_calls_total"] == 17 and got["sheepfs_errors_total"] == 3
    assert got["sheepfs_backend_call_seconds{0.5}"] == 0.001
    assert got["sheepfs_backend_call_seconds{0.99}"] == 0.25
    empty = CollectorRegistry(auto_describe=False)
    empty.register(StatusCollector(lambda: None))  # no loop yet: nothing to show
    assert _metrics(generate_latest(empty).decode()) == {}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_metrics_are_served_over_http_and_a_busy_port_is_an_error() -> None:
    port = _free_port()
    serve_metrics("127.0.0.1", port, lambda: Status(WHERE, files_open=4))
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        assert _metrics(r.read().decode())["sheepfs_files_open"] == 4
    with pytest.raises(OSError):
        serve_metrics("127.0.0.1", port, lambda: None)


async def test_from_thread_takes_the_snapshot_in_the_loop(tmp_path) -> None:
    backend = MemoryBackend()
    async with mount(backend, tmp_path) as fs:
        status = source(fs)
        assert status.from_thread() is None  # not bound to a loop yet
        status.bind()
        await new_file(fs, b"f", b"1")
        s = await trio.to_thread.run_sync(status.from_thread)
        assert s is not None and s.staged == 1
