"""A fake Sheepdog ``dog`` CLI over a directory of sparse files.

It reproduces what the real dog (Sheepdog 1.0) prints and returns, traps included: usage
text on stdout with exit 64, ``vdi delete`` exiting 0 on failure, short stdin zero-padded to
LEN, a write without LEN zero-filling the rest of its object, names silently cut to 255
bytes, raw-list escaping, vids hashed from the name, and data loss when two writers race to
create the same object. Run as ``collie`` it behaves like a pre-1.0 release (10-field list).

The store is the directory named by $SHEEPDOG_FAKE_STORE:
  config.json  re-read on every call (see DEFAULTS and control.py)
  state.json   the inodes; guarded by an flock on ``lock``
  objects/     one sparse file per data object: ``<vid>-<index>``
  calls.log    one JSON line per invocation
Stdlib only: it must start fast.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import re
import signal
import sys
import time
from contextlib import contextmanager
from pathlib import Path


def _process_start() -> float:
    """When this process started (monotonic clock), so call_cost includes start-up."""
    try:
        with open("/proc/self/stat") as f:
            ticks = int(f.read().rpartition(")")[2].split()[19])
        started = (ticks + 1) / os.sysconf("SC_CLK_TCK")  # round up: never cheaper
        return time.monotonic() - (time.clock_gettime(time.CLOCK_BOOTTIME) - started)
    except (OSError, ValueError, IndexError):
        return time.monotonic()


START = _process_start()
PROG = "dog"
MAX_NAME = 255
MAX_TAG = 255
NR_OBJECTS = 1 << 20
HYPER_MAX = 1 << 54  # SD_MAX_VDI_SIZE, 16 PiB
DEFAULTS = {
    "address": "127.0.0.1",
    "port": 7000,
    "reachable": True,
    "formatted": True,
    "hang": False,
    "call_cost": 0.0,
    "bandwidth": 0,  # bytes/s for reads and writes; 0 is as fast as it goes
    "list_cost_per_vdi": 0.0,  # seconds `vdi list` spends per inode (real dog: ~0.33 ms)
    "read_bandwidth": None,  # overrides for reads,
    "write_bandwidth": None,  # writes into allocated objects,
    "alloc_bandwidth": None,  # and writes that allocate (real dog: ~983, ~345, ~198 MiB/s)
    "nodes": 3,
    "disk_size": 85_000_000_000,
    "copies": 2,
    "faults": [],
    "unreadable": [],  # VDI names whose inode cannot be read now (a node down, recovering)
}
SPEC = "You may use B, K, M, G, T or P suffixes for bytes, kilobytes, megabytes, gigabytes, terabytes and petabytes."  # noqa: E501

OPTS = {
    "-a": "  -a, --address           specify the daemon address (default: localhost)",
    "-p": "  -p, --port              specify the daemon port",
    "-h": "  -h, --help              display this help and exit",
    "-T": "  -T, --time              show elapsed time",
    "-r": "  -r, --raw               raw output mode: omit headers, separate fields with\n"
    "                          single spaces and print all sizes in decimal bytes",
    "-v": "  -v, --verbose           print more information than default",
    "-s": "  -s, --snapshot          specify a snapshot id or tag name",
    "-P": "  -P, --prealloc          preallocate all the data objects",
    "-y": "  -y, --hyper             create a hyper volume",
    "-c": "  -c, --copies            specify the data redundancy level",
    "-z": "  -z, --block_size_shift  specify the bit shift num for data object size",
    "-n": "  -n, --no-share          share nothing with its parent",
    "-R": "  -R, --reduce-identical-snapshotsdo not create snapshot if working VDI doesn't "
    "have its own objects",
    "-B": "  -B, --nr-batched-reclamationspecify a number of batchedreclamation during VDI "
    "deletion",
    "-I": "  -I, --reclamation-intervalspecify how long (unit: second)in reclamation loop "
    "during VDI deletion",
    "-m": "  -m, --max-reclaim       specify the maximum number of reclaimed objects (if this "
    "option is specified, an inode object won't be reclaimed)",
    "-d": "  -d, --delete            delete a key",
    "-x": "  -x, --exclusive         write in an exclusive mode",
}
# command -> (options in usage order, options taking an argument, usage tail)
COMMANDS = {
    ("vdi", "create"): ("PycaphrvzT", "cazp", "[-P] [-y] [-c copies] [-a address] [-p port] [-h] [-r] [-v] [-z block_size_shift] [-T] <vdiname> <size>"),  # noqa: E501
    ("vdi", "list"): ("aphrT", "ap", "[-a address] [-p port] [-h] [-r] [-T] [vdiname]"),
    ("vdi", "read"): ("saphT", "sap", "[-s snapshot] [-a address] [-p port] [-h] [-T] <vdiname> [<offset> [<len>]]"),  # noqa: E501
    ("vdi", "write"): ("aphT", "ap", "[-a address] [-p port] [-h] [-T] <vdiname> [<offset> [<len>]]"),  # noqa: E501
    ("vdi", "delete"): ("saphTBIm", "sapBIm", "[-s snapshot] [-a address] [-p port] [-h] [-T] [-B nr-batched-reclamation] [-I reclamation-interval] [-m max-reclaim] <vdiname>"),  # noqa: E501
    ("vdi", "resize"): ("aphT", "ap", "[-a address] [-p port] [-h] [-T] <vdiname> <new size>"),
    ("vdi", "snapshot"): ("saphrvTR", "sap", "[-s snapshot] [-a address] [-p port] [-h] [-r] [-v] [-T] [-R] <vdiname>"),  # noqa: E501
    ("vdi", "clone"): ("sPnaphrvT", "sap", "[-s snapshot] [-P] [-n] [-a address] [-p port] [-h] [-r] [-v] [-T] <src vdi> <dst vdi>"),  # noqa: E501
    ("vdi", "setattr"): ("dxaphT", "ap", "[-d] [-x] [-a address] [-p port] [-h] [-T] <vdiname> <key> [value]"),  # noqa: E501
    ("vdi", "getattr"): ("aphT", "ap", "[-a address] [-p port] [-h] [-T] <vdiname> <key>"),
    ("node", "list"): ("aphr", "ap", "[-a address] [-p port] [-h] [-r]"),
    ("node", "info"): ("aphr", "ap", "[-a address] [-p port] [-h] [-r]"),
    ("node", "recovery"): ("aphPrT", "ap", "[-a address] [-p port] [-h] [-P] [-r] [-T] <max> <interval>"),  # noqa: E501
    ("cluster", "info"): ("aphrv", "ap", "[-a address] [-p port] [-h] [-r] [-v]"),
}  # fmt: skip
LONG = {
    "address": "a", "port": "p", "help": "h", "raw": "r", "verbose": "v", "snapshot": "s",
    "prealloc": "P", "hyper": "y", "copies": "c", "block_size_shift": "z", "no-share": "n",
    "time": "T", "reduce-identical-snapshots": "R", "nr-batched-reclamation": "B",
    "reclamation-interval": "I", "max-reclaim": "m", "delete": "d", "exclusive": "x",
}  # fmt: skip


class Exit(Exception):
    """Stop with this exit code (output already written)."""

    def __init__(self, code: int) -> None:
        self.code = code


def out(data: bytes | str) -> None:
    if isinstance(data, str):
        data = data.encode()
    view = memoryview(data)
    while view:
        n = os.write(1, view)
        view = view[n:]


def err(text: str | bytes) -> None:
    if isinstance(text, str):
        text = text.encode(errors="surrogateescape")
    os.write(2, text)


def fail(message: str | bytes, code: int) -> None:
    """Print one error line on stderr and exit with ``code``."""
    if isinstance(message, str):
        message = message.encode(errors="surrogateescape")
    err(message + b"\n")
    raise Exit(code)


def usage(cmd: tuple[str, str], message: str = "", code: int = 64) -> None:
    if message:
        err(message + "\n")
    order, _, tail = COMMANDS[cmd]
    text = f"Usage: {PROG} {cmd[0]} {cmd[1]} {tail}\nOptions:\n"
    text += "".join(OPTS["-" + o] + "\n" for o in order)
    out(text)
    raise Exit(code)


# -- numbers as dog parses them -----------------------------------------------------------

_NUM = re.compile(rb"\s*[+-]?(0[xX][0-9a-fA-F]+|(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?)")
_SUFFIX = {b"": 1, b"B": 1, b"K": 1 << 10, b"M": 1 << 20, b"G": 1 << 30, b"T": 1 << 40,
           b"P": 1 << 50}  # fmt: skip


def parse_size(text: bytes) -> int | None:
    """strtod() plus an optional B/K/M/G/T/P suffix, as dog's option_parse_size."""
    m = _NUM.match(text)
    if not m:
        return None
    number = m.group(0).strip()
    value = (
        float(int(number, 16)) if number.lower().lstrip(b"+-").startswith(b"0x") else float(number)
    )
    rest = text[m.end() :]
    if rest.upper() not in _SUFFIX:
        return None
    return int(value * _SUFFIX[rest.upper()])


