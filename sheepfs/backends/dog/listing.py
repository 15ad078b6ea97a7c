"""Parsers for dog's raw (``-r``) output, and dog's rows in the backend's neutral types.

``dog vdi list -r`` prints ``"%c " <escaped name> " %d %s %s %s %s %x %s %s %u\\n"``:
the name has ``\\`` before every isspace() byte and before ``\\``; the tag is printed raw, so
it may be empty (two spaces) or hold spaces (docs/SHEEPDOG.md F7). So: read the name up to the
first unescaped space, then exactly seven single-space fields, then the tag up to the last
token, which is block_size_shift (absent before Sheepdog 1.0: then the rest of the line is the
tag).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..base import DEFAULT_BLOCK_SIZE_SHIFT, FsStats, Layout, ObjectGeometry, VdiInfo, VdiKind

#: dog's kind letter -> the neutral kind.
_KINDS = {"=": VdiKind.WORKING, "s": VdiKind.SNAPSHOT, "c": VdiKind.CLONE}


@dataclass(frozen=True)
class DogRow(ObjectGeometry):
    """One row of ``dog vdi list -r``, as dog prints it (see :func:`to_vdi_info`)."""

    name: bytes
    kind: str  # "=" working, "s" snapshot, "c" clone
    snap_id: int
    size: int
    used: int
    shared: int
    ctime: int
    vid: int
    copies: str  # "" the cluster's default, "N" copies, "D:P" erasure coded
    tag: bytes
    block_size_shift: int = DEFAULT_BLOCK_SIZE_SHIFT

    @property
    def is_file(self) -> bool:
        """Working VDIs and clones are files; snapshots are not (yet)."""
        return self.kind in ("=", "c")

    @property
    def layout(self) -> Layout:
        """The object size and redundancy a VDI made again must keep (ValueError if the
        copies field is not ``N`` or ``D:P``)."""
        copies, parity = parse_copies(self.copies)
        return Layout(self.block_size_shift, copies, parity)


def parse_copies(text: str) -> tuple[int, int]:
    """dog's copies field as (copies, parity): "" (0, 0), "2" (2, 0), "2:1" (2, 1)."""
    if not text:
        return 0, 0
    data, sep, parity = text.partition(":")
    if not data.isdigit() or (sep and not parity.isdigit()):
        raise ValueError(f"bad copies field {text!r}")
    return int(data), int(parity) if sep else 0


def to_vdi_info(row: DogRow) -> VdiInfo:
    """The neutral :class:`VdiInfo` of a dog row (ValueError on a malformed copies field)."""
    return VdiInfo(
        name=row.name,
        size=row.size,
        used=row.used,
        ctime=row.ctime,
        kind=_KINDS[row.kind],
        layout=row.layout,
        snapshot_id=row.snap_id,
        tag=row.tag,
    )


def parse_vdi_list(out: bytes, has_shift: bool | None = None) -> list[DogRow]:
    """Every row of ``dog vdi list -r`` output. Raises ValueError on a malformed row.

    ``has_shift`` says whether rows end in block_size_shift (Sheepdog 1.0+). ``None`` reads
    each row: a last token of 20..31 after a space is the shift. That guess can only be wrong
    for a pre-1.0 snapshot whose tag ends in such a number; working VDIs have empty tags.
    """
    rows = []
    pos = 0
    while pos < len(out):
        if out[pos : pos + 1] not in (b"=", b"s", b"c") or out[pos + 1 : pos + 2] != b" ":
            raise ValueError(f"unexpected vdi list row at byte {pos}: {out[pos : pos + 60]!r}")
        kind = chr(out[pos])
        name, pos = _name(out, pos + 2)
        end = out.find(b"\n", pos)
        if end < 0:
            end = len(out)
        rest = out[pos:end]
        pos = end + 1
        rows.append(_row(kind, name, rest, has_shift))
    return rows


def _name(out: bytes, pos: int) -> tuple[bytes, int]:
    """The escaped name that starts at ``pos``, and where the row goes on after its space."""
    name = bytearray()
    while True:
        if pos >= len(out):
            raise ValueError("vdi list row ends inside a name")
        c = out[pos]
        if c == 0x5C:  # backslash: the next byte is literal (may be a newline)
            if pos + 1 >= len(out):
                raise ValueError("vdi list row ends after a backslash")
            name.append(out[pos + 1])
            pos += 2
        elif c == 0x20:
            return bytes(name), pos + 1
        else:
            name.append(c)
            pos += 1


def _row(kind: str, name: bytes, rest: bytes, has_shift: bool | None) -> DogRow:
    fields = rest.split(b" ", 7)
    if len(fields) < 8:
        raise ValueError(f"too few fields in vdi list row for {name!r}: {rest!r}")
    snap_id, size, used, shared, ctime, vid, copies, tail = fields
    if has_shift is None:
        last = tail.rpartition(b" ")
        has_shift = bool(last[1]) and last[2].isdigit() and 20 <= int(last[2]) <= 31
    if has_shift:
        tag, sep, shift = tail.rpartition(b" ")
        if not sep or not shift.isdigit():
            raise ValueError(f"no block_size_shift in vdi list row for {name!r}: {rest!r}")
        block_size_shift = int(shift)
    else:
        tag, block_size_shift = tail, DEFAULT_BLOCK_SIZE_SHIFT
    try:
        return DogRow(
            name=name,
            kind=kind,
            snap_id=int(snap_id),
            size=int(size),
            used=int(used),
            shared=int(shared),
            ctime=int(ctime),
            vid=int(vid, 16),
            copies=copies.decode(),
            tag=tag,
            block_size_shift=block_size_shift,
        )
    except ValueError as e:
        raise ValueError(f"bad field in vdi list row for {name!r}: {rest!r} ({e})") from None


def parse_node_info(out: bytes) -> FsStats:
    """The ``Total`` row of ``dog node info -r``: total, used, avail (bytes)."""
    for line in out.splitlines():
        fields = line.split(b" ")
        if fields[0] == b"Total" and len(fields) >= 4:
            try:
                return FsStats(total=int(fields[1]), used=int(fields[2]), avail=int(fields[3]))
            except ValueError:
                break
    raise ValueError(f"no Total row in node info: {out[:200]!r}")


_POLICY = re.compile(rb"with (\d+)(?::(\d+))? redundancy policy")


def parse_share(out: bytes) -> float:
    """Raw bytes each byte written takes, from ``dog cluster info -v -r`` ("plain with 2
    redundancy policy", or "with 4:2" when erasure coded); 1 if it does not say."""
    m = _POLICY.search(out)
    if m is None:
        return 1.0
    copies, parity = int(m.group(1)), int(m.group(2) or 0)
    if parity:
        return (copies + parity) / copies
    return float(max(1, copies))
