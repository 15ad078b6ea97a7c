"""Command line: parse options, check the cluster, mount, serve, and save data at exit."""

from __future__ import annotations

import argparse
import ctypes
import errno
import logging
import logging.handlers
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pyfuse3
import trio

from . import __version__
from .backends.base import Backend
from .cache import ChunkCache
from .catalog import Catalog
from .errors import BackendError
from .files import Files
from .fs import Options, SheepFS
from .pagecache import raise_read_ahead
from .sizes import parse_size
from .staging import Spool, SpoolError, default_spool_dir

log = logging.getLogger("sheepfs")

#: Seconds dirty cached data may wait before it is written back without an fsync or close.
WRITE_BACK_INTERVAL = 5.0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sheepfs",
        usage="sheepfs [SOURCE] MOUNTPOINT [options] [-o OPT[,OPT...]]",
        description=(
            "Mount a Sheepdog cluster as a directory: every VDI is a regular file. "
            "SOURCE is ADDR[:PORT] of a sheep (as mount(8) and fstab pass it) or local:DIR "
            "for a directory of image files; every option also has an -o form "
            "(-o cache_size=512M,allow_other)."
        ),
    )
    p.add_argument("source_or_mountpoint", metavar="SOURCE", help=argparse.SUPPRESS)
    p.add_argument("mountpoint", nargs="?", help=argparse.SUPPRESS)
    g = p.add_argument_group("cluster")
    g.add_argument("-a", "--address", help="sheep address (default 127.0.0.1)")
    g.add_argument("-p", "--port", type=int, help="sheep port (default 7000)")
    g.add_argument("--dog", help="path of the dog (or collie) CLI (default: dog, else collie)")
    g.add_argument(
        "--timeout", type=float, default=60.0, help="seconds before a dog call is killed (60)"
    )
    g.add_argument(
        "--local", type=Path, metavar="DIR", help="no cluster: keep VDIs as image files in DIR"
    )
    g = p.add_argument_group("mount")
    g.add_argument(
        "-f", "--foreground", action="store_true", help="stay in the foreground until unmounted"
    )
    g.add_argument("--ro", action="store_true", help="read-only: writes fail with EROFS")
    g.add_argument(
        "--allow-other",
        action="store_true",
        help="let other users in (permissions are then checked by the kernel)",
    )
    g.add_argument("--uid", type=int, help="owner of the files (default: the mounting user)")
    g.add_argument("--gid", type=int, help="group of the files (default: the mounting group)")
    g.add_argument(
        "--umask", type=lambda v: int(v, 8), help="mask for file modes, octal (default 022)"
    )
    g.add_argument(
        "--attr-timeout", type=float, help="seconds the kernel caches attributes (= list TTL)"
    )
    g.add_argument(
        "--direct-io",
        action="store_true",
        help="bypass the kernel's page cache: faster for large reads and writes (dd bs=1M), "
        "slower for small ones (no read-ahead)",
    )
    g = p.add_argument_group("data")
    g.add_argument("--spool-dir", type=Path, help="where new files wait until uploaded")
    g.add_argument(
        "--cache-size", type=parse_size, default=parse_size("256M"), help="chunk cache (256M)"
    )
    g.add_argument(
        "--list-ttl", type=float, default=1.0, help="seconds a VDI listing is reused (1)"
    )
    g = p.add_argument_group("logging")
    g.add_argument("--debug", action="store_true", help="log every operation")
    g.add_argument("--log-file", type=Path, help="log here instead of stderr (or syslog)")
    p.add_argument(
        "-o",
        dest="mount_options",
        action="append",
        default=[],
        metavar="OPTS",
        help="comma-separated options: the long options above with _ for - "
        "(address=, port=, dog=, timeout=, local=, ro, allow_other, uid=, gid=, umask=, "
        "attr_timeout=, direct_io, spool_dir=, cache_size=, list_ttl=, debug, log_file=)",
    )
    p.add_argument("-V", "--version", action="version", version=f"sheepfs {__version__}")
    return p