def size_arg(cmd: tuple[str, str], text: bytes) -> int:
    value = parse_size(text)
    if value is None or value < 0:
        usage(cmd, f"Invalid size '{os.fsdecode(text)}'\n{SPEC}")
    return value  # type: ignore[return-value]


def human(n: float) -> str:
    units = ["MB", "GB", "TB", "PB"]
    n = n / (1 << 20)
    unit = 0
    while n >= 1024 and unit < len(units) - 1:
        n /= 1024
        unit += 1
    return f"{n:.1f} {units[unit]}"


# -- the store ----------------------------------------------------------------------------


class Store:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.objects = root / "objects"
        self.config = dict(DEFAULTS)
        try:
            self.config.update(json.loads((root / "config.json").read_text()))
        except FileNotFoundError:
            pass
        self.state: dict = {}
        self.faults: Faults

    @contextmanager
    def locked(self):
        with open(self.root / "lock", "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                self.state = self._load()
                yield self.state
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _load(self) -> dict:
        try:
            return json.loads((self.root / "state.json").read_text())
        except FileNotFoundError:
            return {"inodes": {}, "fault_hits": {}}

    def save(self) -> None:
        tmp = self.root / f"state.json.{os.getpid()}"
        tmp.write_text(json.dumps(self.state))
        os.replace(tmp, self.root / "state.json")

    def bandwidth(self, key: str) -> int:
        value = self.config.get(key)
        return int(self.config["bandwidth"] if value is None else value)

    def snapshot_state(self) -> dict:
        with self.locked() as state:
            return state

    def obj_path(self, vid: int, idx: int) -> Path:
        return self.objects / f"{vid:06x}-{idx:08x}"


def b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


def unb64(s: str) -> bytes:
    return base64.b64decode(s)


def vdi_hash(name: bytes) -> int:
    h = 0xCBF29CE484222325
    for c in name:
        h ^= c
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return (h & 0xFFFFFF) or 1


def free_vid(state: dict, name: bytes) -> int:
    used = state["inodes"]
    vid = vdi_hash(name)
    for _ in range(1 << 24):
        if str(vid) not in used:
            return vid
        vid = (vid + 1) & 0xFFFFFF or 1
    raise RuntimeError("no free vid")


def is_snapshot(i: dict) -> bool:
    return bool(i["snap_ctime"])


def live_inodes(state: dict):
    for vid in sorted(state["inodes"], key=int):
        i = state["inodes"][vid]
        if not i["deleted"]:
            yield int(vid), i


def working(state: dict, name: bytes) -> tuple[int, dict] | None:
    for vid, i in live_inodes(state):
        if unb64(i["name"]) == name and not is_snapshot(i):
            return vid, i
    return None


def object_size(i: dict) -> int:
    return 1 << i["shift"]


def max_size(i: dict) -> int:
    return HYPER_MAX if i.get("hyper") else object_size(i) * NR_OBJECTS


# -- option parsing (getopt_long with permutation) ----------------------------------------


def parse(cmd: tuple[str, str], argv: list[bytes]) -> tuple[dict[str, bytes | bool], list[bytes]]:
    order, with_arg, _ = COMMANDS[cmd]
    opts: dict[str, bytes | bool] = {}
    args: list[bytes] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        i += 1
        if a == b"--":
            args.extend(argv[i:])
            break
        if a.startswith(b"--") and len(a) > 2:
            key, eq, val = a[2:].partition(b"=")
            letter = LONG.get(key.decode(errors="replace"))
            if letter is None or letter not in order:
                err(f"{PROG}: unrecognized option '{os.fsdecode(a)}'\n"
                    f"Try '{PROG} --help' for more information.\n")  # fmt: skip
                raise Exit(64)
            if letter in with_arg:
                if not eq:
                    if i >= len(argv):
                        err(f"{PROG}: option '--{key.decode()}' requires an argument\n"
                            f"Try '{PROG} --help' for more information.\n")  # fmt: skip
                        raise Exit(64)
                    val = argv[i]
                    i += 1
                opts[letter] = val
            else:
                opts[letter] = True
            continue
        if a.startswith(b"-") and len(a) > 1:
            j = 1
            while j < len(a):
                letter = chr(a[j])
                j += 1
                if letter not in order:
                    err(f"{PROG}: invalid option -- '{letter}'\n"
                        f"Try '{PROG} --help' for more information.\n")  # fmt: skip
                    raise Exit(64)
                if letter in with_arg:
                    if j < len(a):
                        opts[letter] = a[j:]
                    elif i < len(argv):
                        opts[letter] = argv[i]
                        i += 1
                    else:
                        err(f"{PROG}: option requires an argument -- '{letter}'\n"
                            f"Try '{PROG} --help' for more information.\n")  # fmt: skip
                        raise Exit(64)
                    break
                opts[letter] = True
            continue
        args.append(a)
    if opts.get("h"):
        usage(cmd, code=0)
    return opts, args


# -- the cluster connection ---------------------------------------------------------------


def target(opts: dict) -> tuple[str, int]:
    address = opts.get("a", b"localhost")
    port_text = opts.get("p")
    port = 7000
    if port_text is not None:
        try:
            port = int(port_text)
        except ValueError:
            port = 0
        if not 0 < port < 65536:
            fail(f"Invalid port number '{os.fsdecode(port_text)}'", 64)
    addr = os.fsdecode(address)
    if addr == "localhost":
        addr = "127.0.0.1"
    if not re.fullmatch(r"\d{1,3}(\.\d{1,3}){3}|[0-9a-fA-F:]+:[0-9a-fA-F:]*", addr):
        fail(f"Invalid ip address {addr}", 1)
    return addr, port


def reachable(store: Store, addr: str, port: int) -> bool:
    c = store.config
    return bool(c["reachable"]) and addr == c["address"] and port == int(c["port"])


def refused(addr: str, port: int) -> None:
    err(f"failed to connect to {addr}:{port}: Connection refused\n" * 2)


def open_error(name: bytes, snap_id: int = 0, tag: bytes = b"") -> bytes:
    return b"Failed to open VDI %s (snapshot id: %d snapshot tag: %s): " % (name, snap_id, tag)


# -- commands ---------------------------------------------------------------------------


def cmd_vdi_create(store: Store, opts: dict, args: list[bytes]) -> None:
    cmd = ("vdi", "create")
    if not args:
        usage(cmd, "Please specify the VDI name")
    if len(args) < 2:
        usage(cmd, "Please specify the VDI size")
    name = args[0][:MAX_NAME]
    size = size_arg(cmd, args[1])
    hyper = bool(opts.get("y"))
    shift = 22
    if "z" in opts:
        shift = int(opts["z"])
        if shift < 20:
            fail("Object Size is larger than 2^20. Please set shift bit larger than 20", 1)
        if shift > 31:
            fail("Object Size is limited to 2^31. Please set shift bit lower than 31", 1)
    if hyper:
        if size > HYPER_MAX:
            usage(cmd, "VDI size is too large")
    elif size > (1 << shift) * NR_OBJECTS:
        limit = human((1 << shift) * NR_OBJECTS)
        usage(cmd, f"VDI size is larger than {limit} bytes, please use '-y' to create a hyper "
              "volume with size up to 16 PB bytes or use '-z' to create larger object size "
              "volume")  # fmt: skip
    addr, port = target(opts)
    if not reachable(store, addr, port):
        refused(addr, port)
        fail("Failed to get node list", 2)
    if not store.config["formatted"]:
        fail(b"Failed to create VDI %s: Waiting for cluster to be formatted" % name, 1)
    copies = os.fsdecode(opts["c"]) if "c" in opts else str(store.config["copies"])
    with store.locked() as state:
        if working(state, name) is not None:
            fail(b"Failed to create VDI %s: VDI exists already" % name, 1)
        vid = free_vid(state, name)
        state["inodes"][str(vid)] = new_inode(name, size, shift, copies, hyper)
        store.save()
    if opts.get("v"):
        out(f"{vid:x}\n" if opts.get("r") else f"VDI ID of newly created VDI: {vid:x}\n")


def new_inode(name: bytes, size: int, shift: int, copies: str, hyper: bool = False) -> dict:
    return {
        "name": b64(name), "tag": "", "size": size, "shift": shift, "copies": copies,
        "ctime": int(time.time()), "snap_ctime": 0, "snap_id": 1, "parent": 0,
        "index": {}, "deleted": False, "hyper": hyper,
    }  # fmt: skip


def row(vid: int, i: dict, raw: bool, with_shift: bool) -> bytes:
    name = unb64(i["name"])
    own = sum(1 for v in i["index"].values() if v == vid)
    shared = sum(1 for v in i["index"].values() if v and v != vid)
    osz = object_size(i)
    if is_snapshot(i):
        kind, snap_id = b"s", i["snap_id"]
    elif i["snap_id"] == 1 and i["parent"]:
        kind, snap_id = b"c", 0
    else:
        kind, snap_id = b"=", 0
    tag = unb64(i["tag"])
    if raw:
        esc = bytearray()
        for c in name:
            if c in b" \t\n\v\f\r\\":
                esc.append(0x5C)
            esc.append(c)
        line = b"%s %s %d %d %d %d %d %x %s %s" % (
            kind, bytes(esc), snap_id, i["size"], own * osz, shared * osz, i["ctime"], vid,
            i["copies"].encode(), tag,
        )  # fmt: skip
        if with_shift:
            line += b" %d" % i["shift"]
        return line + b"\n"
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(i["ctime"]))
    mark = b" " if kind == b"=" else kind
    return b"%s %-8s %5d %7s %7s %7s %s %7x %6s %13s %5d\n" % (
        mark, name, snap_id, human(i["size"]).encode(), human(own * osz).encode(),
        human(shared * osz).encode(), when.encode(), vid, i["copies"].encode(), tag, i["shift"],
    )  # fmt: skip


