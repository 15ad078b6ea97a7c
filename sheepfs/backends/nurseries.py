"""A nursery for the helper tasks of a context manager's body (pumps, read-ahead).

A trio nursery wraps whatever leaves it in an exception group, the body's own error too.
Callers of a stream catch ``BackendError`` (a write-back that fails keeps its data and
tries again); a group got past them and ended the mount (found by scripts/soak). Here the
body's error leaves as itself, and the helpers are cancelled when the body ends.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio


@asynccontextmanager
async def helpers() -> AsyncIterator[trio.Nursery]:
    """A nursery whose body's error is raised as it is; its tasks end with the body.

    A helper's own failure still comes as a group: helpers hand their errors to the body
    (as the read-ahead's slots do) instead of raising them."""
    failed: BaseException | None = None
    async with trio.open_nursery() as nursery:
        try:
            yield nursery
        except BaseException as e:  # past the nursery, which would wrap it
            failed = e
        nursery.cancel_scope.cancel()
    if failed is not None:
        raise failed
