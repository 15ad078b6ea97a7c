"""A TCP proxy in front of sheep that can be told to hold one sheep's replies: "a sheep
that stops answering" (it still takes requests, and may carry them out, but says nothing),
which a client must survive by giving the request up at its deadline and going on with
another sheep. Held replies are delivered when released, late.

Runs as a process of its own (so its copying takes no interpreter time from the soak):

    python proxy.py HOST:PORT [HOST:PORT ...]

prints ``ports P1 P2 ...`` (one listener on 127.0.0.1 per target), then takes commands on
stdin, one a line, each answered with one line: ``hold K``, ``release K``, ``stats``
(``stats BYTES:CONNS ...``: bytes relayed per listener since the last stats, connections
open now), ``quit``.
"""

from __future__ import annotations

import contextlib
import select
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass, field

LIMIT = 4 << 20  # bytes buffered per direction before reading stops
CHUNK = 1 << 20


@dataclass(eq=False)
class Pipe:
    k: int  # which listener
    client: socket.socket
    up: socket.socket
    to_up: bytearray = field(default_factory=bytearray)
    to_client: bytearray = field(default_factory=bytearray)
    up_eof: bool = False


class Proxy:
    def __init__(self, targets: list[tuple[str, int]]) -> None:
        self.targets = targets
        self.listeners = []
        for _ in targets:
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", 0))
            s.listen(64)
            self.listeners.append(s)
        self.held = [False] * len(targets)
        self.relayed = [0] * len(targets)
        self.pipes: set[Pipe] = set()

    @property
    def ports(self) -> list[int]:
        return [s.getsockname()[1] for s in self.listeners]

    def command(self, line: str) -> str | None:
        """Do one control command; its answer (None: quit)."""
        words = line.split()
        if not words or words[0] == "quit":
            return None
        if words[0] in ("hold", "release") and len(words) == 2:
            self.held[int(words[1])] = words[0] == "hold"
            return "ok"
        if words[0] == "stats":
            conns = [sum(1 for p in self.pipes if p.k == k) for k in range(len(self.targets))]
            out = " ".join(f"{b}:{c}" for b, c in zip(self.relayed, conns, strict=True))
            self.relayed = [0] * len(self.targets)
            return f"stats {out}"
        return f"error: {line.strip()!r}"

    def _accept(self, k: int) -> None:
        client, _ = self.listeners[k].accept()
        try:
            up = socket.create_connection(self.targets[k], timeout=2)
        except OSError:
            client.close()  # the sheep is down: so is its proxy
            return
        for s in (client, up):
            s.setblocking(False)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.pipes.add(Pipe(k, client, up))

    def _close(self, p: Pipe) -> None:
        p.client.close()
        p.up.close()
        self.pipes.discard(p)

    def _events(self, p: Pipe) -> tuple[int, int]:
        held = self.held[p.k]
        c = select.POLLIN if len(p.to_up) < LIMIT else 0
        c |= select.POLLOUT if p.to_client and not held else 0
        u = select.POLLIN if not p.up_eof and not held and len(p.to_client) < LIMIT else 0
        u |= select.POLLOUT if p.to_up else 0
        return c, u

    def _pump(self, p: Pipe, fd: int, ev: int) -> None:
        """Move what can move for one ready socket of ``p``; close ``p`` when it is over."""
        try:
            if fd == p.client.fileno():
                if ev & select.POLLOUT:
                    del p.to_client[: p.client.send(p.to_client)]
                if ev & (select.POLLIN | select.POLLHUP | select.POLLERR):
                    data = p.client.recv(CHUNK)
                    if not data:
                        return self._close(p)  # the client is done: so is the sheep's side
                    p.to_up += data
            else:
                if ev & select.POLLOUT:
                    del p.to_up[: p.up.send(p.to_up)]
                if ev & (select.POLLIN | select.POLLHUP | select.POLLERR):
                    data = p.up.recv(CHUNK)
                    self.relayed[p.k] += len(data)
                    p.to_client += data
                    p.up_eof = not data
        except (BlockingIOError, InterruptedError):
            return None
        except OSError:
            return self._close(p)
        if p.up_eof and not p.to_client:
            self._close(p)
        return None

    def serve(self, control) -> None:
        """Relay until ``quit`` (or the end of ``control``)."""
        while True:
            poll = select.poll()
            poll.register(control, select.POLLIN)
            for s in self.listeners:
                poll.register(s, select.POLLIN)
            owner: dict[int, Pipe] = {}
            for p in list(self.pipes):
                for s, ev in zip((p.client, p.up), self._events(p), strict=True):
                    poll.register(s, ev)
                    owner[s.fileno()] = p
            for fd, ev in poll.poll(500):
                if fd == control.fileno():
                    answer = self.command(control.readline())
                    if answer is None:
                        return
                    print(answer, flush=True)
                elif fd in owner:
                    if owner[fd] in self.pipes:
                        self._pump(owner[fd], fd, ev)
                else:
                    k = next(i for i, s in enumerate(self.listeners) if s.fileno() == fd)
                    self._accept(k)


class ProxyProcess:
    """The proxy as a child process, driven from the soak."""

    def __init__(self, targets: list[tuple[str, int]]) -> None:
        argv = [sys.executable, __file__, *(f"{h}:{p}" for h, p in targets)]
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        words = self.proc.stdout.readline().split()
        if not words or words[0] != "ports":
            self.close()
            raise RuntimeError("the proxy did not start")
        self.ports = [int(w) for w in words[1:]]
        self._lock = threading.Lock()

    def ask(self, line: str) -> str:
        with self._lock:
            self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()
            return self.proc.stdout.readline().strip()

    def hold(self, k: int) -> None:
        self.ask(f"hold {k}")

    def release(self, k: int) -> None:
        self.ask(f"release {k}")

    def stats(self) -> list[tuple[int, int]]:
        """(bytes relayed since the last call, connections open) per listener."""
        words = self.ask("stats").split()[1:]
        return [(int(b), int(c)) for b, c in (w.split(":") for w in words)]

    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.proc.stdin.write("quit\n")
            self.proc.stdin.close()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def main(argv: list[str]) -> None:
    targets = []
    for a in argv:
        host, port = a.rsplit(":", 1)
        targets.append((host, int(port)))
    proxy = Proxy(targets)
    print("ports " + " ".join(map(str, proxy.ports)), flush=True)
    proxy.serve(sys.stdin)


if __name__ == "__main__":
    main(sys.argv[1:])
