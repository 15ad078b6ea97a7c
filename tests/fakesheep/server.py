"""The trio TCP server: N listeners on 127.0.0.1, one per fake node, all sharing one
``ClusterState``. Framing as ``sheep/request.c``: per connection one request is read at a
time (header, then the payload only with WRITE), each runs as its own task, and replies go
out one at a time in completion order (or shuffled), with ``id`` and ``opcode`` echoed,
``proto_ver`` 0, the current epoch and exactly ``data_length`` payload bytes."""

from __future__ import annotations

import logging
import math
import socket
import struct
from collections import Counter, deque
from dataclasses import dataclass, field

import trio

from . import ops
from .faults import Faults
from .ops_vdi import Ctx
from .proto import HDR_SIZE, Op, Reply, Request, Res, op_name, res_name
from .rules import EcWrites
from .state import ClusterState, NodeInfo, WouldCrash

log = logging.getLogger(__name__)
REQUEST_LOG = 10_000


@dataclass(eq=False)
class Conn:
    stream: trio.SocketStream
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    inflight: Counter[int] = field(default_factory=Counter)  # ids read, not yet answered

    def unknown_id(self, near: int) -> int:
        """An id no request in flight on this connection uses."""
        cand = ~near & 0xFFFFFFFF
        while self.inflight[cand]:
            cand = (cand - 1) & 0xFFFFFFFF
        return cand

    def abort(self, reset: bool = False) -> None:
        """Close now (with an RST when ``reset``); the connection's tasks then unwind."""
        sock = self.stream.socket
        if reset and sock.fileno() >= 0:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
        self.scope.cancel()


@dataclass(eq=False)
class Node:
    info: NodeInfo
    listener: trio.SocketListener | None = None
    scope: trio.CancelScope | None = None
    nursery: trio.Nursery | None = None
    conns: set[Conn] = field(default_factory=set)


async def _recv_exactly(stream: trio.SocketStream, n: int) -> bytes | None:
    """n bytes, or None if the peer closed first."""
    buf = bytearray()
    while len(buf) < n:
        chunk = await stream.receive_some(min(n - len(buf), 1 << 20))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def _bind(host: str, port: int) -> trio.SocketListener:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return trio.SocketListener(trio.socket.from_stdlib_socket(sock))


