"""``sheepfs status MOUNTPOINT [--json]``: what a running mount is doing.

It reads the extended attribute ``user.sheepfs.status`` of the mount's root (see
:mod:`sheepfs.fuse.xattrs`), which the daemon answers from memory, and prints it for
people or, with ``--json``, as it came. It runs in its own process and never starts a
mount's daemon or touches a VDI. A daemon that does not answer within ``--timeout``
seconds is reported as such rather than waited for.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
import threading

from .status import Pending, Status, human

ATTRIBUTE = "user.sheepfs.status"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sheepfs status",
        description="Show what a running sheepfs mount is doing: cluster and backend, "
        "uptime, open files, new files staged, uploads pending with their progress, spool "
        "and cache use, backend calls, errors and latency since the mount began.",
    )
    p.add_argument("mountpoint", metavar="MOUNTPOINT", help="where sheepfs is mounted")
    p.add_argument("--json", action="store_true", help="print the status as JSON (for scripts)")
    p.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        metavar="S",
        help="seconds to wait for the daemon's answer (10)",
    )
    return p


class StatusError(Exception):
    """The status could not be read: the message says why, for people."""


def read_status(mountpoint: str, timeout: float = 10.0) -> str:
    """The JSON the daemon serving ``mountpoint`` answers. Raises StatusError."""
    box: list[bytes | OSError] = []

    def ask() -> None:
        try:
            box.append(os.getxattr(mountpoint, ATTRIBUTE))
        except OSError as e:
            box.append(e)

    # A thread, so a daemon that hangs costs the timeout, not a terminal stuck forever.
    worker = threading.Thread(target=ask, daemon=True)
    worker.start()
    worker.join(timeout)
    if not box:
        raise StatusError(f"{mountpoint}: the mount did not answer within {timeout:g} s")
    answer = box[0]
    if isinstance(answer, OSError):
        raise StatusError(_why(mountpoint, answer))
    return answer.decode()


def _why(mountpoint: str, e: OSError) -> str:
    if e.errno in (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP):
        if os.path.ismount(mountpoint):
            return f"{mountpoint}: not a sheepfs mount (no status attribute)"
        return f"{mountpoint}: not a mount point (give the directory sheepfs is mounted on)"
    if e.errno == errno.ENOTCONN:
        return (
            f"{mountpoint}: the mount is dead (its daemon is gone); "
            f"clear it with fusermount3 -uz {mountpoint}"
        )
    return f"{mountpoint}: {e.strerror or e}"


def _duration(seconds: float) -> str:
    s = int(seconds)
    days, s = divmod(s, 86400)
    hours, s = divmod(s, 3600)
    minutes, s = divmod(s, 60)
    parts = [(days, "d"), (hours, "h"), (minutes, "m"), (s, "s")]
    shown = [f"{n}{unit}" for n, unit in parts if n][:2]
    return " ".join(shown) or "0s"


def _count(n: int, what: str) -> str:
    return f"{n} {what}" + ("" if n == 1 else "s")


def _pending_line(p: Pending) -> str:
    now = ", upload under way" if p.uploading else f", {p.state}"
    if p.done is None:
        now = ", being written back" if p.uploading else ""
        return f"  {p.name}  changes in the cache{now}"
    pct = f" ({100 * p.done // p.size}%)" if p.size else ""
    return f"  {p.name}  {human(p.done)} of {human(p.size)}{pct}{now}"


def render(s: Status) -> str:
    """The status for people, one fact a line."""
    w, c = s.where, s.calls
    lines = [
        f"sheepfs {w.version} on {w.mountpoint}: {w.source}, {w.backend} backend, pid {w.pid}",
        f"up {_duration(s.uptime)}" + (", stopping: writing pending data" if s.stopping else ""),
        f"files open: {s.files_open} ({_count(s.handles, 'handle')}); new files staged: {s.staged}",
    ]
    if s.pending_files:
        lines.append(f"uploads pending: {s.pending_files} ({human(s.pending_bytes)} to go)")
        lines += [_pending_line(p) for p in s.pending]
        if s.pending_files > len(s.pending):
            lines.append(f"  ... and {s.pending_files - len(s.pending)} more")
    else:
        lines.append("uploads pending: none")
    lines += [
        f"spool: {human(s.spool.used)} used, {human(s.spool.free)} free ({s.spool.path})",
        f"cache: {human(s.cache.used)} of {human(s.cache.budget)}",
        f"backend calls: {c.calls} ({c.in_flight} now), {c.errors} failed; latency median "
        f"{c.median * 1000:.1f} ms, p99 {c.p99 * 1000:.1f} ms",
        f"uploaded: {s.files_uploaded} files, {human(s.bytes_uploaded)}; written back: "
        f"{human(s.bytes_written_back)}",
        f"errors: {s.errors}",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        text = read_status(args.mountpoint, args.timeout)
        status = Status.from_json(text)
    except StatusError as e:
        sys.stderr.write(f"sheepfs status: {e}\n")
        return 1
    except ValueError as e:
        sys.stderr.write(f"sheepfs status: {args.mountpoint}: unreadable status ({e})\n")
        return 1
    sys.stdout.write(text + "\n" if args.json else render(status))
    return 0
