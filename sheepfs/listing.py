"""Parsers for dog's raw (``-r``) output.

``dog vdi list -r`` prints ``"%c " <escaped name> " %d %s %s %s %s %x %s %s %u\\n"``:
the name has ``\\`` before every isspace() byte and before ``\\``; the tag is printed raw, so
it may be empty (two spaces) or hold spaces. So: read the name up to the first unescaped
space, then exactly seven single-space fields, then the tag up to the last token, which is
block_size_shift (absent before Sheepdog 1.0: then the rest of the line is the tag).
"""

from __future__ import annotations

from .backends.base import DEFAULT_BLOCK_SIZE_SHIFT, FsStats, VdiInfo

_KINDS = b"=sc"


def parse_vdi_list(out: bytes, has_shift: bool | None = None) -> list[VdiInfo]:
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
        pos += 2
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
                pos += 1
                break
            else:
                name.append(c)
                pos += 1
        end = out.find(b"\n", pos)
        if end < 0:
            end = len(out)
        rest = out[pos:end]
        pos = end + 1
        rows.append(_row(kind, bytes(name), rest, has_shift))
    return rows


def _row(kind: str, name: bytes, rest: bytes, has_shift: bool | None) -> VdiInfo:
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
        return VdiInfo(
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