class FakeCluster:
    """The running fake: nodes, their connections, the state and the fault switches."""

    def __init__(self, state: ClusterState, host: str = "127.0.0.1") -> None:
        self.state = state
        self.host = host
        self.faults = Faults()
        self.nodes = [Node(info) for info in state.nodes]
        self.op_counts: Counter[str] = Counter()
        self.requests: deque[dict[str, object]] = deque(maxlen=REQUEST_LOG)
        self._creating: Counter[int] = Counter()  # oids with a CREATE in flight
        self._ec_writes = EcWrites()  # rule 13
        self._nursery: trio.Nursery | None = None

    @property
    def ports(self) -> list[int]:
        return [n.info.port for n in self.nodes]

    @property
    def events(self) -> list[dict[str, object]]:
        return [e.as_dict() for e in self.state.events]

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for node in self.nodes:
                if node.info.up:
                    self._start_node(node)
            task_status.started()
            await trio.sleep_forever()

    def _start_node(self, node: Node) -> None:
        node.listener = _bind(self.host, node.info.port)
        node.info.port = node.listener.socket.getsockname()[1]
        node.scope = trio.CancelScope()
        assert self._nursery is not None
        self._nursery.start_soon(self._run_node, node, node.scope, node.listener)

    async def _run_node(
        self, node: Node, scope: trio.CancelScope, listener: trio.SocketListener
    ) -> None:
        with scope:
            try:
                async with trio.open_nursery() as nursery:
                    node.nursery = nursery
                    await self._accept_loop(node, listener, nursery)
            finally:
                listener.socket.close()

    async def _accept_loop(
        self, node: Node, listener: trio.SocketListener, nursery: trio.Nursery
    ) -> None:
        while True:
            try:
                stream = await listener.accept()
            except (trio.ClosedResourceError, OSError):
                return
            nursery.start_soon(self._serve_conn, node, stream)

    def stop_node(self, index: int, reset: bool = True) -> None:
        """Close the node's listener and every connection of it, and cancel its requests."""
        node = self.nodes[index]
        if node.listener is not None:
            node.listener.socket.close()
            node.listener = None
        for conn in list(node.conns):
            conn.abort(reset=reset)
        if node.scope is not None:
            node.scope.cancel()
        node.scope = node.nursery = None

    def node_down(self, index: int) -> None:
        info = self.state.nodes[index]
        self.stop_node(index)
        if info.up:
            info.up = False
            self.state.vdis.drop_participant(info.node_id())
            self.state.bump_epoch()

    def node_up(self, index: int) -> None:
        node = self.nodes[index]
        if node.info.up and node.listener is not None:
            return
        self._start_node(node)
        if not node.info.up:
            node.info.up = True
            self.state.bump_epoch()

    def reset(self, index: int) -> None:
        for conn in list(self.nodes[index].conns):
            conn.abort(reset=True)

    # -- one connection ---------------------------------------------------------------------

    async def _serve_conn(self, node: Node, stream: trio.SocketStream) -> None:
        conn = Conn(stream)
        node.conns.add(conn)
        send, recv = trio.open_memory_channel[tuple[Request, Reply]](math.inf)
        try:
            with conn.scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._writer, node, conn, recv)
                    await self._reader(node, conn, send)
                    nursery.cancel_scope.cancel()  # peer gone: replies still due are dropped
        finally:
            node.conns.discard(conn)
            send.close()
            stream.socket.close()

    async def _reader(self, node: Node, conn: Conn, send: trio.MemorySendChannel) -> None:
        try:
            while True:
                raw = await _recv_exactly(conn.stream, HDR_SIZE)
                if raw is None:
                    return
                req = Request.parse(raw)
                data = b""
                if req.has_payload:
                    got = await _recv_exactly(conn.stream, req.data_length)
                    if got is None:
                        return
                    data = got
                if node.info.index in self.faults.hung:
                    continue  # accepted, read, never answered
                assert node.nursery is not None
                conn.inflight[req.id] += 1
                node.nursery.start_soon(self._handle, node, send, req, data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            return

    async def _handle(
        self, node: Node, send: trio.MemorySendChannel, req: Request, data: bytes
    ) -> None:
        index = node.info.index
        self.op_counts[op_name(req.opcode)] += 1
        lost = req.opcode == Op.CREATE_AND_WRITE_OBJ and self._loses_create(index, req)
        creating = req.opcode == Op.CREATE_AND_WRITE_OBJ and not lost
        injected = self.faults.take_injection(index, req.opcode)
        if creating:
            self._creating[req.oid] += 1
        ec = self._ec_writes.begin(self.state, index, req)
        try:
            reply = await self._reply_for(node, req, data, injected, lost)
        finally:
            self._ec_writes.end(ec)
            if creating:
                self._creating[req.oid] -= 1
        if reply is None:
            return
        self._log_request(index, req, reply)
        try:
            send.send_nowait((req, reply))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            log.debug("node %d: reply to a closed connection dropped", index)

    def _loses_create(self, index: int, req: Request) -> bool:
        """Rule 12: a create while another of the same object is in flight returns SUCCESS
        without writing (the store's O_EXCL temp file exists): True for such a loser."""
        if not self._creating[req.oid]:
            return False
        self.state.record(
            "concurrent-create",
            index,
            "CREATE_AND_WRITE_OBJ",
            f"{req.oid:016x}: a create of it is in flight (rule 12)",
            False,
        )
        return True

    async def _reply_for(
        self, node: Node, req: Request, data: bytes, injected: int | None, lost: bool
    ) -> Reply | None:
        """The reply after the op's delay: injected, lost, or run; None if the node crashed."""
        index = node.info.index
        if req.opcode == Op.WRITE_OBJ and self._creating[req.oid]:
            self.state.record(
                "write-behind-create",
                index,
                "WRITE_OBJ",
                f"{req.oid:016x}: its create has not answered (rule 12)",
                False,
            )
        if lost:
            return Reply(Res.SUCCESS)
        delay = self.faults.delay_for(index, req.opcode)
        if delay:
            await trio.sleep(delay)
        if injected is not None:
            return Reply(injected)
        try:
            return await self._execute(node, req, data)
        except WouldCrash as crash:
            self._crash(node, req, crash)
            return None
        except Exception as exc:  # a bug of the fake: keep serving, fail the test
            log.exception("fake sheep error on %s", op_name(req.opcode))
            self.state.record("fake-error", index, op_name(req.opcode), repr(exc), False)
            return Reply(Res.SYSTEM_ERROR)

    async def execute(self, index: int, req: Request, data: bytes) -> Reply:
        """Run one request as if it had arrived at node ``index`` (no faults applied)."""
        node = self.nodes[index]
        try:
            return await self._execute(node, req, data)
        except WouldCrash as crash:
            self._crash(node, req, crash)
            raise

    async def _execute(self, node: Node, req: Request, data: bytes) -> Reply:
        gen = ops.run(Ctx(self.state, node.info), req, data)
        try:
            while True:
                await trio.sleep(gen.send(None))
        except StopIteration as stop:
            return stop.value

    def _crash(self, node: Node, req: Request, crash: WouldCrash) -> None:
        index = node.info.index
        log.warning("node %d would have crashed: %s", index, crash)
        self.state.record(crash.kind, index, op_name(req.opcode), crash.detail, crashed=True)
        self.node_down(index)

    def _log_request(self, index: int, req: Request, reply: Reply) -> None:
        obj = Op.CREATE_AND_WRITE_OBJ <= req.opcode <= Op.DISCARD_OBJ
        self.requests.append(
            {
                "node": index,
                "op": op_name(req.opcode),
                "id": req.id,
                "flags": req.flags,
                "oid": req.oid,
                "offset": req.offset,
                "data_length": req.data_length,
                "copies": req.obj_copies if obj else None,  # object ops only
                "copy_policy": req.obj_copy_policy if obj else None,
                "result": res_name(reply.result),
            }
        )

    async def _writer(self, node: Node, conn: Conn, recv: trio.MemoryReceiveChannel) -> None:
        try:
            async for first in recv:
                batch = [first]
                if self.faults.shuffle:
                    await trio.sleep(self.faults.shuffle_window)
                    while True:
                        try:
                            batch.append(recv.receive_nowait())
                        except trio.WouldBlock:
                            break
                    self.faults.rng.shuffle(batch)
                for req, reply in batch:
                    conn.inflight[req.id] -= 1
                    if not await self._send_reply(node, conn, req, reply):
                        return
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            conn.scope.cancel()

    async def _send_reply(self, node: Node, conn: Conn, req: Request, reply: Reply) -> bool:
        index, f = node.info.index, self.faults
        if index in f.hung:
            return True
        bogus = f.take_unknown_id(index)
        if bogus is not None:
            fake = Reply(Res.SUCCESS, data=bytes(bogus))
            bogus_id = conn.unknown_id(req.id)
            await conn.stream.send_all(
                fake.pack_header(req.opcode, self.epoch, bogus_id) + fake.data
            )
        hdr = reply.pack_header(req.opcode, self.epoch, req.id)
        spec = f.take_close(index, req.opcode, len(reply.data))
        if spec is not None:
            if spec.where == "header":
                cut = hdr[: HDR_SIZE // 2]
            else:
                cut = hdr + reply.data[: len(reply.data) // 2]
            await conn.stream.send_all(cut)
            conn.abort()
            return False
        await conn.stream.send_all(hdr)
        if reply.data:
            await conn.stream.send_all(reply.data)
        return True

    @property
    def epoch(self) -> int:
        return self.state.cinfo.epoch