def cmd_vdi_list(store: Store, opts: dict, args: list[bytes]) -> None:
    raw = bool(opts.get("r"))
    addr, port = target(opts)
    header = b"  Name        Id    Size    Used  Shared    Creation time   VDI id  Copies  Tag   Block Size Shift\n"  # noqa: E501
    if not reachable(store, addr, port):
        if not raw:
            out(header)
        refused(addr, port)
        raise Exit(2)
    if not raw:
        out(header)
    if not store.config["formatted"]:
        return
    state = store.snapshot_state()
    # dog reads every inode to list (or to find) any of them: O(number of VDIs)
    time.sleep(float(store.config["list_cost_per_vdi"]) * sum(1 for _ in live_inodes(state)))
    want = args[0] if args else None
    unreadable = {os.fsencode(n) for n in store.config.get("unreadable", [])}
    lines = []
    for vid, i in live_inodes(state):
        name = unb64(i["name"])
        if name in unreadable:  # dog/common.c parse_vdi: said on stderr, skipped, exit 0
            err(f"Failed to read object {0x80 << 56 | vid << 32:016x} I/O error\n"
                "Failed to read inode header\n")  # fmt: skip
            continue
        if not name or (want is not None and name != want):
            continue
        lines.append(row(vid, i, raw, PROG == "dog"))
    out(b"".join(lines))


