"""dog's raw output read in-process: the VDI list, its rows in neutral types, the node info,
and the classification of dog's stderr into exceptions (docs/SHEEPDOG.md F7, F17)."""

from __future__ import annotations

import pytest

from sheepfs.backends.base import Layout, VdiKind
from sheepfs.backends.dog.errors import error_for
from sheepfs.backends.dog.listing import (
    DogRow,
    parse_copies,
    parse_node_info,
    parse_vdi_list,
    to_vdi_info,
)
from sheepfs.errors import (
    BackendError,
    Exists,
    InvalidArgument,
    NoSpace,
    NotFound,
    NotPermitted,
    TooLarge,
    Unavailable,
)

MiB = 1 << 20

LISTING = (
    b"= plain 0 8388608 4194304 0 1700000000 7c2b25 2  22\n"
    b"s snap\\ with\\ spaces 3 8388608 0 4194304 1700000001 7c2b26 2:1 tag with spaces 23\n"
    b"c clone\\\\x 0 1048576 0 1048576 1700000002 7c2b27  22\n"
)


def test_rows_as_dog_prints_them() -> None:
    plain, snap, clone = parse_vdi_list(LISTING)
    assert (plain.name, plain.kind, plain.snap_id, plain.vid) == (b"plain", "=", 0, 0x7C2B25)
    assert (plain.size, plain.used, plain.copies, plain.tag) == (8 * MiB, 4 * MiB, "2", b"")
    assert plain.block_size_shift == 22 and plain.object_size == 4 * MiB and plain.is_file
    assert (snap.name, snap.kind, snap.snap_id, snap.shared) == (
        b"snap with spaces",
        "s",
        3,
        4 * MiB,
    )
    assert (snap.copies, snap.tag, snap.block_size_shift) == ("2:1", b"tag with spaces", 23)
    assert not snap.is_file
    assert (clone.name, clone.kind, clone.copies, clone.is_file) == (b"clone\\x", "c", "", True)


def test_rows_before_sheepdog_1_0_have_no_shift() -> None:
    (row,) = parse_vdi_list(b"s v 1 1048576 0 0 0 a 1 t 21\n", has_shift=False)
    assert row.tag == b"t 21" and row.block_size_shift == 22
    (row,) = parse_vdi_list(b"= v 0 1048576 0 0 0 a 1 \n")
    assert row.tag == b"" and row.block_size_shift == 22


def test_an_escaped_newline_stays_in_the_name() -> None:
    (row,) = parse_vdi_list(b"= a\\\nb 0 1 0 0 0 1 1  22\n")
    assert row.name == b"a\nb"


@pytest.mark.parametrize(
    "out",
    [b"x v 0 1 0 0 0 1 1  22\n", b"= v 0 1\n", b"= v 0 x 0 0 0 1 1  22\n", b"= unterminated"],
)
def test_malformed_rows_raise_value_error(out: bytes) -> None:
    with pytest.raises(ValueError):
        parse_vdi_list(out)


def test_hyper_follows_from_size() -> None:
    row = DogRow(b"h", "=", 0, (4 << 40) + 1, 0, 0, 0, 1, "", b"", 22)
    assert row.hyper and not DogRow(b"f", "=", 0, 4 << 40, 0, 0, 0, 1, "", b"", 22).hyper


@pytest.mark.parametrize(
    ("text", "expected"), [("", (0, 0)), ("2", (2, 0)), ("3", (3, 0)), ("4:2", (4, 2))]
)
def test_copies_field(text: str, expected: tuple[int, int]) -> None:
    assert parse_copies(text) == expected


@pytest.mark.parametrize("text", ["x", "2:", ":1", "2:x", "-1"])
def test_bad_copies_field(text: str) -> None:
    with pytest.raises(ValueError):
        parse_copies(text)


def test_rows_in_neutral_types() -> None:
    plain, snap, clone = (to_vdi_info(r) for r in parse_vdi_list(LISTING))
    assert plain.kind is VdiKind.WORKING and plain.layout == Layout(22, 2, 0)
    assert (plain.name, plain.size, plain.used, plain.ctime) == (
        b"plain",
        8 * MiB,
        4 * MiB,
        1700000000,
    )
    assert snap.kind is VdiKind.SNAPSHOT and snap.layout == Layout(23, 2, 1)
    assert (snap.snapshot_id, snap.tag, snap.object_size) == (3, b"tag with spaces", 8 * MiB)
    assert snap.layout.erasure_coded and not snap.is_file
    assert clone.kind is VdiKind.CLONE and clone.layout == Layout(22, 0, 0) and clone.is_file


def test_node_info_total_row() -> None:
    out = b"0 100 10 90 10%\n1 100 20 80 20%\nTotal 200 30 170 15% 0\n"
    stats = parse_node_info(out)
    assert (stats.total, stats.used, stats.avail) == (200, 30, 170)
    with pytest.raises(ValueError):
        parse_node_info(b"0 100 10 90 10%\n")


@pytest.mark.parametrize(
    ("stderr", "cls"),
    [
        (b"Failed to open VDI v (snapshot id: 0 snapshot tag: ): No VDI found\n", NotFound),
        (b"Failed to find requested tag t\n", NotFound),
        (b"Failed to create VDI v: VDI exists already\n", Exists),
        (b"Failed to create snapshot for v: tag t is existed\n", Exists),
        (b"Failed to write object: No space left\n", NoSpace),
        (b"creating a snapshot of hypervolume is not supported\n", NotPermitted),
        (b"Shrinking VDIs is not implemented\n", InvalidArgument),
        (b"Read offset is beyond the end of the VDI\n", InvalidArgument),
        (b"VDI size is larger than 4 TB bytes, please use '-y'\n", TooLarge),
        (b"New VDI size is too large. This volume's max size is 1\n", TooLarge),
        (b"failed to connect to 127.0.0.1:7000: Connection refused\n", Unavailable),
        (b"Failed to get node list\n", Unavailable),
        (b"Failed to create VDI v: Waiting for cluster to be formatted\n", Unavailable),
        (b"Invalid ip address 1.2.3\n", Unavailable),
    ],
)
def test_stderr_classification(stderr: bytes, cls: type[BackendError]) -> None:
    exc = error_for("op", b"v", 1, stderr)
    assert type(exc) is cls
    assert (exc.op, exc.name, exc.detail) == ("op", b"v", stderr.decode().strip())


def test_unknown_or_silent_failures_are_plain_backend_errors() -> None:
    exc = error_for("read", b"v", 3, b"something new\n  \nand more\n")
    assert type(exc) is BackendError and exc.detail == "something new; and more"
    silent = error_for("read", None, 2, b"")
    assert type(silent) is BackendError
    assert silent.detail == "dog exited with status 2 and said nothing"
