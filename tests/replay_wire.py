"""Replay a wire transcript against a sheep-protocol server; report where its replies differ.

    python -m tests.replay_wire --port P [--transcript PATH] [--host 127.0.0.1]
                                [--steps 1-10,15] [--verbose] [--mask-ports] [--timeout S]

Run the server on a freshly formatted, empty store (3 nodes, 2 copies, 4 MiB objects). Each
step's recorded requests are sent as recorded (hdr_hex, then the payload; vids in oids are
deterministic on a fresh cluster), in order, each on its recorded connection (opened in recorded
order, dog's empty probe connection included); each reply (48-byte header + exactly data_length
bytes) is compared with the recorded one after masking what varies from run to run (masks()).
Prints one line per difference, then ``replay: N exchanges, M matched, K differ, S skipped``;
exit 0 only if K == 0. Node lists name ports 17200-17202: run the nodes there or --mask-ports.

As a library (stdlib only; load() puts each request header in rsp["req_hdr_hex"], which
compare() needs to mask times in inode and attr reads)::

    for step, exchanges in load(path):
        for ex in exchanges:
            sock.sendall(request_bytes(ex["req"]))
            hdr, payload = read_reply(sock)
            problems = compare(ex["rsp"], hdr, payload)   # [] when it matches
"""

from __future__ import annotations

import argparse
import base64
import json
import socket
import struct
import sys
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

TRANSCRIPT = Path(__file__).resolve().parent / "data" / "wire-transcript.jsonl"
HDR = 48
NODE = 80  # sizeof(struct sd_node) in the recording's build
OP_READ_OBJ, OP_NEW_VDI, OP_GET_NODE_LIST, OP_STAT_CLUSTER, OP_CLUSTER_INFO = 2, 17, 130, 135, 190
_RES0 = (
    "SUCCESS UNKNOWN NO_OBJ EIO VDI_EXIST INVALID_PARMS SYSTEM_ERROR VDI_LOCKED NO_VDI "
    "NO_BASE_VDI VDI_READ VDI_WRITE BASE_VDI_READ BASE_VDI_WRITE NO_TAG STARTUP "
    "VDI_NOT_LOCKED SHUTDOWN NO_MEM FULL_VDI VER_MISMATCH NO_SPACE WAIT_FOR_FORMAT "
    "WAIT_FOR_JOIN JOIN_FAILED HALT READONLY"
)
RES = dict(enumerate(_RES0.split()))
_RES_HIGH = "INODE_INVALIDATED NETWORK_ERROR BUFFER_SMALL AGAIN CLUSTER_ERROR COLLECTING_CINFO"
RES.update(zip((0x1D, 0x86, 0x88, 0x8F, 0x91, 0x95), _RES_HIGH.split(), strict=True))


def _fields(spec: str) -> tuple[tuple[str, int, str], ...]:
    """'name@offset:fmt ...' -> ((name, offset, fmt), ...)."""
    items = [(n, r.partition(":")) for n, _, r in (i.partition("@") for i in spec.split())]
    return tuple((name, int(off), fmt) for name, (off, _, fmt) in items)


# Reply header fields: common ones, then the op-specific union at bytes 20-47 by `view`.
HDR_COMMON = _fields(
    "proto_ver@0:B opcode@1:B flags@2:H epoch@4:I id@8:I data_length@12:I result@16:I"
)
HDR_VIEWS = {
    "vdi": _fields("rsvd@20:I vdi_id@24:I attr_id@28:I copies@32:B block_size_shift@33:B"),
    "node": _fields("nr_nodes@20:I store_size@32:Q store_free@40:Q"),
    "obj": _fields("copies@20:B"),
}
Mask = tuple[str, int, int, str]
Step = tuple[dict[str, Any], list[dict[str, Any]]]


def payload_bytes(p: dict[str, Any] | None) -> bytes:
    """The bytes of a recorded ``payload`` object (None: no payload)."""
    return zlib.decompress(base64.b64decode(p["zlib_b64"])) if p else b""


def request_bytes(req: dict[str, Any]) -> bytes:
    """What the client sent: the 48 header bytes, then the payload."""
    return bytes.fromhex(req["hdr_hex"]) + payload_bytes(req["payload"])