def find(state: dict, name: bytes, snap: bytes | None) -> tuple[int, dict] | bytes:
    """The inode to open, or the error text after "Failed to open VDI ...: "."""
    snap_id, tag = 0, b""
    if snap is not None:
        try:
            snap_id = int(snap)
        except ValueError:
            tag = snap
    prefix = open_error(name, snap_id, tag)
    if snap is None:
        found = working(state, name)
        return found if found else prefix + b"No VDI found"
    family = [(v, i) for v, i in live_inodes(state) if unb64(i["name"]) == name]
    if not family:
        return prefix + b"No VDI found"
    for vid, i in family:
        if is_snapshot(i) and (
            (snap_id and i["snap_id"] == snap_id) or (tag and unb64(i["tag"]) == tag)
        ):
            return vid, i
    return prefix + b"Failed to find requested tag"


def check_snap_arg(snap: bytes | None) -> None:
    if snap is not None:
        try:
            if int(snap) <= 0:
                fail("The snapshot id must be larger than zero", 1)
        except ValueError:
            pass


def open_vdi(store: Store, opts: dict, name: bytes, snap: bytes | None, rc_missing: int = 1):
    addr, port = target(opts)
    if not reachable(store, addr, port):
        refused(addr, port)
        snap_id, tag = 0, b""
        if snap is not None:
            try:
                snap_id = int(snap)
            except ValueError:
                tag = snap
        fail(open_error(name, snap_id, tag) + b"I/O error", rc_missing)
    if not store.config["formatted"]:
        fail(open_error(name) + b"Waiting for cluster to be formatted", rc_missing)
    found = find(store.snapshot_state(), name, snap)
    if isinstance(found, bytes):
        fail(found, rc_missing)
    return found


class Pacer:
    """Makes data move no faster than the configured bandwidths (bytes/s, 0 = unlimited)."""

    def __init__(self) -> None:
        self.start = time.monotonic()
        self.due = 0.0  # seconds the data moved so far should have taken

    def moved_bytes(self, n: int, bandwidth: int) -> None:
        if not bandwidth:
            return
        self.due += n / bandwidth
        ahead = self.due - (time.monotonic() - self.start)
        if ahead > 0:
            time.sleep(ahead)


def read_object(store: Store, i: dict, idx: int, offset: int, length: int) -> bytes:
    owner = i["index"].get(str(idx), 0)
    if not owner:
        return bytes(length)
    try:
        fd = os.open(store.obj_path(owner, idx), os.O_RDONLY)
    except FileNotFoundError:
        return bytes(length)
    try:
        data = os.pread(fd, length, offset)
    finally:
        os.close(fd)
    return data + bytes(length - len(data))


