"""Command line: parse options, build the core and its FUSE adapter, mount, serve, and
report at exit whether every byte was saved."""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
import sys
from pathlib import Path

from .backends import BackendChoice, make_backend
from .core.filesystem import CoreConfig, Filesystem
from .errors import BackendError
from .fuse.adapter import Options, SheepFS
from .fuse.mount import Daemon, MountConfig, clear_dead_mount, daemonize, serve, tell_parent
from .fuse.xattrs import RootXattrs
from .notify import Notifier
from .options import parse_args
from .service import Service
from .spool import Spool, SpoolError, default_spool_dir
from .status import StatusSource, Where

log = logging.getLogger("sheepfs")


def setup_logging(debug: bool, log_file: Path | None) -> None:
    handler: logging.Handler
    if log_file is not None:
        handler = logging.FileHandler(log_file)
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    if not debug:
        logging.getLogger("pyfuse3").setLevel(logging.WARNING)


def _core_config(args: argparse.Namespace) -> CoreConfig:
    return CoreConfig(
        cache_size=args.cache_size,
        list_ttl=args.list_ttl,
        read_only=args.ro,
        direct_io=args.direct_io,
    )


def _adapter_options(args: argparse.Namespace) -> Options:
    umask = 0o022 if args.umask is None else args.umask
    return Options(
        attr_timeout=args.list_ttl if args.attr_timeout is None else args.attr_timeout,
        uid=os.getuid() if args.uid is None else args.uid,
        gid=os.getgid() if args.gid is None else args.gid,
        file_mode=0o666 & ~umask,
        dir_mode=0o777 & ~umask,
        show_snapshots=args.show_snapshots,
    )


def _service(args: argparse.Namespace, core: Filesystem, ops: SheepFS, mnt: str) -> Service:
    """The mount's status (the root's extended attributes, metrics) and its messages to
    systemd (READY=1, progress while it stops)."""
    if args.local:
        source, backend = f"local:{args.local}", "local"
    else:
        source = ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in args.addresses)
        backend = args.backend
    status = StatusSource(core, Where(mnt, source, backend), errors=lambda: ops.errors)
    ops.xattrs = RootXattrs(status.snapshot)
    return Service(Notifier.from_environment(), status)


def _serve_metrics(daemon: Daemon, host: str, port: int) -> bool:
    from .metrics import serve_metrics  # prometheus_client only when asked for

    assert daemon.service.status is not None
    try:
        serve_metrics(host, port, daemon.service.status.from_thread)
    except OSError as e:
        log.error("cannot serve metrics on %s:%d: %s", host, port, e.strerror or e)
        tell_parent(daemon.notify, 1)
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["status"]:  # `sheepfs status MOUNTPOINT`: a client, not a mount
        from .statuscmd import main as status_main

        return status_main(argv[1:])
    args = parse_args(argv)
    setup_logging(args.debug, args.log_file)
    mountpoint = os.path.abspath(args.mountpoint)
    clear_dead_mount(mountpoint)
    _tune_malloc()
    if not os.path.isdir(mountpoint):
        log.error("mount point %s is not a directory", mountpoint)
        return 1
    spool = Spool(args.spool_dir or default_spool_dir())
    try:
        spool.prepare()
        backend = make_backend(
            BackendChoice(args.local, args.backend, tuple(args.addresses), args.dog, args.timeout)
        )
    except (SpoolError, BackendError, OSError) as e:
        log.error("cannot mount: %s", e)
        return 1
    core = Filesystem(backend, spool, _core_config(args))
    ops = SheepFS(core, _adapter_options(args))
    fsname = f"local:{args.local}" if args.local else f"{args.address}:{args.port}"
    config = MountConfig(mountpoint, fsname, args.ro, args.allow_other, args.foreground)
    daemon = Daemon(core, ops, config, notify=None if args.foreground else daemonize())
    daemon.service = _service(args, core, ops, mountpoint)
    if args.metrics and not _serve_metrics(daemon, *args.metrics):
        return 1
    saved = serve(daemon)
    if not daemon.mounted:
        return 1
    c = core.counters()
    log.info(
        "unmounted %s: %d files (%d bytes) uploaded from the spool, %d bytes written back, "
        "%d backend calls, %d errors; %s",
        mountpoint,
        c.files_uploaded,
        c.bytes_uploaded,
        c.bytes_written_back,
        c.backend_calls,
        c.errors + ops.errors,
        "all data saved" if saved else "SOME DATA COULD NOT BE SAVED (see above)",
    )
    return 0 if saved else 1


def _tune_malloc() -> None:
    """Have glibc map every buffer of 2 MiB or more (chunks) on its own, and unmap it on
    free; and keep up to 64 MiB of freed heap instead of giving it back at once.

    Otherwise chunks come from the heap, where freed ones left between live allocations are
    neither reused for the next chunks nor given back: a read followed by an overwrite held
    486 MiB with a 256 MiB budget. Mapped apart, memory follows the cache's own accounting
    (313 MiB); the cost of fresh pages is mostly avoided by reusing evicted chunks' buffers
    (:mod:`sheepfs.buffers`). FUSE requests (1 MiB) stay on the heap, where glibc's default
    (trim whatever is free above 128 KiB at the top) would give each one back and fault it
    in again on the next write: a third of an overwrite's time went to those page faults.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 2 << 20)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 64 << 20)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass  # not glibc
