"""The control channel for a fake running in another process: JSON lines over a Unix
socket. Each request is ``{"method": NAME, "args": [...], "kwargs": {...}}``, each answer
``{"ok": true, "result": ...}`` or ``{"ok": false, "error": "..."}``; bytes travel as
``{"b64": ...}``. ``ControlClient`` is the synchronous client for tests."""

from __future__ import annotations

import base64
import inspect
import json
import logging
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

if TYPE_CHECKING:
    from .control import Control

log = logging.getLogger(__name__)
MAX_LINE = 1 << 26


class RemoteError(RuntimeError):
    """The fake refused or failed a control call."""


def _encode(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"b64": base64.b64encode(value).decode()}
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, dict) and set(value) == {"b64"}:
        return base64.b64decode(value["b64"])
    return value


async def _call(control: Control, line: bytes) -> dict[str, Any]:
    from .control import REMOTE_METHODS

    try:
        msg = json.loads(line)
        method = msg["method"]
        if method not in REMOTE_METHODS:
            raise AttributeError(f"no control method {method!r}")
        args = [_decode(a) for a in msg.get("args", [])]
        kwargs = {k: _decode(v) for k, v in msg.get("kwargs", {}).items()}
        result = getattr(control, method)(*args, **kwargs)
        if inspect.isawaitable(result):
            result = await result
        return {"ok": True, "result": _encode(result)}
    except Exception as exc:  # reported to the caller, the fake keeps running
        log.info("control call failed: %r", exc)
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}


async def _serve_one(control: Control, stream: trio.SocketStream) -> None:
    buf = b""
    async with stream:
        while True:
            try:
                chunk = await stream.receive_some(1 << 16)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return
            if not chunk:
                return
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                answer = await _call(control, line)
                await stream.send_all(json.dumps(answer).encode() + b"\n")
            if len(buf) > MAX_LINE:
                return


async def serve_control(
    control: Control, path: Path, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Serve ``control`` on the Unix socket ``path`` until cancelled."""
    path.unlink(missing_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.listen(16)
    listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
    try:
        async with trio.open_nursery() as nursery:
            task_status.started()
            while True:
                stream = await listener.accept()
                nursery.start_soon(_serve_one, control, stream)
    finally:
        listener.socket.close()
        path.unlink(missing_ok=True)


class ControlClient:
    """``ControlClient(path).inject("EIO", op="WRITE_OBJ", count=2)``: every method of
    ``Control`` by name, one short connection per call."""

    def __init__(self, path: str | Path, timeout: float = 60.0) -> None:
        self.path = str(path)
        self.timeout = timeout

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        msg = {"method": method, "args": [_encode(a) for a in args]}
        msg["kwargs"] = {k: _encode(v) for k, v in kwargs.items()}
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(self.timeout)
            s.connect(self.path)
            s.sendall(json.dumps(msg).encode() + b"\n")
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = s.recv(1 << 16)
                if not chunk:
                    raise RemoteError(f"{method}: control connection closed")
                buf += chunk
        answer = json.loads(buf)
        if not answer["ok"]:
            raise RemoteError(f"{method}: {answer['error']}")
        return _decode(answer["result"])

    def __getattr__(self, name: str) -> Any:
        from .control import REMOTE_METHODS

        if name not in REMOTE_METHODS:
            raise AttributeError(name)
        return lambda *args, **kwargs: self.call(name, *args, **kwargs)
