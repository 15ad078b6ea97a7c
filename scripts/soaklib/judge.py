"""One VDI as the cluster holds it, against what the model says it may hold.

The rules: with one candidate (settled), every byte and the size must be that candidate's.
With two (an operation failed or a fault hit it), each byte must be one of the two (a
refused write may be partly there), and the size between theirs. A candidate that does not
exist allows the file to be missing; a refused new file may also be there in part (made at
some size, partly uploaded, its holes reading zero), and a refused delete may have zeroed
data (Sheepdog zeroes a VDI's index before it removes it), and so may a refused in-place
rsync (it writes a block it could not read back as zeros). What matches no candidate is
counted, in bytes, as lost.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import BinaryIO

from .model import Version

BLOCK = 1 << 20
SUB = 4096
BYTE_CHECKS = 256  # sub-blocks compared byte by byte before the rest count whole


@dataclass(frozen=True)
class Verdict:
    ok: bool
    lost: int  # bytes of what was acknowledged that are missing or wrong
    size: int | None  # the VDI's size, None: it does not exist
    why: str


def judge(
    stream: BinaryIO | None,
    cands: list[Version],
    sink: BinaryIO | None = None,
    zeros: bool = False,
) -> Verdict:
    """``stream`` (the VDI's bytes, None: no such VDI) against ``cands`` (the acknowledged
    content first); what it reads is also written to ``sink`` (to adopt it as settled).
    ``zeros``: the refused operation may have written zeros (``Entry.maybe_zeros``)."""
    present = [v for v in cands if v.exists]
    may_miss = len(present) < len(cands)
    if stream is None:
        if may_miss:
            return Verdict(True, 0, None, "absent, as it may be")
        return Verdict(False, max(1, min(v.size for v in present)), None, "missing")
    if not present:
        size = _drain(stream, sink)
        return Verdict(False, max(1, size), size, f"exists ({size} bytes) but was deleted")
    # A refused new file may be there in part: made at some size, its holes reading zero.
    # A refused delete (``rm``, a rename's source) may have zeroed data: Sheepdog deletes a
    # VDI by zeroing its index, then removing it, and a fault may come in between.
    partial = not cands[0].exists
    zeros = zeros or partial or any(not v.exists for v in cands[1:])
    lo = 0 if partial else min(v.size for v in present)
    hi = max(v.size for v in present)
    lost, off, budget = 0, 0, [BYTE_CHECKS]
    while block := _read_full(stream, BLOCK):
        if sink is not None:
            sink.write(block)
        inside = block[: max(0, hi - off)]
        if inside:
            cands_here = [_padded(v.read(off, len(inside)), len(inside)) for v in present]
            if zeros:
                cands_here.append(bytes(len(inside)))
            lost += _wrong(inside, cands_here, budget)
        off += len(block)
    size = off
    lost += max(0, lo - size) + max(0, size - hi)
    if lost:
        return Verdict(False, lost, size, f"{lost} bytes differ (size {size}, may be {lo}..{hi})")
    return Verdict(True, 0, size, "as expected")


def _wrong(actual: bytes, cands: list[bytes], budget: list[int]) -> int:
    """Bytes of ``actual`` that match no candidate at their place."""
    if any(actual == c for c in cands):
        return 0
    wrong = 0
    for at in range(0, len(actual), SUB):
        a = actual[at : at + SUB]
        here = [c[at : at + SUB] for c in cands]
        if any(a == c for c in here):
            continue
        if budget[0] <= 0:
            wrong += len(a)
            continue
        budget[0] -= 1
        wrong += sum(1 for i, x in enumerate(a) if all(c[i] != x for c in here))
    return wrong


def _padded(data: bytes, length: int) -> bytes:
    return data if len(data) == length else data + bytes(length - len(data))


def _read_full(stream: BinaryIO, n: int) -> bytes:
    parts, got = [], 0
    while got < n:
        part = stream.read(n - got)
        if not part:
            break
        parts.append(part)
        got += len(part)
    return b"".join(parts)


def _drain(stream: BinaryIO, sink: BinaryIO | None) -> int:
    size = 0
    while block := stream.read(BLOCK):
        size += len(block)
        if sink is not None:
            sink.write(block)
    return size


def differences(stream: BinaryIO, v: Version) -> str:
    """Where ``stream`` differs from ``v``: for a read that returned other data."""
    off, first, wrong, zeros = 0, None, 0, 0
    while block := _read_full(stream, BLOCK):
        want = _padded(v.read(off, len(block)), len(block))
        if block != want:
            for i in range(0, len(block), SUB):
                a, b = block[i : i + SUB], want[i : i + SUB]
                if a != b:
                    first = off + i if first is None else first
                    wrong += len(a)
                    zeros += a == bytes(len(a))
        off += len(block)
    if first is None:
        return f"no difference ({off} bytes, expected {v.size})"
    return (
        f"{wrong} bytes in 4 KiB blocks differ, the first at {first} (4 MiB object "
        f"{first >> 22}), {zeros} of those blocks read as zeros; {off} bytes read, "
        f"{v.size} expected"
    )
