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
#: Any bytes, and many names made of the pieces of escapes (`%`, `25`, `2F`, `2E`).
PIECES = [b"%", b"2", b"5", b"F", b"f", b"E", b".", b"snapshots", b"a", b"%25", b"%2F"]
names = st.one_of(
    st.binary(min_size=1, max_size=300),
    st.lists(st.sampled_from(PIECES), min_size=1, max_size=12).map(b"".join),
).filter(lambda b: b"\0" not in b and b"/" not in b and b not in (b".", b".."))


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(name=names)
async def test_any_name_is_a_vdi_or_a_clean_refusal(tmp_path_factory, name):
    try:
        vdi = decode(name)
    except BadName as e:
        assert e.errno in ALLOWED
        return
    assert decode(encode(vdi)) == vdi  # the name it is listed under leads back to it
    if b"%25" not in name:  # only a %25 the encoding would not write makes a second name
        assert encode(vdi) == name
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
