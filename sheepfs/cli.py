"""Command line: parse options, check the cluster, mount, serve, and save data at exit."""

from __future__ import annotations

import argparse
import logging
import os
import signal
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
from .sizes import parse_size
from .staging import Spool, SpoolError, default_spool_dir

log = logging.getLogger("sheepfs")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sheepfs",
        description="Mount a Sheepdog cluster as a directory: every VDI is a regular file.",
    )
    p.add_argument("mountpoint", help="directory to mount on")
    p.add_argument("-a", "--address", default="127.0.0.1", help="sheep address (127.0.0.1)")
    p.add_argument("-p", "--port", type=int, default=7000, help="sheep port (7000)")
    p.add_argument("--dog", help="path of the dog (or collie) CLI; default: dog, else collie")
    p.add_argument("--local", type=Path, metavar="DIR", help="use a directory of image files")
    p.add_argument(
        "-f", "--foreground", action="store_true", help="stay in the foreground until unmounted"
    )
    p.add_argument("--spool-dir", type=Path, help="where new files are staged until uploaded")
    p.add_argument(
        "--cache-size", type=parse_size, default=parse_size("256M"), help="chunk cache (256M)"
    )
    p.add_argument(
        "--list-ttl", type=float, default=1.0, help="seconds a VDI listing is reused (1)"
    )
    p.add_argument(
        "--timeout", type=float, default=60.0, help="seconds before a dog call is killed (60)"
    )
    p.add_argument("--debug", action="store_true", help="log every operation")
    p.add_argument("--log-file", type=Path, help="log here instead of stderr")
    p.add_argument("-V", "--version", action="version", version=f"sheepfs {__version__}")
    return p


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
            nursery.start_soon(self._on_signals)
            nursery.start_soon(self._recover_spool)
            await pyfuse3.main()
            nursery.cancel_scope.cancel()
        return await self.fs.sync_all()

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
                exists = await self.fs.catalog.get(name) is not None
            except BackendError as e:
                log.error("spool: cannot check %r (%s); its data stays in %s", name, e, staged.path)
                staged.close()
                continue
            if exists:
                log.error(
                    "spool: %s holds data for %r, which already exists in Sheepdog; "
                    "not uploaded, the file is kept",
                    staged.path,
                    name,
                )
                staged.close()
                continue
            log.warning("spool: uploading %r left by an earlier run from %s", name, staged.path)
            f = self.fs.files.adopt(self.fs._ino(name), staged)
            try:
                await self.fs.files.sync(f)
            except BackendError as e:
                log.error("spool: %s", e)
                continue
            self.fs.files.forget(f)
            log.info("spool: %r uploaded", name)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.debug, args.log_file)
    mountpoint = os.path.abspath(args.mountpoint)
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
    fs = SheepFS(backend, catalog, files, Options(list_ttl=args.list_ttl))

    notify = None
    if not args.foreground:
        notify = _daemonize()
    options = set(pyfuse3.default_options) | {"fsname=sheepfs", "subtype=sheepfs"}
    try:
        pyfuse3.init(fs, mountpoint, options)
    except RuntimeError as e:
        log.error("cannot mount on %s: %s", mountpoint, e)
        _tell_parent(notify, 1)
        return 1
    log.info("mounted %s:%d on %s", args.address, args.port, mountpoint)
    _tell_parent(notify, 0)
    daemon = Daemon(backend, fs, spool, mountpoint)
    try:
        saved = trio.run(daemon.serve)
    except BaseException:
        pyfuse3.close(unmount=True)
        raise
    pyfuse3.close(unmount=True)
    log.info(
        "unmounted %s: %d bytes uploaded from the spool, %d bytes written back, %d errors; %s",
        mountpoint,
        files.uploaded,
        cache.bytes_written,
        fs.errors + files.errors,
        "all data saved" if saved else "SOME DATA COULD NOT BE SAVED (see above)",
    )
    return 0 if saved else 1


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
    if not any(isinstance(h, logging.FileHandler) for h in logging.getLogger().handlers):
        devnull = os.open(os.devnull, os.O_RDWR)
        os.dup2(devnull, 2)