def load(path: str | Path = TRANSCRIPT) -> list[Step]:
    """[(step, [exchange, ...]), ...] in file order; each rsp gets req_hdr_hex (see compare)."""
    steps: list[Step] = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            rec = json.loads(line)
            if rec.get("type") == "step":
                steps.append((rec, []))
            elif rec.get("type") == "exchange":
                if not steps or steps[-1][0]["step"] != rec["step"]:
                    raise ValueError(f"{path}: exchange of step {rec['step']} outside its step")
                rec["rsp"]["req_hdr_hex"] = rec["req"]["hdr_hex"]
                steps[-1][1].append(rec)
    return steps


def _nodes(base: int, count: int, mask_ports: bool) -> list[Mask]:
    out: list[Mask] = []
    for k in range(count):
        o = base + k * NODE
        out += [
            ("payload", o, o + 24, f"node[{k}] pointers"),
            ("payload", o + 72, o + 80, f"node[{k}].space"),
        ]
        if mask_ports:
            out += [
                ("payload", o + 40, o + 42, f"node[{k}].port"),
                ("payload", o + 58, o + 60, f"node[{k}].io_port"),
            ]
    return out


def _stat_cluster_masks(payload: bytes, mask_ports: bool) -> list[Mask]:
    """epoch_log entries: ctime, time, ..., then nr_nodes sd_nodes."""
    out: list[Mask] = []
    off, n = 0, len(payload)
    while off + 48 <= n:
        nr = struct.unpack_from("<I", payload, off + 20)[0]
        out += [
            ("payload", off, off + 8, "epoch_log.ctime"),
            ("payload", off + 8, off + 16, "epoch_log.time"),
        ]
        out += _nodes(off + 48, min(nr, (n - off - 48) // NODE), mask_ports)
        off += 48 + nr * NODE
    return out


def _read_obj_masks(req_hdr: bytes, n: int) -> list[Mask]:
    oid, start = struct.unpack_from("<Q16xI", req_hdr, 16)  # obj.oid @16, obj.offset @40
    inode = ((512, 520, "inode.create_time"), (520, 528, "inode.snap_ctime"))
    attr = ((512, 520, "attr.ctime (the working VDI's create_time)"),)
    out: list[Mask] = []
    for lo, hi, why in inode if oid >> 63 else attr if oid >> 61 & 1 else ():
        lo, hi = max(lo - start, 0), min(hi - start, n)
        if lo < hi:
            out.append(("payload", lo, hi, why))
    return out


def masks(
    rsp: dict[str, Any], payload: bytes, req_hdr: bytes | None = None, mask_ports: bool = False
) -> list[Mask]:
    """What varies from run to run in the recorded reply rsp (payload: its bytes; req_hdr: the
    request's 48 bytes, for READ_OBJ): [("hdr"|"payload", lo, hi, why), ...]."""
    op, n = rsp["opcode"], len(payload)
    if op == OP_NEW_VDI and rsp["result"] != 0:
        return [("hdr", 24, 28, "vdi_id of a failed NEW_VDI (uninitialised)")]
    if op == OP_GET_NODE_LIST:
        return _nodes(0, n // NODE, mask_ports)
    if op == OP_STAT_CLUSTER:
        return _stat_cluster_masks(payload, mask_ports)
    if op == OP_CLUSTER_INFO and n >= 48:  # nr_nodes u16 @2, ctime @8, nodes @48
        nr = struct.unpack_from("<H", payload, 2)[0]
        return [("payload", 8, 16, "cluster_info.ctime")] + _nodes(
            48, min(nr, (n - 48) // NODE), mask_ports
        )
    if op == OP_READ_OBJ and req_hdr and len(req_hdr) >= HDR:
        return _read_obj_masks(req_hdr, n)
    return []


def _masked(buf: bytes, ranges: list[tuple[int, int]]) -> bytearray:
    b = bytearray(buf)
    for lo, hi in ranges:
        b[lo:hi] = bytes(len(b[lo:hi]))
    return b


def _first_diff(a: bytes | bytearray, b: bytes | bytearray, chunk: int = 1 << 16) -> int:
    """First offset where equal-length a and b differ, or -1."""
    for i in range(0, len(a), chunk):
        if a[i : i + chunk] != b[i : i + chunk]:
            return next(j for j in range(i, i + chunk) if a[j] != b[j])
    return -1


def _fmt(name: str, v: int) -> str:
    if name == "result":
        return f"{RES.get(v, '?')} (0x{v:02x})"
    return f"0x{v:x}" if name in ("opcode", "flags", "vdi_id", "attr_id") else str(v)


def _compare_header(exp: bytearray, got: bytearray, view: str | None) -> list[str]:
    out, covered = [], set()
    for name, off, fmt in HDR_COMMON + HDR_VIEWS.get(view or "", ()):
        covered.update(range(off, off + struct.calcsize("<" + fmt)))
        e = struct.unpack_from("<" + fmt, exp, off)[0]
        g = struct.unpack_from("<" + fmt, got, off)[0]
        if e != g:
            out.append(f"{name}: expected {_fmt(name, e)}, got {_fmt(name, g)}")
    rest = [i for i in range(20, HDR) if i not in covered and exp[i] != got[i]]
    if rest:
        lo, hi = rest[0], rest[-1] + 1
        out.append(
            f"header bytes {lo}-{hi - 1}: expected {exp[lo:hi].hex()}, got {got[lo:hi].hex()}"
        )
    return out


def compare(
    recorded_rsp: dict[str, Any], got_hdr: bytes, got_payload: bytes, mask_ports: bool = False
) -> list[str]:
    """Differences between a recorded reply and the one received, as lines; [] if they match."""
    exp_hdr = bytes.fromhex(recorded_rsp["hdr_hex"])
    exp_pay = payload_bytes(recorded_rsp.get("payload"))
    got_hdr, got_payload = bytes(got_hdr), bytes(got_payload)
    if len(got_hdr) != HDR:
        return [f"header: {len(got_hdr)} bytes, not {HDR}"]
    req_hdr = recorded_rsp.get("req_hdr_hex")
    mk = masks(recorded_rsp, exp_pay, bytes.fromhex(req_hdr) if req_hdr else None, mask_ports)
    hm = [(lo, hi) for where, lo, hi, _ in mk if where == "hdr"]
    pm = [(lo, hi) for where, lo, hi, _ in mk if where == "payload"]
    out = _compare_header(_masked(exp_hdr, hm), _masked(got_hdr, hm), recorded_rsp.get("view"))
    if len(got_payload) != len(exp_pay):
        out.append(f"payload length: expected {len(exp_pay)}, got {len(got_payload)}")
    n = min(len(exp_pay), len(got_payload))
    ep, gp = _masked(exp_pay[:n], pm), _masked(got_payload[:n], pm)
    first = _first_diff(ep, gp)
    if first >= 0:
        last = n - 1 - _first_diff(ep[::-1], gp[::-1])
        w = slice(first, first + 16)
        out.append(
            f"payload: differs at offset {first} (0x{first:x}) to {last} (0x{last:x}) of "
            f"{len(exp_pay)}: expected {ep[w].hex()}, got {gp[w].hex()}"
        )
    return out


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if not k:
            raise ConnectionError(f"connection closed after {got} of {n} bytes")
        got += k
    return bytes(buf)


def read_reply(sock: socket.socket, limit: int = 1 << 30) -> tuple[bytes, bytes]:
    """One reply: (48 header bytes, exactly data_length payload bytes)."""
    hdr = _recv_exact(sock, HDR)
    n = struct.unpack_from("<I", hdr, 12)[0]
    if n > limit:
        raise ConnectionError(f"reply data_length {n} over {limit}")
    return hdr, _recv_exact(sock, n)


def parse_steps(spec: str) -> set[int]:
    """'1-10,15' -> {1, ..., 10, 15}."""
    sel: set[int] = set()
    for part in spec.split(","):
        lo, _, hi = part.strip().partition("-")
        sel.update(range(int(lo), int(hi or lo) + 1))
    return sel


class _Conns:
    """A step's connections, opened in recorded order (the empty probe one opened and closed)."""

    def __init__(
        self,
        step: dict[str, Any],
        used: list[int],
        addr: tuple[str, int],
        timeout: float,
        say: Callable[[str], None],
    ) -> None:
        self.pending = [c["conn"] for c in step.get("connections") or []]
        self.pending += sorted(set(used) - set(self.pending))
        self.used, self.addr, self.timeout = set(used), addr, timeout
        self.socks: dict[int, socket.socket | None] = {}
        self.say, self.tag = say, f"step {step['step']} ({step['label']})"

    def open_until(self, conn: int | None) -> None:
        while self.pending and (conn is None or conn not in self.socks):
            k = self.pending.pop(0)
            try:
                self.socks[k] = socket.create_connection(self.addr, self.timeout)
                if k not in self.used:  # the empty probe connection: opened and closed
                    self.close(k)
            except OSError as e:  # a used one is retried (and reported) by its first exchange
                self.socks[k] = None
                if k not in self.used:
                    self.say(f"{self.tag}: empty connection {k}: {e}")

    def get(self, conn: int) -> socket.socket:
        s = self.socks.get(conn)
        if s is None:
            s = self.socks[conn] = socket.create_connection(self.addr, self.timeout)
        return s

    def close(self, conn: int) -> None:
        s = self.socks.get(conn)
        if s is not None:
            s.close()
        self.socks[conn] = None

    def close_all(self) -> None:
        for k in list(self.socks):
            self.close(k)


def _exchange(conns: _Conns, ex: dict[str, Any], mask_ports: bool) -> tuple[list[str], Any]:
    try:
        sock = conns.get(ex["conn"])
        sock.sendall(request_bytes(ex["req"]))
        hdr, payload = read_reply(sock)
        return compare(ex["rsp"], hdr, payload, mask_ports), (hdr, payload)
    except OSError as e:
        conns.close(ex["conn"])
        return [f"no reply: {e}"], None


def replay_step(
    step: dict[str, Any],
    exchanges: list[dict[str, Any]],
    host: str,
    port: int,
    timeout: float = 60.0,
    mask_ports: bool = False,
    say: Callable[[str], None] = print,
    verbose: bool = False,
) -> tuple[int, int]:
    """Replay one step's exchanges; returns (matched, differ)."""
    tag = f"step {step['step']} ({step['label']})"
    conns = _Conns(step, [ex["conn"] for ex in exchanges], (host, port), timeout, say)
    matched = differ = 0
    try:
        for ex in exchanges:
            conns.open_until(ex["conn"])
            op = ex["req"]["op"].removeprefix("SD_OP_")
            problems, got = _exchange(conns, ex, mask_ports)
            for p in problems:
                say(f"{tag} #{ex['n']} {op}: {p}")
            matched, differ = matched + (not problems), differ + bool(problems)
            if verbose and not problems:
                res = RES.get(struct.unpack_from("<I", got[0], 16)[0], "?")
                say(f"  {tag} #{ex['n']} conn {ex['conn']} {op}: ok, {res}, {len(got[1])} bytes")
        conns.open_until(None)
    finally:
        conns.close_all()
    return matched, differ


def replay(
    steps: list[Step],
    host: str,
    port: int,
    timeout: float = 60.0,
    mask_ports: bool = False,
    say: Callable[[str], None] = print,
    verbose: bool = False,
) -> tuple[int, int, int, int]:
    """Replay steps from load(); returns (exchanges, matched, differ, skipped)."""
    total = matched = differ = skip = 0
    for step, exchanges in steps:
        m, k = replay_step(step, exchanges, host, port, timeout, mask_ports, say, verbose)
        addrs = list(dict.fromkeys(step.get("bypassed_proxy") or []))  # not in the file
        if n := len(addrs):
            say(
                f"note: step {step['step']} ({step['label']}): skipped {n} unrecorded "
                f"request(s), one per node ({', '.join(addrs)}): dog sent them straight to the "
                "nodes, bypassing the proxy (node info's STAT_SHEEP)"
            )
        total += len(exchanges) + n
        matched, differ, skip = matched + m, differ + k, skip + n
    return total, matched, differ, skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--transcript", default=str(TRANSCRIPT))
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--steps", help="steps to replay, e.g. 1-10,15 (default: all)")
    ap.add_argument("--verbose", action="store_true", help="one line per exchange")
    ap.add_argument(
        "--mask-ports",
        action="store_true",
        help="also ignore node ports in node lists (nodes not on 17200-17202)",
    )
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds per reply (60)")
    a = ap.parse_args(argv)
    steps = load(a.transcript)
    if a.steps:
        try:
            sel = parse_steps(a.steps)
        except ValueError:
            ap.error(f"bad --steps {a.steps!r}")
        steps = [(s, ex) for s, ex in steps if s["step"] in sel]
    n, m, k, s = replay(steps, a.host, a.port, a.timeout, a.mask_ports, print, a.verbose)
    print(f"replay: {n} exchanges, {m} matched, {k} differ, {s} skipped")
    return 0 if k == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
