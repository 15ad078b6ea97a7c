"""A sparse, growable byte image: an object's contents without allocating its zeros."""

from __future__ import annotations

from dataclasses import dataclass, field

PAGE = 1 << 16

#: What a read past an object's end returns in place of the stale server memory a real sheep
#: sends (protocol.md rule 8): recognisable, never mistaken for zeros or for written data.
POISON_UNIT = b"\xde\xad\xbe\xef"


def poison(n: int) -> bytes:
    return (POISON_UNIT * (n // 4 + 1))[:n]


@dataclass
class SparseImage:
    """``size`` bytes, zero except the pages written; writes past ``size`` grow it."""

    size: int
    pages: dict[int, bytearray] = field(default_factory=dict)

    def read(self, offset: int, length: int) -> bytes:
        """``length`` bytes at ``offset``; the part past ``size`` is poison."""
        inside = max(0, min(length, self.size - offset))
        out = bytearray()
        pos, end = offset, offset + inside
        while pos < end:
            page, at = divmod(pos, PAGE)
            n = min(PAGE - at, end - pos)
            buf = self.pages.get(page)
            out += buf[at : at + n] if buf is not None else bytes(n)
            pos += n
        if inside < length:
            out += poison(length - inside)
        return bytes(out)

    def write(self, offset: int, data: bytes) -> None:
        pos, view = offset, memoryview(data)
        while view:
            page, at = divmod(pos, PAGE)
            n = min(PAGE - at, len(view))
            chunk = view[:n]
            buf = self.pages.get(page)
            if buf is None:
                if not any(chunk):
                    pos, view = pos + n, view[n:]
                    continue
                buf = self.pages[page] = bytearray(PAGE)
            buf[at : at + n] = chunk
            pos, view = pos + n, view[n:]
        self.size = max(self.size, offset + len(data))

    def zero(self, offset: int, length: int) -> None:
        """Zero a range (pages wholly inside it are dropped)."""
        end = min(offset + length, self.size)
        pos = offset
        while pos < end:
            page, at = divmod(pos, PAGE)
            n = min(PAGE - at, end - pos)
            if n == PAGE:
                self.pages.pop(page, None)
            elif page in self.pages:
                self.pages[page][at : at + n] = bytes(n)
            pos += n

    def copy(self) -> SparseImage:
        return SparseImage(self.size, {k: bytearray(v) for k, v in self.pages.items()})

    @property
    def allocated(self) -> int:
        return len(self.pages) * PAGE