#: -o option -> (attribute, converter); a converter of None marks a flag.
_O_OPTIONS: dict[str, tuple[str, object]] = {
    "address": ("address", str),
    "port": ("port", int),
    "dog": ("dog", str),
    "timeout": ("timeout", float),
    "local": ("local", Path),
    "ro": ("ro", None),
    "allow_other": ("allow_other", None),
    "uid": ("uid", int),
    "gid": ("gid", int),
    "umask": ("umask", lambda v: int(v, 8)),
    "attr_timeout": ("attr_timeout", float),
    "direct_io": ("direct_io", None),
    "spool_dir": ("spool_dir", Path),
    "cache_size": ("cache_size", parse_size),
    "list_ttl": ("list_ttl", float),
    "debug": ("debug", None),
    "log_file": ("log_file", Path),
}
#: Generic mount(8) options that mean nothing here (fstab and mount.fuse3 pass them).
_IGNORED = {
    "rw", "defaults", "auto", "noauto", "user", "nouser", "users", "nofail", "_netdev",
    "dev", "nodev", "suid", "nosuid", "exec", "noexec", "atime", "noatime", "relatime",
    "default_permissions",
}  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.mountpoint is None:
        args.source, args.mountpoint = None, args.source_or_mountpoint
    else:
        args.source = args.source_or_mountpoint
    for group in args.mount_options:
        for opt in filter(None, group.split(",")):
            key, has_value, value = opt.partition("=")
            if key in _IGNORED:
                continue
            spec = _O_OPTIONS.get(key)
            if spec is None:
                parser.error(f"unknown mount option: -o {opt}")
            attr, convert = spec
            if convert is None:
                setattr(args, attr, True)
                continue
            if not has_value:
                parser.error(f"-o {key} needs a value ({key}=...)")
            try:
                setattr(args, attr, convert(value))  # type: ignore[operator]
            except ValueError as e:
                parser.error(f"-o {opt}: {e}")
    if args.source:
        if args.source.startswith("local:"):
            args.local = Path(args.source.removeprefix("local:"))
        elif args.source not in ("sheepfs", "sheepdog"):
            host, _, port = (
                args.source.rpartition(":") if ":" in args.source else (args.source, "", "")
            )
            args.address = args.address or host
            if port and args.port is None:
                try:
                    args.port = int(port)
                except ValueError:
                    parser.error(f"bad port in source {args.source!r}")
    args.address = args.address or "127.0.0.1"
    args.port = args.port or 7000
    return args


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


def make_backend(args: argparse.Namespace) -> Backend:
    if args.local is not None:
        from .backends.local import LocalBackend

        return LocalBackend(args.local)
    from .backends.dog import DogBackend, find_cli

    return DogBackend(find_cli(args.dog), args.address, args.port, timeout=args.timeout)


@dataclass
class Daemon:
    """Everything one mount needs, wired together."""

    backend: Backend
    fs: SheepFS
    spool: Spool
    mountpoint: str

    async def serve(self) -> bool:
        """Run until unmounted or signalled; True if every byte reached Sheepdog."""
        async with trio.open_nursery() as nursery:
            self.fs.files.cache.nursery = nursery
            nursery.start_soon(self._on_signals)
            nursery.start_soon(self._recover_spool)
            nursery.start_soon(self._write_back_periodically)
            await pyfuse3.main()
            nursery.cancel_scope.cancel()
        self.fs.files.cache.nursery = None
        return await self.fs.sync_all()

    async def _write_back_periodically(self) -> None:
        while True:
            await trio.sleep(WRITE_BACK_INTERVAL)
            await self.fs.files.write_back_idle()

    async def _on_signals(self) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                log.info("%s: saving pending data, then unmounting", signal.Signals(signum).name)
                await self.fs.sync_all()
                pyfuse3.terminate()
                return

    async def _recover_spool(self) -> None:
        """Upload files a previous run staged but did not get into Sheepdog."""
        for staged in self.spool.leftovers():
            name = staged.vdi_name
            try:
                info = await self.fs.catalog.get(name)
            except BackendError as e:
                log.error("spool: cannot check %r (%s); its data stays in %s", name, e, staged.path)
                staged.close()
                continue
            if staged.replaces or (info is not None and not staged.created):
                # Never replace a VDI's data with a copy that may have been cut short.
                log.error(
                    "spool: %s holds new data for %r, which exists in Sheepdog with other "
                    "data; not uploaded, the file is kept (copy it in by hand if it is "
                    "complete, then delete it and its .json)",
                    staged.path,
                    name,
                )
                staged.close()
                continue
            log.warning("spool: uploading %r left by an earlier run from %s", name, staged.path)
            f = self.fs.files.adopt(self.fs.ino_for(name), staged, info)
            try:
                await self.fs.files.sync(f)
            except BackendError as e:
                log.error("spool: %s", e)
                continue
            self.fs.files.forget(f)
            log.info("spool: %r uploaded", name)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.debug, args.log_file)
    mountpoint = os.path.abspath(args.mountpoint)
    _clear_dead_mount(mountpoint)
    _map_chunks_apart()
    if not os.path.isdir(mountpoint):
        log.error("mount point %s is not a directory", mountpoint)
        return 1
    spool = Spool(args.spool_dir or default_spool_dir())
    try:
        spool.prepare()
        backend = make_backend(args)
        trio.run(backend.check)
    except (SpoolError, BackendError, OSError) as e:
        log.error("cannot mount: %s", e)
        return 1

    catalog = Catalog(backend, ttl=args.list_ttl)
    cache = ChunkCache(backend, args.cache_size)
    files = Files(backend, catalog, cache, spool)
    umask = 0o022 if args.umask is None else args.umask
    fs = SheepFS(
        backend,
        catalog,
        files,
        Options(
            attr_timeout=args.list_ttl if args.attr_timeout is None else args.attr_timeout,
            uid=os.getuid() if args.uid is None else args.uid,
            gid=os.getgid() if args.gid is None else args.gid,
            file_mode=0o666 & ~umask,
            dir_mode=0o777 & ~umask,
            read_only=args.ro,
            direct_io=args.direct_io,
        ),
    )

    notify = None
    if not args.foreground:
        notify = _daemonize()
    fsname = f"local:{args.local}" if args.local else f"{args.address}:{args.port}"
    options = set(pyfuse3.default_options) | {f"fsname={fsname}", "subtype=sheepfs"}
    if args.ro:
        options.add("ro")
    if args.allow_other:
        options |= {"allow_other", "default_permissions"}  # the kernel checks modes
    try:
        pyfuse3.init(fs, mountpoint, options)
    except RuntimeError as e:
        log.error("cannot mount on %s: %s", mountpoint, e)
        _tell_parent(notify, 1)
        return 1
    fs.after_init = lambda: raise_read_ahead(mountpoint)
    log.info("mounted %s on %s", fsname, mountpoint)
    _tell_parent(notify, 0)
    daemon = Daemon(backend, fs, spool, mountpoint)
    try:
        saved = trio.run(daemon.serve)
    except BaseException:
        pyfuse3.close(unmount=True)
        raise
    pyfuse3.close(unmount=True)
    log.info(
        "unmounted %s: %d files (%d bytes) uploaded from the spool, %d bytes written back, "
        "%d backend calls, %d errors; %s",
        mountpoint,
        files.files_uploaded,
        files.uploaded,
        cache.bytes_written,
        getattr(backend, "calls", 0),
        fs.errors + files.errors,
        "all data saved" if saved else "SOME DATA COULD NOT BE SAVED (see above)",
    )
    return 0 if saved else 1


