"""Chunk-sized buffers, recycled.

Every chunk is a multi-MiB ``bytearray``. Allocating a fresh one per chunk costs a memset
(``bytearray(n)`` zero-fills) and, from fresh memory, a page fault per 4 KiB; and when
chunks come and go at hundreds of MiB/s, glibc's heap fragments and keeps memory the cache
no longer uses. So buffers of evicted chunks that nothing else refers to are kept, a few,
for the next chunks, and new ones are not zero-filled: every user overwrites what it reads
(a stream piece is filled from dog; a written chunk is read only after its backend content
has been merged under the written bytes, see ``cache._fill``).
"""

from __future__ import annotations

import ctypes
import sys
from collections import deque

#: Buffers kept for reuse, per size (about 32 MiB with 4 MiB objects).
KEEP = 8

_free: dict[int, deque[bytearray]] = {}


def _uninitialized_factory():
    try:
        make = ctypes.pythonapi.PyByteArray_FromStringAndSize
    except AttributeError:  # not CPython
        return bytearray
    make.restype = ctypes.py_object
    make.argtypes = [ctypes.c_void_p, ctypes.c_ssize_t]
    return lambda n: make(None, n)


_uninitialized = _uninitialized_factory()


def take(size: int) -> bytearray:
    """A buffer of ``size`` bytes with undefined content (thread-safe)."""
    kept = _free.get(size)
    if kept:
        try:
            return kept.pop()
        except IndexError:  # another thread took the last one
            pass
    return _uninitialized(size)


def give(buf: object) -> None:
    """Keep ``buf`` for reuse, if nothing but the caller refers to it (no views either)."""
    # The caller's reference and getrefcount's argument: any other (a memoryview of it
    # being sent, a variable elsewhere) makes it unsafe to overwrite.
    if type(buf) is not bytearray or sys.getrefcount(buf) > 3:
        return
    kept = _free.setdefault(len(buf), deque())
    if len(kept) < KEEP:
        kept.append(buf)