def cmd_vdi_read(store: Store, opts: dict, args: list[bytes]) -> None:
    cmd = ("vdi", "read")
    if not args:
        usage(cmd, "Please specify the VDI name")
    name = args[0][:MAX_NAME]
    offset = size_arg(cmd, args[1]) if len(args) > 1 else 0
    length = size_arg(cmd, args[2]) if len(args) > 2 else None
    snap = opts.get("s")
    check_snap_arg(snap)
    vid, i = open_vdi(store, opts, name, snap)
    size = i["size"]
    if offset > size:
        fail("Read offset is beyond the end of the VDI", 1)
    total = size - offset if length is None else min(length, size - offset)
    faults = store.faults
    pacer, bandwidth = Pacer(), store.bandwidth("read_bandwidth")
    osz = object_size(i)
    pos, end, sent = offset, offset + total, 0
    while pos < end:
        idx, within = divmod(pos, osz)
        n = min(end - pos, osz - within)
        data = read_object(store, i, idx, within, n)
        faults.after(sent + n)
        out(data)
        sent += n
        pacer.moved_bytes(n, bandwidth)
        pos += n


def read_stdin(n: int) -> bytes:
    """xread(): loop until n bytes or EOF."""
    parts, got = [], 0
    while got < n:
        piece = os.read(0, min(n - got, 1 << 20))
        if not piece:
            break
        parts.append(piece)
        got += len(piece)
    return b"".join(parts)


def cmd_vdi_write(store: Store, opts: dict, args: list[bytes]) -> None:
    cmd = ("vdi", "write")
    if not args:
        usage(cmd, "Please specify the VDI name")
    name = args[0][:MAX_NAME]
    offset = size_arg(cmd, args[1]) if len(args) > 1 else 0
    length = size_arg(cmd, args[2]) if len(args) > 2 else None
    vid, i = open_vdi(store, opts, name, None)  # the inode as it is now: dog reads it once
    size = i["size"]
    if offset > size:
        fail("Write offset is beyond the end of the VDI", 1)
    total = size - offset if length is None else min(length, size - offset)
    faults = store.faults
    pacer = Pacer()
    overwrite, alloc = store.bandwidth("write_bandwidth"), store.bandwidth("alloc_bandwidth")
    osz = object_size(i)
    pos, end, taken = offset, offset + total, 0
    while pos < end:
        idx, within = divmod(pos, osz)
        n = min(end - pos, osz - within)
        faults.after(taken + n)
        data = read_stdin(n)
        taken += n
        short = len(data) < n
        data += bytes(n - len(data))  # short stdin: the chunk is zero-filled
        data = ec_short_write(i, within, data)
        faults.nospace(vid, idx, i)
        allocating = i["index"].get(str(idx), 0) != vid
        if allocating and alloc:
            # Paced first: the object's share of the time is also the window in which a
            # concurrent creator wipes our data, so the two are not slept one after the other.
            pacer.moved_bytes(n, alloc)
            put_object(store, vid, i, idx, within, data, window=0.0)
        else:
            put_object(store, vid, i, idx, within, data)
            pacer.moved_bytes(n, overwrite)
        pos += n
        if short:
            break


#: The gateway's unit of erasure coding (SD_EC_DATA_STRIPE_SIZE).
EC_STRIPE = 512


def ec_short_write(i: dict, within: int, data: bytes) -> bytes:
    """Erasure-coded VDIs (copies "D:P"): a write that starts on a 512-byte stripe and is
    shorter than one zeroes the rest of that stripe; the gateway only merges a stripe's old
    bytes when the write starts inside it (seen on a real 1.0 cluster: 3 bytes at offset
    512 of an object zeroed 515..1023; at 100, or 0 with 1000 bytes, nothing was lost)."""
    if ":" in i["copies"] and within % EC_STRIPE == 0 and len(data) < EC_STRIPE:
        return data + bytes(EC_STRIPE - len(data))
    return data


def put_object(
    store: Store, vid: int, i: dict, idx: int, within: int, data: bytes, window: float = 0.02
) -> None:
    """Write into one object: in place, create-and-write, or copy-on-write.

    ``window``: how long a new object stays in flight before it lands (docs/SHEEPDOG.md F2).
    """
    osz = object_size(i)
    owner = i["index"].get(str(idx), 0)
    path = store.obj_path(vid, idx)
    if owner == vid:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            os.pwrite(fd, data, within)
        finally:
            os.close(fd)
        return
    # CREATE_AND_WRITE replaces the whole object: zeros (or the parent's copy) plus our data.
    # The decision was made on the inode read at the start of the call, so two writers that
    # both saw the object unallocated both create it, and the last one wins (docs/SHEEPDOG.md F2).
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.ftruncate(fd, osz)
        if owner:
            src = store.obj_path(owner, idx)
            with open(src, "rb") as f:
                pos = 0
                while block := f.read(1 << 20):
                    if block.count(0) != len(block):
                        os.pwrite(fd, block, pos)
                    pos += len(block)
        if owner == 0 and window:
            time.sleep(window)  # the window in which a concurrent creator wipes our data
        os.pwrite(fd, data, within)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    with store.locked() as state:
        current = state["inodes"].get(str(vid))
        if current is not None and not current["deleted"]:
            current["index"][str(idx)] = vid
            store.save()
    i["index"][str(idx)] = vid


def gc_objects(store: Store, state: dict, vid: int) -> None:
    """Remove the objects of a deleted inode that no live inode still points at."""
    i = state["inodes"][str(vid)]
    referenced = {
        (owner, idx) for _, other in live_inodes(state) for idx, owner in other["index"].items()
    }
    for idx, owner in i["index"].items():
        if owner == vid and (vid, idx) not in referenced:
            try:
                store.obj_path(vid, int(idx)).unlink()
            except FileNotFoundError:
                pass


