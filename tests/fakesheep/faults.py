"""Fault switches the server consults per request and per reply (protocol.md §11.13).
Every switch is bounded: counted injections, per-node flags the test turns off again."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from .proto import Op, Res

CLOSE_WHERE = ("header", "payload")


@dataclass
class Injection:
    """Answer the next ``remaining`` requests of ``op`` (None: any op) on ``node`` (None:
    any node) with ``result``, without running them."""

    op: int | None
    result: int
    remaining: int
    node: int | None = None


@dataclass
class CloseSpec:
    """Close the connection in the middle of the next reply's header or payload."""

    where: str
    op: int | None = None


@dataclass
class Faults:
    hung: set[int] = field(default_factory=set)
    closes: dict[int, list[CloseSpec]] = field(default_factory=dict)
    unknown_ids: dict[int, list[int]] = field(default_factory=dict)  # node -> payload lengths
    delays: dict[tuple[int | None, int | None], float] = field(default_factory=dict)
    injections: list[Injection] = field(default_factory=list)
    shuffle: bool = False
    shuffle_window: float = 0.01
    rng: random.Random = field(default_factory=lambda: random.Random(0))

    def delay_for(self, node: int, op: int) -> float:
        """The most specific delay: (node, op), then (None, op), (node, None), (None, None)."""
        for key in ((node, op), (None, op), (node, None), (None, None)):
            if key in self.delays:
                return self.delays[key]
        return 0.0

    def set_delay(self, op: int | None, seconds: float, node: int | None = None) -> None:
        if seconds > 0:
            self.delays[(node, op)] = seconds
        else:
            self.delays.pop((node, op), None)

    def take_injection(self, node: int, op: int) -> int | None:
        for inj in self.injections:
            if inj.remaining > 0 and inj.op in (None, op) and inj.node in (None, node):
                inj.remaining -= 1
                result = inj.result
                self.injections = [i for i in self.injections if i.remaining > 0]
                return result
        return None

    def add_injection(self, op: int | None, result: int, count: int, node: int | None) -> None:
        if count > 0:
            self.injections.append(Injection(op, result, count, node))

    def take_close(self, node: int, op: int, payload_len: int) -> CloseSpec | None:
        """The pending close for this reply, if it applies (a payload close needs a reply
        with at least two payload bytes)."""
        queue = self.closes.get(node) or []
        for k, spec in enumerate(queue):
            if spec.op not in (None, op):
                continue
            if spec.where == "payload" and payload_len < 2:
                continue
            del queue[k]
            return spec
        return None

    def take_unknown_id(self, node: int) -> int | None:
        queue = self.unknown_ids.get(node) or []
        return queue.pop(0) if queue else None

    def clear(self) -> None:
        self.hung.clear()
        self.closes.clear()
        self.unknown_ids.clear()
        self.delays.clear()
        self.injections.clear()
        self.shuffle = False


def parse_op(op: int | str | None) -> int | None:
    """An opcode from a number or a name ("WRITE_OBJ", "SD_OP_WRITE_OBJ")."""
    if op is None or isinstance(op, int):
        return op
    return int(Op[op.upper().removeprefix("SD_OP_")])


def parse_res(res: int | str) -> int:
    """A result code from a number or a name ("EIO", "SD_RES_NO_SPACE")."""
    if isinstance(res, int):
        return res
    return int(Res[res.upper().removeprefix("SD_RES_")])
