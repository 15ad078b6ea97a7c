"""What the workload writes: data made from a seed, so a run can be replayed, and fast to
make (a few hundred MiB per file), with every MiB different from every other."""

from __future__ import annotations

import functools
import os
import random
import struct
from pathlib import Path

BLOCK = 1 << 20


@functools.lru_cache(maxsize=64)
def _base(seed: int) -> bytes:
    return random.Random(seed).randbytes(BLOCK)


def _block(seed: int, index: int) -> bytes:
    """The ``index``-th MiB of ``seed``'s data: the seed's random MiB rotated, stamped with
    (seed, index), so no two blocks of one run are alike."""
    base = _base(seed)
    rot = (index * 7919) % BLOCK
    return struct.pack("<QQ", seed, index) + (base[rot:] + base[:rot])[16:]


def data(seed: int, offset: int, length: int) -> bytes:
    """``length`` bytes of ``seed``'s data starting at ``offset`` of it."""
    out = bytearray()
    while len(out) < length:
        at = offset + len(out)
        index, skip = divmod(at, BLOCK)
        out += _block(seed, index)[skip : skip + length - len(out)]
    return bytes(out)


def extents(rng: random.Random, size: int) -> list[tuple[int, int]]:
    """A few data extents of a sparse file of ``size`` bytes (maybe none: all holes)."""
    found = []
    for _ in range(rng.randrange(0, 4)) if size else ():
        start = rng.randrange(0, size)
        found.append((start, rng.randrange(1, min(size - start, 8 * BLOCK) + 1)))
    return found


def write_file(path: Path, size: int, seed: int, sparse: list[tuple[int, int]] | None) -> None:
    """A file of ``size`` bytes: all data, or (``sparse``) holes but for those extents."""
    with open(path, "wb") as f:
        if sparse is None:
            for at in range(0, size, 4 * BLOCK):
                f.write(data(seed, at, min(4 * BLOCK, size - at)))
        else:
            for start, length in sparse:
                os.pwrite(f.fileno(), data(seed, start, length), start)
        f.truncate(size)