def cmd_vdi_delete(store: Store, opts: dict, args: list[bytes]) -> None:
    cmd = ("vdi", "delete")
    if not args:
        usage(cmd)
    name = args[0][:MAX_NAME]
    snap = opts.get("s")
    addr, port = target(opts)
    # do_vdi_delete ends in "return EXIT_SUCCESS": every failure below still exits 0
    if not reachable(store, addr, port):
        refused(addr, port)
        err(open_error(name) + b"I/O error\n")
        return
    if not store.config["formatted"]:
        err(open_error(name) + b"Waiting for cluster to be formatted\n")
        return
    with store.locked() as state:
        found = find(state, name, snap)
        if isinstance(found, bytes):
            err(found + b"\n")
            return
        vid, i = found
        if i.get("hyper") and not snap:
            crash_cluster(store, name)
            return
        i["deleted"] = True
        gc_objects(store, state, vid)
        i["index"] = {}
        store.save()


def crash_cluster(store: Store, name: bytes) -> None:
    """What real dog's delete does to a hyper volume: its index-zeroing step wipes the
    B-tree root, every sheep panics (``traverse_btree ... This B-tree not support depth 0``)
    and the cluster is gone; dog still exits 0. From then on nothing answers."""
    store.config.update(reachable=False, crashed=f"vdi delete of hyper volume {name!r}")
    tmp = store.root / f"config.json.{os.getpid()}"
    tmp.write_text(json.dumps(store.config))
    os.replace(tmp, store.root / "config.json")
    err(open_error(name) + b"I/O error\n")


def cmd_vdi_resize(store: Store, opts: dict, args: list[bytes]) -> None:
    cmd = ("vdi", "resize")
    if not args:
        usage(cmd, "Please specify the VDI name")
    if len(args) < 2:
        usage(cmd, "Please specify the new size for the VDI")
    name = args[0][:MAX_NAME]
    new = size_arg(cmd, args[1])
    vid, i = open_vdi(store, opts, name, None)
    if new < i["size"]:
        usage(cmd, "Shrinking VDIs is not implemented")
    if new > max_size(i):
        dot = "" if i.get("hyper") else "."
        usage(cmd, f"New VDI size is too large{dot} This volume's max size is {max_size(i)}")
    with store.locked() as state:
        state["inodes"][str(vid)]["size"] = new
        store.save()


def cmd_vdi_snapshot(store: Store, opts: dict, args: list[bytes]) -> None:
    cmd = ("vdi", "snapshot")
    tag = opts.get("s", b"")
    if tag and re.fullmatch(rb"\d+", tag):
        usage(cmd, "Please specify a non-integer value for a snapshot tag name")
    if not args:
        usage(cmd, "Please specify the VDI name")
    name = args[0][:MAX_NAME]
    tag = tag[:MAX_TAG]
    addr, port = target(opts)
    if not reachable(store, addr, port):
        refused(addr, port)
        fail(b"Failed to create snapshot for %s: I/O error" % name, 1)
    if not store.config["formatted"]:
        fail(b"Failed to create snapshot for %s: Waiting for cluster to be formatted" % name, 1)
    with store.locked() as state:
        found = working(state, name)
        if found is None:
            fail(b"Failed to create snapshot for %s: No VDI found" % name, 1)
        vid, i = found  # type: ignore[misc]
        if i.get("hyper"):
            fail("creating a snapshot of hypervolume is not supported", 1)
        if tag and any(
            unb64(o["name"]) == name and is_snapshot(o) and unb64(o["tag"]) == tag
            for _, o in live_inodes(state)
        ):
            fail(b"Failed to create snapshot for %s, maybe snapshot id (0) or tag (%s) is "
                 b"existed" % (name, tag), 1)  # fmt: skip
        now = int(time.time())
        i["snap_ctime"] = now
        i["tag"] = b64(tag)
        new_vid = free_vid(state, name)
        fresh = new_inode(name, i["size"], i["shift"], i["copies"], i.get("hyper", False))
        fresh.update(snap_id=i["snap_id"] + 1, parent=vid, index=dict(i["index"]))
        state["inodes"][str(new_vid)] = fresh
        store.save()
    if opts.get("v"):
        if opts.get("r"):
            out(f"{new_vid:x} {vid:x}\n")
        else:
            out(f"new VID of original VDI: {new_vid:x}, VDI ID of newly created snapshot: "
                f"{vid:x}\n")  # fmt: skip


def cmd_vdi_clone(store: Store, opts: dict, args: list[bytes]) -> None:
    cmd = ("vdi", "clone")
    snap = opts.get("s")
    if snap is None:
        usage(cmd, "Only snapshot VDIs can be cloned\nPlease specify the '-s' option")
    if not args:
        usage(cmd, "Please specify the VDI name")
    if len(args) < 2:
        usage(cmd, "Destination VDI name must be specified")
    src, dst = args[0][:MAX_NAME], args[1][:MAX_NAME]
    check_snap_arg(snap)
    base_vid, base = open_vdi(store, opts, src, snap)
    no_share = bool(opts.get("n"))
    with store.locked() as state:
        if working(state, dst) is not None:
            fail(b"Failed to create VDI %s: VDI exists already" % dst, 1)
        vid = free_vid(state, dst)
        inode = new_inode(dst, base["size"], base["shift"], base["copies"])
        if not no_share:
            inode.update(parent=base_vid, index=dict(base["index"]))
        state["inodes"][str(vid)] = inode
        store.save()
    if no_share:
        for idx, owner in sorted(base["index"].items(), key=lambda kv: int(kv[0])):
            if owner:
                data = read_object(store, base, int(idx), 0, object_size(base))
                put_object(store, vid, inode, int(idx), 0, data)
    if opts.get("v"):
        out(f"{vid:x}\n" if opts.get("r") else f"VDI ID of newly created clone: {vid:x}\n")


