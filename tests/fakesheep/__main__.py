"""Run a fake sheep cluster as a process of its own:

    python -m tests.fakesheep --nodes 3 --port-base P [--state FILE] [--control SOCK]

Nodes listen on 127.0.0.1:P .. P+N-1; the control API is served as JSON lines on the Unix
socket SOCK (default: fakesheep-P.sock in the temp directory); with --state the cluster is
loaded from FILE if it exists and saved there on SIGTERM/SIGINT (and on the control call
``save``). Logs go to stderr."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import tempfile
from pathlib import Path

import trio

from .harness import fake_cluster
from .proto import ClusterFlag
from .state import ClusterState

log = logging.getLogger("tests.fakesheep")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m tests.fakesheep", description=__doc__)
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--port-base", type=int, required=True)
    ap.add_argument("--state", type=Path, help="load the cluster from FILE, save it there on exit")
    ap.add_argument("--control", type=Path, help="Unix socket of the control API")
    ap.add_argument("--copies", type=int, default=2)
    ap.add_argument("--block-size-shift", type=int, default=22)
    ap.add_argument("--use-lock", action="store_true", help="format with -l (USE_LOCK)")
    ap.add_argument("--recycle-vid", action="store_true", help="format with -R (RECYCLE_VID)")
    ap.add_argument("--strict", action="store_true", help="format with -t (STRICT)")
    ap.add_argument("--unformatted", action="store_true", help="start waiting for a format")
    ap.add_argument("--log-level", default="INFO")
    return ap.parse_args(argv)


def build_state(a: argparse.Namespace) -> ClusterState:
    ports = [a.port_base + k for k in range(a.nodes)]
    if a.state and a.state.exists():
        st = ClusterState.load(a.state)
        for node, port in zip(st.nodes, ports, strict=False):
            node.port = port
        log.info("loaded %s: %d vids", a.state, len(st.vdis.inuse))
        return st
    flags = ClusterFlag.AUTO_VNODES
    flags |= ClusterFlag.USE_LOCK if a.use_lock else 0
    flags |= ClusterFlag.RECYCLE_VID if a.recycle_vid else 0
    flags |= ClusterFlag.STRICT if a.strict else 0
    return ClusterState.new(ports, a.copies, flags, a.block_size_shift, not a.unformatted)


async def amain(a: argparse.Namespace) -> None:
    st = build_state(a)
    control = a.control or Path(tempfile.gettempdir()) / f"fakesheep-{a.port_base}.sock"
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with fake_cluster(state=st, control_path=control) as fake:
            log.info("fake sheep: nodes on %s, control on %s", fake.ports, control)
            async for signum in signals:
                log.info("signal %d: stopping", signum)
                break
    if a.state:
        st.save(a.state)
        log.info("saved %s", a.state)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    logging.basicConfig(
        level=a.log_level.upper(), stream=sys.stderr, format="%(asctime)s %(name)s %(message)s"
    )
    trio.run(amain, a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
