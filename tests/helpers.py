"""Small helpers the test modules share: test data and its digest, threads run together."""

from __future__ import annotations

import hashlib
import random
import threading


def rand(n: int, seed: int = 1) -> bytes:
    """``n`` bytes that are the same in every run for the same ``seed``."""
    return random.Random(seed).randbytes(n)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def run_threads(threads: list[threading.Thread], timeout: float = 60) -> None:
    """Start every thread, then join each (waiting ``timeout`` seconds at the most for it)."""
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
