"""Old data set aside by a replace or a rename that a crash cut short, put back.

A replace (``cp`` over a file, shrinking it: core/replace.py) and a rename over a file
(core/rename.py) move the name's old data into a snapshot, delete the VDI and make the name
again. A spool record (``Spool.set_aside``) lives from just before the delete until the new
data is in, and goes before the snapshot does. One found at the next mount means that the
operation never ended (its ``close()`` or ``rename()`` did not succeed), so the name must
hold its old data. A VDI of that name is deleted first where it cannot be that data (kind
"replace": one the cut-short upload made again, or the old one whose delete was cut off with
its index zeroed, or still the old one, which the snapshot holds too); after the delete of a
rename's target has ended (kind "rename"), a VDI of that name is a new one, and stays. A
rename's source is recorded as kind "rename" for the time of its own snapshot, which, cut
off, may leave the name with that snapshot only (core/rename.py).
"""

from __future__ import annotations

import logging

import trio

from ..errors import BackendError
from ..spool import Aside
from .catalog import Catalog
from .openfiles import OpenFiles
from .replace import drop_snapshot, has_snapshot

log = logging.getLogger(__name__)


#: Seconds between tries to put back the target of a rename that failed while mounted.
RETRY = 2.0


def put_back_later(files: OpenFiles, catalog: Catalog, aside: Aside, tried: bool = False) -> None:
    """A rename failed once its target's old data was set aside (the cluster went away,
    say), or the mount could not put back what an earlier run set aside: the name gets its
    old data back as soon as the cluster lets it, in the background; if the mount ends
    first, the next one does it. ``tried``: a first try failed already."""
    catalog.restoring.add(aside.vdi_name)  # meanwhile the name answers EIO, not ENOENT
    files.uploader.tasks.start(_retrying, files, catalog, aside, int(tried))


async def _retrying(files: OpenFiles, catalog: Catalog, aside: Aside, tries: int) -> None:
    try:
        if tries:
            await trio.sleep(RETRY)
        while not await put_back(files, catalog, aside, quiet=tries > 0):
            tries += 1
            await trio.sleep(RETRY)
    finally:
        catalog.restoring.discard(aside.vdi_name)


async def put_back(files: OpenFiles, catalog: Catalog, aside: Aside, quiet: bool = False) -> bool:
    """Give ``aside.vdi_name`` its old data again (from snapshot ``aside.tag``); False if
    the cluster did not let it (the record stays)."""
    name, tag = aside.vdi_name, aside.tag
    try:
        exists = await files.backend.lookup(name) is not None  # not a listing of before
        if exists and aside.kind == "rename":
            aside.remove()  # a new file of that name has been made since
            return True
        if not await has_snapshot(files.backend, name, tag):
            # Recorded just before a snapshot that never landed: nothing was set aside.
            log.info("%r: no snapshot %s was made, nothing to put back", name, tag)
            aside.remove()
            return True
        if exists:
            await files.times.delete(name)
            catalog.remove(name)
        await files.backend.clone(name, tag, name)
        info = await files.backend.lookup(name)
    except BackendError as e:
        log.log(
            logging.DEBUG if quiet else logging.ERROR,
            "the old data of %r is in its snapshot %s and could not be put back yet (%s)",
            name,
            tag,
            e,
        )
        return False
    if info is not None:
        catalog.put(info)
    aside.remove()
    await drop_snapshot(files.backend, name, tag)
    log.warning(
        "a %s of %r was cut short: its old data is back (from snapshot %s)", aside.kind, name, tag
    )
    return True
