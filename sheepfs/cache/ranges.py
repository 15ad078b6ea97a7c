"""Byte ranges and runs: the arithmetic of write-back, free of any cache state."""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from typing import TypeVar

C = TypeVar("C")

#: One call: its offset in the file and its parts, ``(chunk, start, end)`` within each chunk.
Run = tuple[int, list[tuple[C, int, int]]]


def add_range(ranges: list[tuple[int, int]], a: int, b: int) -> list[tuple[int, int]]:
    """Merge ``[a, b)`` into sorted, disjoint ``ranges`` (touching ones merge too).

    By bisection: a random writer leaves thousands of runs in a chunk between write-backs.
    """
    i = bisect.bisect_left(ranges, a, key=lambda r: r[1])  # the first that ends at a or later
    j = bisect.bisect_right(ranges, b, key=lambda r: r[0])  # past the last that starts by b
    if i < j:
        a, b = min(a, ranges[i][0]), max(b, ranges[j - 1][1])
    return [*ranges[:i], (a, b), *ranges[j:]]


def remove_range(ranges: list[tuple[int, int]], a: int, b: int) -> list[tuple[int, int]]:
    """``ranges`` (sorted, disjoint) without ``[a, b)``: what is left of them to write once
    ``[a, b)`` is on its way."""
    out: list[tuple[int, int]] = []
    for x, y in ranges:
        if y <= a or x >= b:
            out.append((x, y))
            continue
        if x < a:
            out.append((x, a))
        if y > b:
            out.append((b, y))
    return out


def plan_runs(pieces: Iterable[tuple[C, int, list[tuple[int, int]]]], max_run: int) -> list[Run]:
    """Merge ``(chunk, chunk's offset in the file, ranges to write)``, in file order, into
    runs of contiguous bytes; a run is cut before it would pass ``max_run`` bytes."""
    runs: list[Run] = []
    run_bytes = 0
    end = -1  # where the last part ends, in the file
    for chunk, base, ranges in pieces:
        for a, b in ranges:
            if runs and end == base + a and run_bytes + (b - a) <= max_run:
                runs[-1][1].append((chunk, a, b))
                run_bytes += b - a
            else:
                runs.append((base + a, [(chunk, a, b)]))
                run_bytes = b - a
            end = base + b
    return runs


def stretches(indexes: Iterable[int]) -> list[tuple[int, int]]:
    """Sorted, distinct ``indexes`` as ``(first, count)`` stretches of consecutive ones."""
    out: list[tuple[int, int]] = []
    for i in indexes:
        if out and out[-1][0] + out[-1][1] == i:
            out[-1] = (out[-1][0], out[-1][1] + 1)
        else:
            out.append((i, 1))
    return out
