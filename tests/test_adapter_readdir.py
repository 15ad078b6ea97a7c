"""The FUSE adapter's readdir, in-process: the kernel asks a page of entries at a time, and
the listing is taken once per pass over the directory, not once per page (at 1,000 VDIs
that was 37 listings and sorts per ``ls``)."""

from __future__ import annotations

import pyfuse3

from sheepfs.fuse.adapter import Options, SheepFS
from tests.core_helpers import mount
from tests.memory_backend import MemoryBackend

PAGE = 30  # entries the kernel takes per READDIRPLUS, about one page with attributes


async def read_dir(ops: SheepFS, monkeypatch) -> list[bytes]:
    """Every name, a page per readdir call, as the kernel would ask for them."""
    names: list[bytes] = []
    page: list[bytes] = []

    def reply(token, name, attrs, next_id) -> bool:
        if len(page) == PAGE:
            return False
        page.append(name)
        return True

    monkeypatch.setattr(pyfuse3, "readdir_reply", reply)
    fh = await ops.opendir(pyfuse3.ROOT_INODE, None)
    while True:
        page.clear()
        await ops.readdir(fh, len(names), None)
        if not page:
            break
        names += page
    await ops.releasedir(fh)
    return names


async def test_one_listing_per_pass_over_the_directory(tmp_path, monkeypatch) -> None:
    backend = MemoryBackend()
    for k in range(100):
        backend.put(b"v%03d" % k, b"x")
    async with mount(backend, tmp_path) as fs:
        ops = SheepFS(fs, Options())
        calls = 0
        readdir = fs.readdir

        async def counted():
            nonlocal calls
            calls += 1
            return await readdir()

        monkeypatch.setattr(fs, "readdir", counted)
        assert await read_dir(ops, monkeypatch) == [b"v%03d" % k for k in range(100)]
        assert calls == 1  # four pages, one listing
        backend.put(b"v100", b"x")  # a new pass sees what changed since
        fs.catalog.ttl = 0
        assert len(await read_dir(ops, monkeypatch)) == 101 and calls == 2
        assert not ops._listings  # released with its handle
