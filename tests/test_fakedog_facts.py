"""The fake dog's own tests: one per fact of the real CLI it reproduces (docs/SHEEPDOG.md).

sheepfs is only as right as this fake is faithful, so each trap of the real CLI is pinned.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time

import pytest

from sheepfs.backends.dog.listing import parse_vdi_list
from tests.fakedog import control
from tests.helpers import run_threads

pytestmark = pytest.mark.timeout(120)
MiB = 1 << 20


@pytest.fixture
def store(tmp_path):
    return control.init_store(tmp_path / "store")


def dog(store, *args, stdin=b""):
    return control.run(store, *args, stdin=stdin)


def ok(store, *args, stdin=b"") -> bytes:
    r = dog(store, *args, stdin=stdin)
    assert r.returncode == 0, r.stderr
    return r.stdout


def rows(store, *name):
    return parse_vdi_list(ok(store, "vdi", "list", "-r", *name))


# -- section 0 -------------------------------------------------------------------------------


def test_write_without_len_zero_fills_the_rest_of_the_object(store):
    ok(store, "vdi", "create", "w", "10M")
    ok(store, "vdi", "write", "w", "0", str(8 * MiB), stdin=b"\xaa" * (8 * MiB))
    ok(store, "vdi", "write", "w", "100", stdin=b"XY")
    data = ok(store, "vdi", "read", "w", "0", str(8 * MiB))
    assert data[100:102] == b"XY"
    assert data[102 : 4 * MiB] == bytes(4 * MiB - 102)  # wiped to the object boundary
    assert data[4 * MiB :] == b"\xaa" * (4 * MiB)  # the next object is untouched


def test_short_stdin_is_zero_padded_to_len(store):
    ok(store, "vdi", "create", "w", "1M")
    ok(store, "vdi", "write", "w", "0", "16", stdin=b"\xff" * 16)
    ok(store, "vdi", "write", "w", "0", "16", stdin=b"SHORT")
    assert ok(store, "vdi", "read", "w", "0", "16") == b"SHORT" + bytes(11)
    ok(store, "vdi", "write", "w", "0", "8", stdin=b"")
    assert ok(store, "vdi", "read", "w", "0", "8") == bytes(8)


def test_extra_stdin_is_not_read(store):
    ok(store, "vdi", "create", "w", "1M")
    ok(store, "vdi", "write", "w", "8192", "4", stdin=b"0123456789")
    assert ok(store, "vdi", "read", "w", "8192", "8") == b"0123" + bytes(4)


def two_writers_at_once(store, name: str) -> bytes:
    """Write 1 KiB of A at 0 and of B at 2 MiB with two dog processes at once; read back."""
    procs = [
        subprocess.Popen(
            [control.dog_path(), "vdi", "write", name, str(off), "1024"],
            stdin=subprocess.PIPE,
            env=control.env(store),
        )
        for off in (0, 2 * MiB)
    ]
    for p, byte in zip(procs, (b"A", b"B"), strict=True):
        p.stdin.write(byte * 1024)
        p.stdin.close()
    for p in procs:
        assert p.wait(30) == 0
    return ok(store, "vdi", "read", name)


def test_concurrent_first_writes_to_one_object_lose_data(store):
    """SHEEPDOG.md F2: each writer CREATE_AND_WRITEs the whole object; the last one wins."""
    losses = 0
    for trial in range(6):
        name = f"race{trial}"
        ok(store, "vdi", "create", name, "4M")
        data = two_writers_at_once(store, name)
        losses += data[:1024] != b"A" * 1024 or data[2 * MiB : 2 * MiB + 1024] != b"B" * 1024
    assert losses > 0


def test_concurrent_writes_to_an_allocated_object_are_safe(store):
    ok(store, "vdi", "create", "safe", "4M")
    ok(store, "vdi", "write", "safe", "0", "1", stdin=b"x")  # allocate the object
    data = two_writers_at_once(store, "safe")
    assert data[:1024] == b"A" * 1024 and data[2 * MiB : 2 * MiB + 1024] == b"B" * 1024


def test_delete_exits_0_even_when_it_fails(store):
    r = dog(store, "vdi", "delete", "nosuch")
    assert r.returncode == 0
    assert b"No VDI found" in r.stderr
    control.set_config(store, port=7001)
    ok(store, "vdi", "create", "-p", "7001", "x", "1M")
    r = dog(store, "vdi", "delete", "x")  # the default port now has nobody
    assert r.returncode == 0 and b"I/O error" in r.stderr
    control.set_config(store, port=7000, formatted=False)
    r = dog(store, "vdi", "delete", "x")
    assert r.returncode == 0 and b"Waiting for cluster to be formatted" in r.stderr


def test_usage_goes_to_stdout_with_exit_64(store):
    ok(store, "vdi", "create", "v", "1M")
    r = dog(store, "vdi", "read", "v", "0", "1X")
    assert r.returncode == 64
    assert r.stdout.startswith(b"Usage: dog vdi read")
    assert b"Invalid size '1X'" in r.stderr


def test_names_are_escaped_in_raw_list_and_tags_are_not(store):
    for name in ("has space", "back\\slash", "tab\there", "new\nline", "uni-ü-名前", "sl/ash"):
        ok(store, "vdi", "create", "--", name, "1M")
    out = ok(store, "vdi", "list", "-r")
    assert b"= has\\ space 0 " in out
    assert b"= back\\\\slash 0 " in out
    assert b"= tab\\\there 0 " in out
    assert b"= new\\\nline 0 " in out
    assert "= uni-ü-名前 0 ".encode() in out and b"= sl/ash 0 " in out
    ok(store, "vdi", "snapshot", "-s", "my tag", "has space")
    assert b" 2 my tag 22\n" in ok(store, "vdi", "list", "-r", "has space")


def test_empty_tag_gives_two_spaces(store):
    ok(store, "vdi", "create", "e", "1M")
    assert ok(store, "vdi", "list", "-r", "e").endswith(b" 2  22\n")


def test_long_names_are_silently_truncated_to_255(store):
    long = "x" * 300
    ok(store, "vdi", "create", long, "1M")
    assert ok(store, "vdi", "list", "-r", long) == b""  # the full name matches nothing
    assert [r.name for r in rows(store)] == [b"x" * 255]
    assert len(ok(store, "vdi", "read", long, "0", "4")) == 4  # read truncates too


def test_dash_name_needs_double_dash(store):
    r = dog(store, "vdi", "create", "-dash", "1M")
    assert r.returncode == 64
    assert r.stderr == b"dog: invalid option -- 'd'\nTry 'dog --help' for more information.\n"
    ok(store, "vdi", "create", "--", "-dash", "1M")
    assert [r.name for r in rows(store)] == [b"-dash"]


def test_a_hanging_cluster_blocks_forever(store):
    control.set_config(store, hang=True)
    with pytest.raises(subprocess.TimeoutExpired):
        control.run(store, "vdi", "list", "-r", timeout=2)


# -- section 4 --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "size, want",
    [("1G", 1 << 30), ("12345", 12345), ("0", 0), ("1.5G", 1610612736), ("0x1000", 4096),
     ("4T", 4 << 40)],
)  # fmt: skip
def test_create_sizes(store, size, want):
    ok(store, "vdi", "create", "s", size)
    assert rows(store, "s")[0].size == want


def test_create_errors(store):
    ok(store, "vdi", "create", "a", "1M")
    r = dog(store, "vdi", "create", "a", "1M")
    assert (r.returncode, r.stderr) == (1, b"Failed to create VDI a: VDI exists already\n")
    r = dog(store, "vdi", "create", "b")
    assert r.returncode == 64 and r.stderr == b"Please specify the VDI size\n"
    r = dog(store, "vdi", "create", "b", "5T")
    assert r.returncode == 64 and b"larger than 4.0 TB" in r.stderr
    ok(store, "vdi", "create", "-y", "hyper", "5T")
    ok(store, "vdi", "create", "-z", "23", "big8m", "5T")
    assert rows(store, "big8m")[0].block_size_shift == 23
    r = dog(store, "vdi", "create", "-z", "19", "tiny", "10M")
    assert r.returncode == 1 and b"larger than 2^20" in r.stderr
    assert (
        ok(store, "vdi", "create", "-v", "kappa", "1M") == b"VDI ID of newly created VDI: a7d788\n"
    )


def test_empty_name_is_created_but_never_listed(store):
    ok(store, "vdi", "create", "", "1M")
    assert rows(store) == []
    r = dog(store, "vdi", "create", "", "1M")
    assert r.stderr == b"Failed to create VDI : VDI exists already\n"


def test_vids_hash_from_the_name_and_move_on_snapshot(store):
    ok(store, "vdi", "create", "alpha", "10M")
    assert rows(store, "alpha")[0].vid == 0xED202B
    ok(store, "vdi", "snapshot", "-s", "t1", "alpha")
    listed = rows(store, "alpha")
    assert [(r.kind, r.vid, r.snap_id) for r in listed] == [("s", 0xED202B, 1), ("=", 0xED202C, 0)]


def test_rows_in_vid_order_and_missing_name(store):
    for name in ("alpha", ".", "zero"):
        ok(store, "vdi", "create", "--", name, "1M")
    assert [r.name for r in rows(store)] == [b".", b"zero", b"alpha"]  # 18bb1, 60a383, ed202b
    r = dog(store, "vdi", "list", "-r", "nosuch")
    assert (r.returncode, r.stdout, r.stderr) == (0, b"", b"")
    r = dog(store, "vdi", "list", "nosuch")
    assert r.stdout.startswith(b"  Name ") and r.stdout.count(b"\n") == 1


def test_used_and_shared_follow_the_index(store):
    ok(store, "vdi", "create", "u", "12M")
    ok(store, "vdi", "write", "u", "0", "1", stdin=b"a")
    ok(store, "vdi", "write", "u", str(9 * MiB), "1", stdin=b"b")
    assert (rows(store, "u")[0].used, rows(store, "u")[0].shared) == (8 * MiB, 0)
    ok(store, "vdi", "snapshot", "u")
    ok(store, "vdi", "write", "u", "0", "1", stdin=b"c")  # copy-on-write of object 0
    working = [r for r in rows(store, "u") if r.kind == "="][0]
    assert (working.used, working.shared) == (4 * MiB, 4 * MiB)
    assert ok(store, "vdi", "read", "-s", "1", "u", "0", "1") == b"a"
    assert ok(store, "vdi", "read", "u", "0", "1") == b"c"


def test_read_range_rules(store):
    ok(store, "vdi", "create", "beta", "10M")
    size = 10 * MiB
    assert len(ok(store, "vdi", "read", "beta", "3", "5")) == 5
    assert len(ok(store, "vdi", "read", "beta", str(size - 10), "100")) == 10
    assert ok(store, "vdi", "read", "beta", str(size), "100") == b""
    r = dog(store, "vdi", "read", "beta", str(size + 1), "1")
    assert r.returncode == 1 and r.stderr == b"Read offset is beyond the end of the VDI\n"
    assert len(ok(store, "vdi", "read", "beta")) == size
    assert len(ok(store, "vdi", "read", "beta", "10000000")) == size - 10000000
    assert ok(store, "vdi", "read", "beta", "0", "0") == b""
    r = dog(store, "vdi", "read", "nosuch", "0", "16")
    assert r.returncode == 1
    assert r.stderr == b"Failed to open VDI nosuch (snapshot id: 0 snapshot tag: ): No VDI found\n"


def test_read_killed_by_sigpipe_when_stdout_closes(store):
    ok(store, "vdi", "create", "big", "64M")
    p = subprocess.Popen([control.dog_path(), "vdi", "read", "big"], stdout=subprocess.PIPE,
                         env=control.env(store))  # fmt: skip
    p.stdout.read(4096)
    p.stdout.close()
    assert p.wait(30) == -13  # SIGPIPE, as the real dog (exit 141 in a shell)


def test_write_range_rules(store):
    ok(store, "vdi", "create", "wt", "10M")
    size = 10 * MiB
    ok(store, "vdi", "write", "wt", str(size - 4), "8", stdin=b"ABCDEFGH")
    assert ok(store, "vdi", "read", "wt", str(size - 4)) == b"ABCD"  # clipped at the end
    ok(store, "vdi", "write", "wt", str(size), "8", stdin=b"ABCDEFGH")
    r = dog(store, "vdi", "write", "wt", str(size + 1), "8", stdin=b"ABCDEFGH")
    assert r.returncode == 1 and r.stderr == b"Write offset is beyond the end of the VDI\n"
    ok(store, "vdi", "write", "wt", str(4 * MiB - 4), "8", stdin=b"ABCDEFGH")
    assert ok(store, "vdi", "read", "wt", str(4 * MiB - 4), "8") == b"ABCDEFGH"
    r = dog(store, "vdi", "write", "-s", "t", "wt", "0", "1", stdin=b"x")
    assert r.returncode == 64 and b"invalid option -- 's'" in r.stderr


def test_resize_grows_only(store):
    ok(store, "vdi", "create", "rs", "10M")
    ok(store, "vdi", "resize", "rs", "20M")
    assert rows(store, "rs")[0].size == 20 * MiB
    r = dog(store, "vdi", "resize", "rs", "5M")
    assert r.returncode == 64 and r.stderr == b"Shrinking VDIs is not implemented\n"
    assert r.stdout.startswith(b"Usage: dog vdi resize")
    r = dog(store, "vdi", "resize", "rs", "5T")
    assert r.returncode == 64 and b"max size is 4398046511104" in r.stderr
    assert dog(store, "vdi", "resize", "nosuch", "1G").returncode == 1


def test_delete_keeps_snapshots_and_a_new_vdi_gets_a_new_vid(store):
    ok(store, "vdi", "create", "d", "1M")
    ok(store, "vdi", "write", "d", "0", "2", stdin=b"v1")
    ok(store, "vdi", "snapshot", "-s", "keep", "d")
    ok(store, "vdi", "delete", "d")
    assert [r.kind for r in rows(store, "d")] == ["s"]
    assert dog(store, "vdi", "read", "d", "0", "2").returncode == 1
    assert ok(store, "vdi", "read", "-s", "keep", "d", "0", "2") == b"v1"
    ok(store, "vdi", "create", "d", "1M")
    assert ok(store, "vdi", "read", "d", "0", "2") == bytes(2)  # new data starts zeroed
    ok(store, "vdi", "delete", "-s", "keep", "d")
    assert [r.kind for r in rows(store, "d")] == ["="]


def test_snapshot_and_clone(store):
    ok(store, "vdi", "create", "base", "1M")
    ok(store, "vdi", "write", "base", "0", "2", stdin=b"V1")
    r = dog(store, "vdi", "snapshot", "-s", "5", "base")
    assert r.returncode == 64 and b"non-integer" in r.stderr
    ok(store, "vdi", "snapshot", "-s", "t1", "base")
    r = dog(store, "vdi", "snapshot", "-s", "t1", "base")
    assert r.returncode == 1 and b"is existed" in r.stderr
    r = dog(store, "vdi", "clone", "base", "c0")
    assert r.returncode == 64 and b"Only snapshot VDIs can be cloned" in r.stderr
    ok(store, "vdi", "clone", "-s", "t1", "base", "c1")
    assert rows(store, "c1")[0].kind == "c"
    ok(store, "vdi", "write", "c1", "0", "2", stdin=b"C1")
    assert ok(store, "vdi", "read", "-s", "t1", "base", "0", "2") == b"V1"
    ok(store, "vdi", "delete", "-s", "t1", "base")  # clones outlive their snapshot
    assert ok(store, "vdi", "read", "c1", "0", "2") == b"C1"
    ok(store, "vdi", "snapshot", "-s", "t2", "base")
    ok(store, "vdi", "clone", "-n", "-s", "t2", "base", "full")
    assert rows(store, "full")[0].kind == "="


def test_unreachable_cluster(store):
    expect = b"failed to connect to 127.0.0.1:7999: Connection refused\n" * 2
    r = dog(store, "vdi", "list", "-r", "-p", "7999")
    assert (r.returncode, r.stderr) == (2, expect)
    r = dog(store, "vdi", "create", "q", "1M", "-p", "7999")
    assert (r.returncode, r.stderr) == (2, expect + b"Failed to get node list\n")
    r = dog(store, "vdi", "read", "alpha", "0", "1", "-p", "7999")
    assert r.returncode == 1 and r.stderr.endswith(b"I/O error\n")
    control.set_config(store, reachable=False)
    assert dog(store, "node", "list", "-r").returncode == 2


def test_unformatted_cluster(store):
    control.set_config(store, formatted=False)
    r = dog(store, "vdi", "create", "x", "1M")
    assert (r.returncode, r.stderr) == (
        1,
        b"Failed to create VDI x: Waiting for cluster to be formatted\n",
    )  # noqa: E501
    assert ok(store, "vdi", "list", "-r") == b""
    assert b"Waiting for cluster to be formatted" in ok(store, "cluster", "info")


def test_node_list_and_info(store):
    assert ok(store, "node", "list", "-r") == (
        b"0 127.0.0.1:7000 128 0\n1 127.0.0.1:7001 128 1\n2 127.0.0.1:7002 128 2\n"
    )
    total = ok(store, "node", "info", "-r").splitlines()[-1].split(b" ")
    assert total[0] == b"Total" and len(total) == 6 and total[4].endswith(b"%")


def test_collie_prints_the_pre_1_0_list(store):
    ok(store, "vdi", "create", "old", "1M")
    r = control.run(store, "vdi", "list", "-r", dog=control.collie_path())
    assert r.stdout.endswith(b" 2 \n")  # no block_size_shift field
    assert parse_vdi_list(r.stdout)[0].name == b"old"
    r = control.run(store, "vdi", "create", "-x", "1M", dog=control.collie_path())
    assert r.stderr.startswith(b"collie: invalid option")


# -- the fake's own switches -------------------------------------------------------------------


def test_calls_are_logged(store):
    ok(store, "vdi", "create", "c", "1M")
    ok(store, "vdi", "list", "-r")
    assert control.calls(store) == [["vdi", "create", "c", "1M"], ["vdi", "list", "-r"]]
    assert control.count_calls(store, "vdi", "list") == 1


def test_call_cost_and_bandwidth(store):
    control.set_config(store, call_cost=0.3)
    start = time.monotonic()
    ok(store, "node", "list", "-r")
    assert time.monotonic() - start >= 0.3
    control.set_config(store, call_cost=0, bandwidth=8 * MiB)
    ok(store, "vdi", "create", "bw", "8M")
    start = time.monotonic()
    ok(store, "vdi", "read", "bw")
    assert time.monotonic() - start >= 0.9


def test_fault_rules(store):
    ok(store, "vdi", "create", "f", "8M")
    control.add_fault(store, {"match": ["vdi", "read"], "rc": 1, "times": 1,
                              "stderr": "Failed to read object 1: I/O error\n"})  # fmt: skip
    r = dog(store, "vdi", "read", "f", "0", "1")
    assert (r.returncode, r.stderr) == (1, b"Failed to read object 1: I/O error\n")
    assert dog(store, "vdi", "read", "f", "0", "1").returncode == 0  # only once
    control.clear_faults(store)
    control.add_fault(store, {"match": ["vdi", "write"], "kill": True, "after_bytes": 4 * MiB})
    r = dog(store, "vdi", "write", "f", "0", str(8 * MiB), stdin=b"k" * (8 * MiB))
    assert r.returncode == -9
    data = ok(store, "vdi", "read", "f")
    assert data[: 4 * MiB] == b"k" * (4 * MiB) and data[4 * MiB :] == bytes(4 * MiB)
    control.clear_faults(store)
    control.add_fault(store, {"match": ["vdi", "write"], "nospace": True})
    r = dog(store, "vdi", "write", "f", str(6 * MiB), "1", stdin=b"n")
    assert r.returncode == 1 and b"Server has no space for new objects" in r.stderr


def test_many_concurrent_callers_keep_the_state_sane(store):
    errors = []

    def create(i: int) -> None:
        r = dog(store, "vdi", "create", f"c{i}", "1M")
        if r.returncode:
            errors.append(r.stderr)

    run_threads([threading.Thread(target=create, args=(i,)) for i in range(16)])
    assert not errors
    assert sorted(r.name for r in rows(store)) == sorted(f"c{i}".encode() for i in range(16))
    assert os.path.exists(store / "state.json")
