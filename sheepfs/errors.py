"""Backend errors and their one mapping to errno.

Backends raise these; only :func:`errno_for` turns them into what the kernel sees, so the
mapping lives in exactly one place.
"""

from __future__ import annotations

import errno


class BackendError(Exception):
    """A storage operation failed. ``op`` and ``name`` say what and on which VDI.

    ``quiet``: a refusal the user asked for (``mkdir`` of an existing name, a lookup of a
    name that is not there), logged at debug level rather than as an error.
    ``may_have_run``: the request reached the server and its outcome is unknown (it timed
    out, or its connection broke): it may still take effect later.
    """

    errno = errno.EIO
    may_have_run = False

    def __init__(
        self, op: str, name: bytes | None = None, detail: str = "", quiet: bool = False
    ) -> None:
        self.op = op
        self.name = name
        self.detail = detail.strip()
        self.quiet = quiet
        super().__init__(op, name, detail)

    def __str__(self) -> str:
        return self.describe()

    def describe(self) -> str:
        who = f" {self.name.decode(errors='backslashreplace')!r}" if self.name is not None else ""
        why = f": {self.detail}" if self.detail else ""
        return f"{self.op}{who} failed{why}"


class NotFound(BackendError):
    errno = errno.ENOENT


class Exists(BackendError):
    errno = errno.EEXIST


class NoSpace(BackendError):
    errno = errno.ENOSPC


class TooLarge(BackendError):
    errno = errno.EFBIG


class NameTooLong(BackendError):
    errno = errno.ENAMETOOLONG


class NotPermitted(BackendError):
    """The backend refuses an operation it cannot do safely (deleting a hyper volume)."""

    errno = errno.EPERM


class ReadOnly(BackendError):
    """The mount is read-only (``--ro``)."""

    errno = errno.EROFS


class InvalidArgument(BackendError):
    errno = errno.EINVAL


class PartialListing(BackendError):
    """A listing that could not read every VDI (a node down, or recovering): ``found`` is
    what it could read. A name it lacks may exist all the same, so it is not "not found"."""

    def __init__(self, op: str, found: dict, detail: str) -> None:
        super().__init__(op, None, detail)
        self.found = found


class Unavailable(BackendError):
    """The cluster cannot be reached, is not formatted, or the CLI is missing."""

    errno = errno.EIO


class Timeout(BackendError):
    """The CLI did not answer within the timeout and was killed."""

    errno = errno.EIO


def errno_for(exc: BaseException) -> int:
    """The errno the kernel should see for ``exc`` (EIO for anything unexpected)."""
    if isinstance(exc, BackendError):
        return exc.errno
    if isinstance(exc, OSError) and exc.errno:
        return exc.errno
    return errno.EIO
