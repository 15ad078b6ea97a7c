"""Any name a path can hold, through the name encoding and the core, in-process: many more
examples than a mount can afford. A name either maps to a VDI and every operation on it
works, or it is refused with the errno the mount tests accept; nothing else escapes."""

from __future__ import annotations

import errno

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sheepfs.errors import BackendError
from sheepfs.names import BadName, decode, encode
from tests.core_helpers import mount
from tests.memory_backend import MemoryBackend

ALLOWED = (errno.ENOENT, errno.EINVAL, errno.ENAMETOOLONG, errno.EEXIST)
names = st.binary(min_size=1, max_size=300).filter(
    lambda b: b"\0" not in b and b"/" not in b and b not in (b".", b"..")
)


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(name=names)
async def test_any_name_is_a_vdi_or_a_clean_refusal(tmp_path_factory, name):
    try:
        vdi = decode(name)
    except BadName as e:
        assert e.errno in ALLOWED
        return
    assert encode(vdi) == name  # one file name per VDI and back
    backend = MemoryBackend()
    async with mount(backend, tmp_path_factory.mktemp("n")) as fs:
        try:
            opened, _ = await fs.create(vdi)
            await fs.write(opened.fh, 0, b"x")
            await fs.flush(opened.fh)
            await fs.release(opened.fh)
            moved = b"renamed-" + vdi[:200]
            await fs.rename(vdi, moved)
            await fs.unlink(moved)
        except BackendError as e:
            assert e.errno in ALLOWED, e
        assert backend.names() == []
