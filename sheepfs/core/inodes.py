"""Inode numbers of VDI names: given out on first sight and kept while the daemon runs,
so a name maps to the same inode for the kernel as long as we live."""

from __future__ import annotations

from dataclasses import dataclass, field

#: The root directory's inode (FUSE's FUSE_ROOT_ID).
ROOT_INODE = 1


@dataclass
class Inodes:
    _by_name: dict[bytes, int] = field(default_factory=dict)
    _by_ino: dict[int, bytes] = field(default_factory=dict)
    _next: int = ROOT_INODE + 1

    def __len__(self) -> int:
        return len(self._by_name)

    def ino_for(self, name: bytes) -> int:
        """The inode number of ``name``, given out now if it has none yet."""
        ino = self._by_name.get(name)
        if ino is None:
            ino = self._next
            self._next += 1
            self._by_name[name] = ino
            self._by_ino[ino] = name
        return ino

    def find(self, name: bytes) -> int | None:
        return self._by_name.get(name)

    def name_of(self, ino: int) -> bytes | None:
        return self._by_ino.get(ino)

    def drop(self, name: bytes) -> None:
        """The name is gone (unlinked): the next file of that name gets a new inode."""
        self._by_name.pop(name, None)

    def rename(self, ino: int, old: bytes, new: bytes) -> None:
        self._by_name.pop(old, None)
        stale = self._by_name.pop(new, None)
        if stale is not None:
            self._by_ino.pop(stale, None)
        self._by_name[new] = ino
        self._by_ino[ino] = new
