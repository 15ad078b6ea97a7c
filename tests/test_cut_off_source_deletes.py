"""A rename whose delete of its source was cut off (found by scripts/soak, sheep backend).

A node died with the rename's DEL_VDI of the source in flight. The rename answered EIO
though its clone already held the data under the new name, and ``mv``, seeing the source
still there, renamed it again, over the new name: the source, its index zeroed by the
delete cut off, replaced the data with zeros.
"""

from __future__ import annotations

import logging

import pytest

from sheepfs.errors import Unavailable
from tests.core_helpers import SMALL, MiB, mount, random_bytes, read_name
from tests.memory_backend import MemoryBackend

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("zeroed", [True, False])
async def test_a_rename_whose_source_delete_was_cut_off_keeps_the_data_renamed(
    tmp_path, monkeypatch, caplog, zeroed
) -> None:
    backend = MemoryBackend()
    data = random_bytes(MiB + 5)
    backend.put(b"src", data, block_size_shift=SMALL)
    real_delete = backend.delete

    async def cut_off(name: bytes) -> None:
        if name != b"src":
            return await real_delete(name)
        if zeroed:  # the delete ran as far as zeroing the index; its reply was lost
            await real_delete(name)
            backend.put(b"src", bytes(len(data)), block_size_shift=SMALL)
        raise Unavailable("delete", name, "the connection broke with the request in flight")

    monkeypatch.setattr(backend, "delete", cut_off)
    caplog.set_level(logging.WARNING)
    async with mount(backend, tmp_path) as fs:
        await fs.rename(b"src", b"dst")  # the data is renamed: what the user asked for
        assert await read_name(fs, b"dst") == data
        monkeypatch.setattr(backend, "delete", real_delete)
        await fs.unlink(b"src")  # what is left of the old name goes as any file does
        assert await read_name(fs, b"dst") == data
    assert backend.data(b"dst") == data and b"src" not in backend.names()
    assert "deleting the old name failed" in caplog.text
