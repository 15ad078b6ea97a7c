"""Opening a TCP connection to a sheep: resolving, connecting, and the socket options
every connection needs (rule 23: a silently dead peer must show)."""

from __future__ import annotations

import socket

import trio

Address = tuple[str, int]

#: Idle seconds, probe interval, probes: a silently dead peer shows within about a minute.
KEEPALIVE = (30, 10, 3)


def describe(address: Address) -> str:
    """``host:port`` as users write it (IPv6 in brackets)."""
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def tune(sock: socket.socket) -> None:
    """TCP_NODELAY (requests are small and latency-bound) and keepalive (rule 23)."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in zip(
        ("TCP_KEEPIDLE", "TCP_KEEPINTVL", "TCP_KEEPCNT"), KEEPALIVE, strict=True
    ):
        if hasattr(socket, name):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)


async def connect(address: Address) -> socket.socket:
    """A connected non-blocking socket to the first of the address's resolutions that
    accepts; raises the last OSError."""
    host, port = address
    last: OSError | None = None
    for family, kind, proto, _, sockaddr in await trio.socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM
    ):
        tsock = trio.socket.socket(family, kind, proto)
        try:
            await tsock.connect(sockaddr)
        except OSError as e:
            tsock.close()
            last = e
            continue
        except BaseException:
            tsock.close()
            raise
        sock = socket.socket(family, kind, proto, fileno=tsock.detach())
        sock.setblocking(False)
        tune(sock)
        return sock
    raise last or OSError(f"{host} resolves to no address")
