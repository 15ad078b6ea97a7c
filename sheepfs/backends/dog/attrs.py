"""VDI attributes through the CLI: ``dog vdi setattr NAME KEY VALUE``, ``setattr -d NAME
KEY`` and ``getattr NAME KEY`` (docs/SHEEPDOG.md F20).

One process per name and call: a listing cannot read the attributes of every VDI (the core
reads them one name at a time, when needed). dog exits 5 both for a missing key ("Attribute
'KEY' not found") and a missing VDI ("VDI not found"), so its stderr tells them apart, as
for every dog error (``errors.py``). A delete is repeated until the key is missing, because
each ``-d`` removes only the first slot holding the key (docs/PROTOCOL.md P12).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from ...errors import BackendError, NotFound
from ..base import AttrValue, check_name
from .errors import MissingAttribute

#: Deletes of one key before giving up (each removes one slot holding it).
MAX_DELETES = 9


class AttributeCalls:
    """The Backend's attribute calls, for a backend that runs dog (``_argv``, ``_run``)."""

    _argv: Callable[..., list]
    _run: Callable[..., Awaitable[tuple[bytes, bytes]]]

    async def get_attrs(self, key: bytes, names: Sequence[bytes]) -> dict[bytes, AttrValue]:
        """``dog vdi getattr`` of each name in turn: it prints the value and nothing else
        (dog records no creation time with it that it would print)."""
        found = {}
        for name in names:
            check_name("get attributes", name)
            argv = self._argv(("vdi", "getattr"), name, key)
            try:
                out, _ = await self._run("get attributes", name, argv)
            except NotFound:  # no such key, or no such VDI
                continue
            found[name] = AttrValue(out)
        return found

    async def set_attr(self, name: bytes, key: bytes, value: bytes) -> None:
        """The value on the command line (dog stores strlen(value) bytes: no NUL in it)."""
        check_name("set attribute", name)
        if b"\0" in value or not value:
            raise ValueError("dog stores 1 or more bytes without NUL as a value")
        await self._run("set attribute", name, self._argv(("vdi", "setattr"), name, key, value))

    async def drop_attr(self, name: bytes, key: bytes) -> None:
        check_name("drop attribute", name)
        argv = self._argv(("vdi", "setattr"), name, key, opts=("-d",))
        for _ in range(MAX_DELETES):
            try:
                await self._run("drop attribute", name, argv)
            except MissingAttribute:
                return
        raise BackendError("drop attribute", name, f"still set after {MAX_DELETES} deletes")