def cmd_node_list(store: Store, opts: dict, args: list[bytes]) -> None:
    addr, port = target(opts)
    if not reachable(store, addr, port):
        refused(addr, port)
        fail("Failed to get node list", 2)
    n = int(store.config["nodes"])
    base = int(store.config["port"])
    host = store.config["address"]
    if opts.get("r"):
        out("".join(f"{k} {host}:{base + k} 128 {k}\n" for k in range(n)))
    else:
        out("  Id   Host:Port         V-Nodes       Zone\n" + "".join(
            f"{k:4d}   {host}:{base + k:<6d}     \t128 {k:10d}\n" for k in range(n)))  # fmt: skip


def cmd_node_recovery(store: Store, opts: dict, args: list[bytes]) -> None:
    """The nodes in ``config["recovering"]`` (ids) are recovering: 10 of 356 objects done."""
    addr, port = target(opts)
    if not reachable(store, addr, port):
        refused(addr, port)
        fail("Failed to get node list", 2)
    host, base = store.config["address"], int(store.config["port"])
    busy = [int(k) for k in store.config.get("recovering", [])]
    if opts.get("r"):
        out("".join(f"{k} {host}:{base + k} 128 {k} 10 356\n" for k in busy))
    else:
        out("Nodes In Recovery:\n  Id   Host:Port         V-Nodes       Zone       Progress\n"
            + "".join(f"{k:4d}   {host}:{base + k:<6d}{128:12d}{k:11d}{2.8:11.1f}%\n"
                      for k in busy))  # fmt: skip


def cmd_node_info(store: Store, opts: dict, args: list[bytes]) -> None:
    addr, port = target(opts)
    if not reachable(store, addr, port):
        refused(addr, port)
        fail("Failed to get node list", 2)
    state = store.snapshot_state()
    n = int(store.config["nodes"])
    disk = int(store.config["disk_size"])
    copies = min(int(store.config["copies"]), n)
    allocated = sum(
        object_size(i) for vid, i in live_inodes(state) for o in i["index"].values() if o == vid
    )
    virtual = sum(i["size"] for _, i in live_inodes(state))
    per_node = allocated * copies // n
    rows = [(str(k), disk, per_node, disk - per_node) for k in range(n)]
    total = ("Total", disk * n, per_node * n, (disk - per_node) * n)
    text = ""
    for label, size, used, avail in rows + [total]:
        pct = used * 100 // size if size else 0
        text += f"{label} {size} {used} {avail} {pct}%"
        text += f" {virtual}\n" if label == "Total" else "\n"
    out(text)


def cmd_cluster_info(store: Store, opts: dict, args: list[bytes]) -> None:
    addr, port = target(opts)
    if not reachable(store, addr, port):
        refused(addr, port)
        fail("Failed to get node list", 2)
    raw = bool(opts.get("r"))
    if not store.config["formatted"]:
        out("Waiting for cluster to be formatted\n\n" if raw else
            "Cluster status: Waiting for cluster to be formatted\n\n")  # fmt: skip
        return
    created = int((store.root / "created").read_text()) if (store.root / "created").exists() \
        else int(time.time())  # fmt: skip
    host, base, n = store.config["address"], int(store.config["port"]), int(store.config["nodes"])
    members = ", ".join(f"{host}:{base + k}:128" for k in range(n))
    policy = f"plain with {store.config['copies']} redundancy policy"
    if raw and opts.get("v"):
        out(f"running, auto-recovery enabled\n{policy}\nauto\nnode\n{created} 1 [{members}]\n")
    elif raw:
        out(f"running, auto-recovery enabled\n\n{created} 1 [{members}]\n")
    elif opts.get("v"):
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(created))
        out(f"Cluster status: running, auto-recovery enabled\nCluster store: {policy}\n"
            "Cluster vnodes strategy: auto\nCluster vnode mode: node\nCluster created at "
            f"{time.ctime(created)}\n\nEpoch Time           Version [Host:Port:V-Nodes,,,]\n"
            f"{stamp}      1 [{members}]\n")  # fmt: skip
    else:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(created))
        out("Cluster status: running, auto-recovery enabled\n\nCluster created at "
            f"{time.ctime(created)}\n\nEpoch Time           Version [Host:Port:V-Nodes,,,]\n"
            f"{stamp}      1 [{members}]\n")  # fmt: skip


# -- VDI attributes ------------------------------------------------------------------------
#
# As Sheepdog keeps them (sheep/vdi.c:get_vdi_attr, docs/PROTOCOL.md P12): by the VDI's
# *name*, in slots probed from the key's hash. A plain set writes the hash slot without a
# probe; -x probes and takes the first missing slot; -d clears the first slot holding the
# key (its value stays) and get reads that slot. Nothing removes them: they outlive the VDI
# and the next VDI of that name finds them.


def attr_slots(state: dict, name: bytes, key: bytes) -> list[dict]:
    names = state.setdefault("attrs", {}).setdefault(b64(name), {})
    return names.setdefault(b64(key), [])


def attr_cluster(store: Store, opts: dict, what: str, rc: int) -> None:
    """The cluster-op failures: unreachable, unformatted (what dog prints for each)."""
    addr, port = target(opts)
    if not reachable(store, addr, port):
        refused(addr, port)
        fail(f"{what}: I/O error", rc)
    if not store.config["formatted"]:
        fail(f"{what}: Waiting for cluster to be formatted", rc)


def attr_args(cmd: tuple[str, str], args: list[bytes]) -> tuple[bytes, bytes]:
    if not args:
        usage(cmd)
    if len(args) < 2:
        err("Please specify the attribute key\n")
        usage(cmd)
    return args[0][:MAX_NAME], args[1][:255]


