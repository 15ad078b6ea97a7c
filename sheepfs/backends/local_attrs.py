"""VDI attributes of the local store (``--local``), kept as Sheepdog keeps them.

``attrs.json`` maps a VDI *name* and a key to a value and the creation time (ns) of the VDI
it was set for. As in Sheepdog, deleting a VDI leaves its attributes, and the next VDI of
that name finds them (docs/PROTOCOL.md P12): what the core must cope with is the same here.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import trio

from ..errors import NotFound
from .base import AttrValue, check_name


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


class LocalAttributes:
    """The Backend's attribute calls over ``root``/attrs.json (``_load`` reads the index)."""

    root: Path
    _load: Callable[[], dict[bytes, dict]]

    def _attrs_path(self) -> Path:
        return self.root / "attrs.json"

    def _load_attrs(self) -> dict[str, dict[str, dict]]:
        try:
            return json.loads(self._attrs_path().read_text())
        except FileNotFoundError:
            return {}

    def _save_attrs(self, attrs: dict[str, dict[str, dict]]) -> None:
        tmp = self._attrs_path().with_suffix(".tmp")
        tmp.write_text(json.dumps(attrs))
        os.replace(tmp, self._attrs_path())

    def _entry(self, op: str, name: bytes) -> dict:
        check_name(op, name)
        entry = self._load().get(name)
        if entry is None:
            raise NotFound(op, name, "VDI not found")
        return entry

    async def get_attrs(self, key: bytes, names: Sequence[bytes]) -> dict[bytes, AttrValue]:
        def read() -> dict[bytes, AttrValue]:
            index, attrs = self._load(), self._load_attrs()
            found = {}
            for name in names:
                got = attrs.get(_b64(name), {}).get(_b64(key))
                if name in index and got is not None:  # dog's getattr: the VDI must exist
                    found[name] = AttrValue(base64.b64decode(got["value"]), got["stamp"])
            return found

        return await trio.to_thread.run_sync(read)

    async def set_attr(self, name: bytes, key: bytes, value: bytes) -> None:
        entry = self._entry("set attribute", name)
        attrs = self._load_attrs()
        stamp = entry.get("ctime_ns", entry["ctime"] * 1_000_000_000)
        attrs.setdefault(_b64(name), {})[_b64(key)] = {"value": _b64(value), "stamp": stamp}
        self._save_attrs(attrs)

    async def drop_attr(self, name: bytes, key: bytes) -> None:
        self._entry("drop attribute", name)
        attrs = self._load_attrs()
        if attrs.get(_b64(name), {}).pop(_b64(key), None) is not None:
            self._save_attrs(attrs)
