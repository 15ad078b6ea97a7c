"""systemd's notification protocol (sd_notify(3)): a unit of ``Type=notify`` learns from
us when the mount is ready and what a long stop is doing.

Each message is one datagram of ``KEY=VALUE`` lines sent to the AF_UNIX socket named in
``$NOTIFY_SOCKET``: a path, or ``@name`` for the abstract namespace. Without that variable
(not started by systemd) nothing is sent. The variable is taken out of the environment at
start, as sd_notify's ``unset_environment`` does, so the dog processes we start do not
inherit it. Sending never blocks the event loop: a message that does not fit the
receiver's queue is dropped, as systemd itself would rather lose a STATUS= than wait.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)

ENV = "NOTIFY_SOCKET"


def socket_address(name: str) -> str | bytes | None:
    """The address ``$NOTIFY_SOCKET`` names: a path, or an abstract one (``@name``, as
    bytes with a leading NUL); None for what an AF_UNIX socket cannot reach."""
    if name.startswith("@") and len(name) > 1:
        return b"\0" + name[1:].encode()
    if name.startswith("/"):
        return name
    return None


class Notifier:
    """Sends sd_notify messages to one socket, or nowhere (``address`` None)."""

    def __init__(self, address: str | None) -> None:
        self.address = socket_address(address) if address else None
        if address and self.address is None:
            log.warning("%s=%r is no AF_UNIX socket: not notifying the service manager",
                        ENV, address)  # fmt: skip
        self._sock: socket.socket | None = None
        self._failed = False

    @classmethod
    def from_environment(cls) -> Notifier:
        """The notifier ``$NOTIFY_SOCKET`` asks for; the variable is removed."""
        return cls(os.environ.pop(ENV, None))

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, **fields: object) -> bool:
        """Send one message of ``KEY=VALUE`` lines (``send(READY=1, STATUS="...")``);
        whether it went. Newlines in a value would start a new field: they become spaces."""
        if self.address is None:
            return False
        text = "".join(f"{k}={str(v).replace(chr(10), ' ')}\n" for k, v in fields.items())
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)
            self._sock.sendto(text.encode(), self.address)
        except OSError as e:
            if not self._failed:  # one line, not one per message
                log.warning("cannot notify the service manager (%s): %s", ENV, e)
                self._failed = True
            return False
        return True

    def ready(self, status: str) -> bool:
        return self.send(READY=1, STATUS=status, MAINPID=os.getpid())

    def status(self, status: str) -> bool:
        return self.send(STATUS=status)

    def stopping(self, status: str) -> bool:
        return self.send(STOPPING=1, STATUS=status)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
