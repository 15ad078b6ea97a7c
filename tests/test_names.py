"""The name encoding on its own: every VDI name survives the round trip, no two VDIs share
a file name, names typed without escapes are the VDIs of those names and are listed as
typed, and the escapes and whole names of the rule (sheepfs/names.py) mean what it says."""

from __future__ import annotations

import errno
import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sheepfs.names import SNAPSHOTS_DIR, BadName, decode, encode

MAX = 255
#: Pieces that make the tricky cases likely: escapes, their look-alikes and the specials.
PIECES = [b"%", b"2", b"5", b"F", b"f", b"E", b"/", b".", b"snapshots", b"a", b"%25", b"%2F"]
tricky = st.lists(st.sampled_from(PIECES), min_size=1, max_size=12).map(b"".join)
anything = st.binary(min_size=1, max_size=MAX).filter(lambda b: b"\0" not in b)
vdi_names = st.one_of(tricky, anything, st.sampled_from([b".", b"..", SNAPSHOTS_DIR]))
WHOLE = (b"%2E", b"%2E%2E", b"%2Esnapshots")


def old_encode(vdi: bytes) -> bytes:
    """The encoding before names were kept as typed: every `%` written as `%25`."""
    if vdi in (b".", b".."):
        return {b".": b"%2E", b"..": b"%2E%2E"}[vdi]
    return vdi.replace(b"%", b"%25").replace(b"/", b"%2F")


def is_file_name(name: bytes) -> bool:
    """A name a directory entry of the mount's root could have."""
    return b"/" not in name and name not in (b".", b"..", SNAPSHOTS_DIR)


def typed(name: bytes) -> bool:
    """A name a user may type that the rule leaves alone."""
    return (
        b"/" not in name
        and b"%25" not in name
        and b"%2F" not in name
        and name not in WHOLE + (b".", b"..", SNAPSHOTS_DIR)
    )


@settings(max_examples=500)
@given(vdi=vdi_names)
def test_every_vdi_name_round_trips_and_is_a_file_name(vdi):
    shown = encode(vdi)
    assert decode(shown) == vdi
    assert shown and b"/" not in shown and b"\0" not in shown
    assert shown not in (b".", b"..", SNAPSHOTS_DIR)


@settings(max_examples=500)
@given(a=vdi_names, b=vdi_names)
def test_two_vdis_never_show_as_one_file(a, b):
    if a != b:
        assert encode(a) != encode(b)


def test_all_short_names_of_the_tricky_bytes_round_trip_and_are_told_apart():
    """Exhaustive up to 5 bytes over the bytes escapes are made of: every overlap of
    `%`, `25`, `2F` and `2E` is among them."""
    seen: dict[bytes, bytes] = {}
    for n in range(1, 6):
        for t in itertools.product(b"%25FfE/.a", repeat=n):
            vdi = bytes(t)
            shown = encode(vdi)
            assert decode(shown) == vdi, vdi
            assert seen.setdefault(shown, vdi) == vdi, (vdi, seen[shown])
            if typed(vdi):
                assert shown == vdi and decode(vdi) == vdi, vdi


@settings(max_examples=500)
@given(name=st.one_of(tricky, anything).filter(typed))
def test_a_name_typed_without_escapes_is_that_vdi_and_listed_as_typed(name):
    if len(name) <= MAX:
        assert decode(name) == name
    assert encode(name) == name


@settings(max_examples=500)
@given(name=st.one_of(tricky, anything).filter(is_file_name))
def test_every_accepted_file_name_is_the_listed_name_of_its_vdi_or_holds_a_needless_25(name):
    try:
        vdi = decode(name)
    except BadName as e:
        assert e.errno == errno.ENAMETOOLONG and len(name) > MAX
        return
    assert decode(encode(vdi)) == vdi  # the name it is listed under leads back to it
    if b"%25" not in name:
        assert encode(vdi) == name  # one name per VDI: aliases need a %25


@settings(max_examples=500)
@given(vdi=vdi_names.filter(lambda v: v != SNAPSHOTS_DIR))
def test_names_written_by_the_old_encoding_still_name_the_same_vdi(vdi):
    """All but `.snapshots`, which the snapshots directory took (its VDI: `%2Esnapshots`)."""
    assert decode(old_encode(vdi)) == vdi


@pytest.mark.parametrize(
    "vdi, shown",
    [
        (b"50%off.img", b"50%off.img"),
        (b"100%", b"100%"),
        (b"%", b"%"),
        (b"a%2", b"a%2"),
        (b"%zz", b"%zz"),
        (b"%2f", b"%2f"),  # escapes are upper-case: this is three bytes of a name
        (b"%2e", b"%2e"),
        (b"%%", b"%%"),
        (b"a/b", b"a%2Fb"),
        (b"/", b"%2F"),
        (b"%/", b"%%2F"),
        (b"%25", b"%2525"),
        (b"%2F", b"%252F"),
        (b"%%2F", b"%%252F"),
        (b"%252F", b"%25252F"),
        (b".", b"%2E"),
        (b"..", b"%2E%2E"),
        (b".snapshots", b"%2Esnapshots"),
        (b"%2E", b"%252E"),
        (b"%2E%2E", b"%252E%2E"),
        (b"%2Esnapshots", b"%252Esnapshots"),
        (b"x%2E", b"x%2E"),
        (b"...", b"..."),
        (b".snapshots2", b".snapshots2"),
        (b"-dash", b"-dash"),
    ],
)
def test_the_rule_by_example(vdi, shown):
    assert encode(vdi) == shown
    assert decode(shown) == vdi


@pytest.mark.parametrize(
    "file, vdi",
    [(b"50%25", b"50%"), (b"%25%25", b"%%"), (b"%25%2F", b"%/"), (b"%252E%252E", b"%2E%2E")],
)
def test_a_needless_25_still_reads_as_a_percent(file, vdi):
    assert decode(file) == vdi and encode(vdi) != file


@pytest.mark.parametrize("file", [b".", b"..", SNAPSHOTS_DIR, b""])
def test_directories_and_the_empty_name_are_not_vdis(file):
    with pytest.raises(BadName) as e:
        decode(file)
    assert e.value.errno == errno.EINVAL


def test_length_is_that_of_the_vdi_name():
    with pytest.raises(BadName) as e:
        decode(b"z" * (MAX + 1))
    assert e.value.errno == errno.ENAMETOOLONG
    assert decode(b"%2F" * MAX) == b"/" * MAX  # 765 bytes of file name, 255 of VDI name
