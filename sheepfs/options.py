"""The command line: options, their ``-o`` forms (as mount(8) and fstab pass them), and
the SOURCE argument."""

from __future__ import annotations

import argparse
import ipaddress
from pathlib import Path

from . import __version__
from .sizes import parse_size


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
        epilog="sheepfs status MOUNTPOINT [--json] shows what a running mount is doing "
        "(see sheepfs(8)).",
    )
    p.add_argument("source_or_mountpoint", metavar="SOURCE", help=argparse.SUPPRESS)
    p.add_argument("mountpoint", nargs="?", help=argparse.SUPPRESS)
    _cluster_options(p.add_argument_group("cluster"))
    _mount_options(p.add_argument_group("mount"))
    _data_options(p.add_argument_group("data"))
    g = p.add_argument_group("logging")
    g.add_argument("--debug", action="store_true", help="log every operation")
    g.add_argument("--log-file", type=Path, help="log here instead of stderr (or syslog)")
    g = p.add_argument_group("status")
    g.add_argument(
        "--metrics",
        type=_listen_arg,
        metavar="ADDR:PORT",
        help="serve the status counters in Prometheus' text format on http://ADDR:PORT/metrics "
        "(off by default)",
    )
    p.add_argument(
        "-o",
        dest="mount_options",
        action="append",
        default=[],
        metavar="OPTS",
        help="comma-separated options: the long options above with _ for - ("
        + ", ".join(k if convert is None else f"{k}=" for k, (_, convert) in _O_OPTIONS.items())
        + ")",
    )
    p.add_argument("-V", "--version", action="version", version=f"sheepfs {__version__}")
    return p


def _cluster_options(g: argparse._ArgumentGroup) -> None:
    g.add_argument(
        "-a",
        "--address",
        metavar="ADDR[:PORT][,...]",
        help="sheep address(es) (default 127.0.0.1); with several, the next is used when one "
        "stops answering",
    )
    g.add_argument("-p", "--port", type=int, help="sheep port (default 7000)")
    g.add_argument(
        "--backend",
        choices=("sheep", "dog"),
        default="sheep",
        help="how to talk to the cluster: sheep, its own protocol (default), or dog, the CLI "
        "(older clusters, collie)",
    )
    g.add_argument("--dog", help="path of the dog (or collie) CLI (default: dog, else collie)")
    g.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        help="seconds before a request to the cluster is given up (60)",
    )
    g.add_argument(
        "--local", type=Path, metavar="DIR", help="no cluster: keep VDIs as image files in DIR"
    )


def _mount_options(g: argparse._ArgumentGroup) -> None:
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
        "--show-snapshots",
        action="store_true",
        help="list the .snapshots directory in the root (it is reachable by path anyway)",
    )
    g.add_argument(
        "--direct-io",
        action="store_true",
        help="bypass the kernel's page cache: faster for large reads and writes (dd bs=1M), "
        "slower for small ones (no read-ahead)",
    )


def _data_options(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--spool-dir", type=Path, help="where new files wait until uploaded")
    g.add_argument(
        "--cache-size", type=parse_size, default=parse_size("256M"), help="chunk cache (256M)"
    )
    g.add_argument(
        "--list-ttl", type=float, default=1.0, help="seconds a VDI listing is reused (1)"
    )


#: -o option -> (attribute, converter); a converter of None marks a flag.
_O_OPTIONS: dict[str, tuple[str, object]] = {
    "address": ("address", str),
    "port": ("port", int),
    "backend": ("backend", str),
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
    "show_snapshots": ("show_snapshots", None),
    "spool_dir": ("spool_dir", Path),
    "cache_size": ("cache_size", parse_size),
    "list_ttl": ("list_ttl", float),
    "debug": ("debug", None),
    "log_file": ("log_file", Path),
    "metrics": ("metrics", lambda v: parse_listen(v)),
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
            _apply_o_option(parser, args, opt)
    if args.source:
        _apply_source(parser, args)
    if args.backend not in ("sheep", "dog"):
        parser.error(f"unknown backend {args.backend!r} (sheep or dog)")
    args.port = args.port or 7000
    try:
        args.addresses = parse_addresses(args.address or "127.0.0.1", args.port)
    except ValueError as e:
        parser.error(str(e))
    args.address, args.port = args.addresses[0]
    return args


def parse_addresses(text: str, default_port: int = 7000) -> list[tuple[str, int]]:
    """``ADDR[:PORT][,ADDR[:PORT]...]`` (IPv6 in brackets: ``[::1]:7000``), in order,
    without repeats. Raises ValueError saying what is wrong."""
    if not text.strip():
        raise ValueError("no sheep address given (ADDR[:PORT][,ADDR[:PORT]...])")
    out: list[tuple[str, int]] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            raise ValueError(f"an empty address in {text!r} (ADDR[:PORT][,ADDR[:PORT]...])")
        address = _parse_one(item, default_port)
        if address not in out:
            out.append(address)
    return out


def parse_listen(text: str) -> tuple[str, int]:
    """``ADDR:PORT`` (IPv6 as ``[::1]:9400``) to listen on. Raises ValueError."""
    host, port = _parse_one(text.strip(), 0)
    if not port:
        raise ValueError(f"{text!r}: give ADDR:PORT, e.g. 127.0.0.1:9400")
    return host, port


def _listen_arg(text: str) -> tuple[str, int]:
    try:
        return parse_listen(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _parse_one(item: str, default_port: int) -> tuple[str, int]:
    port_text: str | None = None
    if item.startswith("["):
        host, closed, rest = item[1:].partition("]")
        if not closed or rest[:1] not in ("", ":"):
            raise ValueError(f"sheep address {item!r}: write IPv6 as [ADDR] or [ADDR]:PORT")
        port_text = rest[1:] if rest else None
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"sheep address {item!r}: {host!r} is not an IPv6 address") from None
    elif item.count(":") > 1:
        raise ValueError(f"sheep address {item!r}: write an IPv6 address in brackets, [::1]:7000")
    else:
        host, colon, port_text = item.partition(":")
        port_text = port_text if colon else None
        if not host or any(c.isspace() for c in host):
            raise ValueError(f"sheep address {item!r}: no host name or address")
    if port_text is None:
        return host, default_port
    if not (port_text.isascii() and port_text.isdigit()) or not 0 < int(port_text) < 65536:
        raise ValueError(f"sheep address {item!r}: the port must be a number from 1 to 65535")
    return host, int(port_text)


def _apply_o_option(parser: argparse.ArgumentParser, args: argparse.Namespace, opt: str) -> None:
    key, has_value, value = opt.partition("=")
    if key in _IGNORED:
        return
    spec = _O_OPTIONS.get(key)
    if spec is None:
        parser.error(f"unknown mount option: -o {opt}")
    attr, convert = spec
    if convert is None:
        setattr(args, attr, True)
        return
    if not has_value:
        parser.error(f"-o {key} needs a value ({key}=...)")
    try:
        setattr(args, attr, convert(value))  # type: ignore[operator]
    except ValueError as e:
        parser.error(f"-o {opt}: {e}")


def _apply_source(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """SOURCE: ``local:DIR``, ``ADDR[:PORT][,ADDR[:PORT]...]``, or the placeholders
    fstab lines use."""
    if args.source.startswith("local:"):
        args.local = Path(args.source.removeprefix("local:"))
    elif args.source not in ("sheepfs", "sheepdog"):
        args.address = args.address or args.source
