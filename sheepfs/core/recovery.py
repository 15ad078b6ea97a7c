"""Spool recovery: upload what an earlier run staged but did not get into Sheepdog."""

from __future__ import annotations

import logging

from ..errors import BackendError
from ..spool import Spool, StagedFile
from .aside import put_back
from .catalog import Catalog
from .filetimes import settle
from .inodes import Inodes
from .openfiles import OpenFiles

log = logging.getLogger(__name__)


async def recover_spool(spool: Spool, catalog: Catalog, files: OpenFiles, inodes: Inodes) -> None:
    """Put back old data a cut-short replace or rename set aside; upload every leftover
    spool file that can be uploaded safely; keep the others."""
    for aside in spool.asides():
        await put_back(files, catalog, aside)
    for staged in spool.leftovers():
        await _recover(staged, catalog, files, inodes)


async def _recover(staged: StagedFile, catalog: Catalog, files: OpenFiles, inodes: Inodes) -> None:
    name = staged.vdi_name
    try:
        info = await catalog.get(name)
    except BackendError as e:
        log.error("spool: cannot check %r (%s); its data stays in %s", name, e, staged.path)
        staged.close()
        return
    if staged.replaces or (info is not None and not staged.created):
        # Never replace a VDI's data with a copy that may have been cut short.
        log.error(
            "spool: %s holds new data for %r, which exists in Sheepdog with other "
            "data; not uploaded, the file is kept (copy it in by hand if it is "
            "complete, then delete it and its .json)",
            staged.path,
            name,
        )
        staged.close()
        return
    log.warning("spool: uploading %r left by an earlier run from %s", name, staged.path)
    f = files.adopt(inodes.ino_for(name), staged, info)
    try:
        await files.sync(f)
    except BackendError as e:
        log.error("spool: %s", e)
        return
    await settle(files.times, f)  # its data changed: mtime is now
    files.forget(f)
    log.info("spool: %r uploaded", name)
