"""Spool recovery: upload what an earlier run staged but did not get into Sheepdog.

What the spool holds is taken stock of before the mount serves anything, and the names it
concerns are held in the catalog until recovery has decided about each: a user of the new
mount never meets the old data being put back under a file they have written meanwhile,
and a file this mount stages is never taken for one an earlier run left.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

from ..errors import BackendError, Exists
from ..spool import Aside, Spool, StagedFile
from .aside import put_back, put_back_later
from .catalog import Catalog
from .filetimes import settle
from .inodes import Inodes
from .openfile import OpenFile
from .openfiles import OpenFiles

log = logging.getLogger(__name__)


@dataclass
class Leftovers:
    """What an earlier run left in the spool, found before this mount serves."""

    asides: list[Aside]
    staged: list[StagedFile]

    @classmethod
    def of(cls, spool: Spool) -> Leftovers:
        return cls(spool.asides(), spool.leftovers())

    @property
    def names(self) -> set[bytes]:
        return {a.vdi_name for a in self.asides} | {s.vdi_name for s in self.staged}


async def recover_spool(
    left: Leftovers, catalog: Catalog, files: OpenFiles, inodes: Inodes
) -> None:
    """Put back old data a cut-short replace or rename set aside (what the cluster does not
    let back yet is tried again in the background, as after a rename that failed); upload
    every leftover spool file that can be uploaded safely; keep the others. The names are
    let go as soon as each is decided (a leftover to upload is an open file of the mount by
    then), before the uploads."""
    adopted: list[OpenFile] = []
    try:
        for aside in left.asides:
            if not await put_back(files, catalog, aside):
                put_back_later(files, catalog, aside, tried=True)  # EIO till it is back
        for staged in left.staged:
            f = await _adopt(staged, catalog, files, inodes)
            if f is not None:
                adopted.append(f)
    finally:
        catalog.let_go(left.names)
    for f in adopted:
        await _upload(f, catalog, files)


async def _adopt(
    staged: StagedFile, catalog: Catalog, files: OpenFiles, inodes: Inodes
) -> OpenFile | None:
    """The open file that uploads ``staged``, or None where it is kept as it is."""
    name = staged.vdi_name
    if name in catalog.restoring:  # an upload now would be deleted by the put-back
        log.error("spool: %r waits for its old data to be put back; %s stays", name, staged.path)
        staged.close()
        return None
    try:
        info = await catalog.get(name, held=True)
    except BackendError as e:
        log.error("spool: cannot check %r (%s); its data stays in %s", name, e, staged.path)
        staged.close()
        return None
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
        return None
    log.warning("spool: uploading %r left by an earlier run from %s", name, staged.path)
    return files.adopt(inodes.ino_for(name), staged, info)


async def _upload(f: OpenFile, catalog: Catalog, files: OpenFiles) -> None:
    name = f.name
    try:
        await files.sync(f)
    except Exists:
        # Made since it was looked for (a create of the earlier run still under way when it
        # died, a dog process left running): as above, never written over.
        assert f.staged is not None
        log.error("spool: %s holds new data for %r, which was made in Sheepdog meanwhile; "
                  "not uploaded, the file is kept", f.staged.path, name)  # fmt: skip
        if f.opens:  # opened meanwhile: its close says so again, and keeps it too
            return
        staged, f.staged = f.staged, None  # let go of it without removing it
        files.forget(f)
        staged.close()
        with contextlib.suppress(BackendError):  # the listing learns of it now, not later
            if (made := await files.backend.lookup(name)) is not None:
                catalog.put(made)
        return
    except BackendError as e:
        log.error("spool: %s", e)
        return
    await settle(files.times, f)  # its data changed: mtime is now
    _forget_unless_open(f, files)
    log.info("spool: %r uploaded", name)


def _forget_unless_open(f: OpenFile, files: OpenFiles) -> None:
    """A user of the mount may have opened the file meanwhile: their last close lets go."""
    if not f.opens:
        files.forget(f)