def cmd_vdi_setattr(store: Store, opts: dict, args: list[bytes]) -> None:
    cmd = ("vdi", "setattr")
    name, key = attr_args(cmd, args)
    delete, excl = bool(opts.get("d")), bool(opts.get("x"))
    value = args[2] if len(args) > 2 else None
    if value is None and not delete:
        value = read_stdin(65536).split(b"\0", 1)[0]  # dog keeps strlen(value) bytes
    attr_cluster(store, opts, "Failed to set attribute", 1)
    with store.locked() as state:
        if working(state, name) is None:
            fail("VDI not found", 5)
        slots = attr_slots(state, name, key)
        live = next((s for s in slots if not s["deleted"]), None)
        if delete:
            if live is None:
                fail(b"Attribute '%s' not found" % key, 5)
            live["deleted"] = True  # one NUL over the name: the value stays
        elif excl:
            if live is not None:
                fail(b"The attribute '%s' already exists" % key, 3)
            slots.append({"value": b64(value or b""), "deleted": False})
        else:
            new = {"value": b64(value or b""), "deleted": False}
            slots[:1] = [new]
        store.save()


def cmd_vdi_getattr(store: Store, opts: dict, args: list[bytes]) -> None:
    cmd = ("vdi", "getattr")
    name, key = attr_args(cmd, args)
    attr_cluster(store, opts, "Failed to find attribute oid", 5)
    state = store.snapshot_state()
    if working(state, name) is None:
        fail("VDI not found", 5)
    live = next((s for s in attr_slots(state, name, key) if not s["deleted"]), None)
    if live is None:
        fail(b"Attribute '%s' not found" % key, 5)
    out(unb64(live["value"]))


HANDLERS = {
    ("vdi", "create"): cmd_vdi_create,
    ("vdi", "list"): cmd_vdi_list,
    ("vdi", "read"): cmd_vdi_read,
    ("vdi", "write"): cmd_vdi_write,
    ("vdi", "delete"): cmd_vdi_delete,
    ("vdi", "resize"): cmd_vdi_resize,
    ("vdi", "snapshot"): cmd_vdi_snapshot,
    ("vdi", "clone"): cmd_vdi_clone,
    ("vdi", "setattr"): cmd_vdi_setattr,
    ("vdi", "getattr"): cmd_vdi_getattr,
    ("node", "list"): cmd_node_list,
    ("node", "info"): cmd_node_info,
    ("node", "recovery"): cmd_node_recovery,
    ("cluster", "info"): cmd_cluster_info,
}


# -- fault injection ----------------------------------------------------------------------


class Faults:
    """The first fault rule matching this call, applied at the right moment."""

    def __init__(self, store: Store, cmd: tuple[str, str], name: bytes | None) -> None:
        self.store = store
        self.rule = None
        for n, rule in enumerate(store.config.get("faults", [])):
            match = rule.get("match", [])
            if list(cmd)[: len(match)] != match:
                continue
            if "name" in rule and (name is None or os.fsencode(rule["name"]) != name):
                continue
            if "times" in rule:
                with store.locked() as state:
                    hits = state.setdefault("fault_hits", {}).get(str(n), 0)
                    if hits >= rule["times"]:
                        continue
                    state["fault_hits"][str(n)] = hits + 1
                    store.save()
            self.rule = rule
            break

    def at_start(self) -> None:
        r = self.rule
        if r is None or "after_bytes" in r or r.get("nospace"):
            return
        self.fire()

    def after(self, moved: int) -> None:
        """Called before moving data up to ``moved`` bytes."""
        r = self.rule
        if r is not None and "after_bytes" in r and moved > r["after_bytes"]:
            self.fire()

    def nospace(self, vid: int, idx: int, i: dict) -> None:
        r = self.rule
        if r is not None and r.get("nospace") and i["index"].get(str(idx), 0) != vid:
            # modelled on dog's write path (sd_strerror(SD_RES_NO_SPACE)), not from a transcript
            fail(f"Failed to write object {vid:06x}{idx:010x}: Server has no space for new "
                 "objects", 1)  # fmt: skip

    def fire(self) -> None:
        r = self.rule
        assert r is not None
        if r.get("sleep"):
            time.sleep(float(r["sleep"]))
        if r.get("hang"):
            while True:
                time.sleep(3600)
        if r.get("kill"):
            os.kill(os.getpid(), signal.SIGKILL)
        if "rc" in r or "stderr" in r or "stdout" in r:
            out(r.get("stdout", ""))
            err(r.get("stderr", ""))
            raise Exit(int(r.get("rc", 1)))


# -- main ---------------------------------------------------------------------------------


def main(argv: list[bytes]) -> int:
    global PROG
    PROG = "collie" if os.path.basename(argv[0]).startswith(b"collie") else "dog"
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    root = os.environ.get("SHEEPDOG_FAKE_STORE")
    if not root:
        err(f"{PROG} (fake): SHEEPDOG_FAKE_STORE is not set\n")
        return 1
    store = Store(Path(root))
    with open(store.root / "calls.log", "a") as log:
        log.write(json.dumps({"argv": [os.fsdecode(a) for a in argv[1:]], "pid": os.getpid(),
                              "t": time.time()}) + "\n")  # fmt: skip
    try:
        if store.config["hang"]:
            while True:
                time.sleep(3600)
        cmd = tuple(os.fsdecode(a) for a in argv[1:3])
        if cmd not in HANDLERS:
            err(f"Usage: {PROG} [options] <command> <subcommand>\n")
            return 64
        opts, args = parse(cmd, argv[3:])  # type: ignore[arg-type]
        name = args[0][:MAX_NAME] if args else None
        store.faults = Faults(store, cmd, name)  # type: ignore[arg-type]
        store.faults.at_start()
        HANDLERS[cmd](store, opts, args)  # type: ignore[index]
        return 0
    except Exit as e:
        return e.code
    finally:
        cost = float(store.config.get("call_cost", 0))
        left = cost - (time.monotonic() - START)
        if left > 0:
            time.sleep(left)


def run(argv: list[str]) -> None:
    """Entry point of the ``dog`` script: argv[0] is the name it was invoked by."""
    sys.exit(main([os.fsencode(a) for a in argv]))