def _map_chunks_apart() -> None:
    """Have glibc map every buffer of 2 MiB or more (chunks) on its own, and unmap it on free.

    Otherwise chunks come from the heap, where freed ones left between live allocations are
    neither reused for the next chunks nor given back: a read followed by an overwrite held
    486 MiB with a 256 MiB budget. Mapped apart, memory follows the cache's own accounting
    (313 MiB); the cost of fresh pages is mostly avoided by reusing evicted chunks' buffers
    (:mod:`sheepfs.buffers`). FUSE requests (1 MiB) stay on the heap.
    """
    try:
        ctypes.CDLL("libc.so.6").mallopt(-3, 2 << 20)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass  # not glibc


def _clear_dead_mount(mountpoint: str) -> None:
    """A crashed daemon leaves "Transport endpoint is not connected": lazily unmount it."""
    try:
        os.stat(mountpoint)
    except OSError as e:
        if e.errno == errno.ENOTCONN:
            log.warning("%s: clearing the dead mount a crashed sheepfs left", mountpoint)
            subprocess.run(["fusermount3", "-uz", mountpoint], check=False)


def _daemonize() -> int:
    """Fork into the background; the parent exits once the child reports the mount."""
    read_end, write_end = os.pipe()
    if os.fork() > 0:
        os.close(write_end)
        status = os.read(read_end, 1)
        os._exit(status[0] if status else 1)
    os.close(read_end)
    os.setsid()
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1):
        os.dup2(devnull, fd)
    return write_end


def _tell_parent(fd: int | None, status: int) -> None:
    if fd is None:
        return
    os.write(fd, bytes([status]))
    os.close(fd)
    root = logging.getLogger()
    if not any(isinstance(h, logging.FileHandler) for h in root.handlers):
        # Detached: stderr goes nowhere, so log to syslog where there is one.
        if os.path.exists("/dev/log"):
            handler = logging.handlers.SysLogHandler(address="/dev/log")
            handler.setFormatter(logging.Formatter("sheepfs[%(process)d]: %(message)s"))
            root.handlers[:] = [handler]
        else:
            root.handlers[:] = [logging.NullHandler()]
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 2)  # let go of the terminal (and of a caller waiting for our output)
    os.close(devnull)
