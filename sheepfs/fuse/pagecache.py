"""What sheepfs asks of the kernel's page cache for its mount.

Two things, both best effort: a larger read-ahead (fewer, bigger FUSE reads), and dropping
the pages a sequential reader has left behind. Those pages cannot serve anybody: the next
open drops a file's pages anyway (another Sheepdog client may have changed the VDI), so
keeping them only fills memory. Dropped early, the same few pages are used again and again
for the reply copy, instead of a gigabyte of fresh ones per gigabyte read (on a virtual
machine whose host reclaims freed memory, fresh pages cost a host fault each).
"""

from __future__ import annotations

import errno
import logging
import os
import queue
import struct
import threading

log = logging.getLogger(__name__)

#: Kernel read-ahead for the mount, KiB. The default 128 KiB splits a sequential read into
#: 128 KiB FUSE requests; 4 MiB (one object) gives 1 MiB requests, an eighth as many.
READ_AHEAD_KB = 4096

#: FUSE_NOTIFY_INVAL_INODE (include/uapi/linux/fuse.h): a fuse_out_header with unique 0 and
#: the notification code as error, then struct fuse_notify_inval_inode_out {ino, off, len}.
_NOTIFY_INVAL_INODE = 2
_INVAL_INODE = struct.Struct("<IiQQqq")


def raise_read_ahead(mountpoint: str) -> None:
    """Raise the mount's read-ahead through sysfs (root only; best effort).

    The kernel sets read-ahead from the INIT reply, so this runs on the first request after
    it. The device number comes from /proc/self/mountinfo: a stat() of the mount point from
    the FUSE loop's own thread would wait for itself.
    """
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                fields = line.split()
                if fields[4] == mountpoint:
                    device = fields[2]
        path = f"/sys/class/bdi/{device}/read_ahead_kb"
        with open(path, "w") as f:
            f.write(str(READ_AHEAD_KB))
        log.debug("read-ahead of %s set to %d KiB", mountpoint, READ_AHEAD_KB)
    except (OSError, UnboundLocalError, IndexError) as e:
        log.debug("could not raise the read-ahead of %s: %s", mountpoint, e)


def _fuse_device() -> int | None:
    """A descriptor of our /dev/fuse (pyfuse3 does not give its own out); None if none.

    It is a duplicate, kept open until the process ends: once libfuse closes its own at
    unmount, the number could be reused (a pipe to dog, say) while a notification is still
    queued for it. Writes to it after the unmount fail with ENODEV instead.
    """
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}") == "/dev/fuse":
                return os.dup(int(name))
        except OSError:
            continue
    return None


class DropBehind:
    """Drops the page cache behind sequential readers, from a thread of its own.

    pyfuse3 can only invalidate a whole file, which would also drop the read-ahead in
    front of the reader; the kernel takes a range, so the notification is written to the
    FUSE device here. It runs on its own thread because the kernel may wait for a page
    that a READ still in our queue has locked: the event loop must stay free to answer it.
    """

    #: Pages are dropped this far behind the newest read (kernel read-ahead asks up to two
    #: 4 MiB windows ahead of the reader, so the reader is past them)...
    LAG = 16 << 20
    #: ... in steps of this much.
    STEP = 64 << 20

    def __init__(self) -> None:
        self._dropped: dict[int, int] = {}  # inode -> pages below this offset are dropped
        self._queue: queue.SimpleQueue[tuple[int, int, int]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._device: int | None = None
        self.enabled = True

    def read(self, inode: int, offset: int) -> None:
        """A sequential reader of ``inode`` asked for ``offset``: drop what it has passed."""
        if not self.enabled:
            return
        mark = self._dropped.get(inode, 0)
        if offset < mark:  # it went back: start again from there
            self._dropped[inode] = offset
        elif offset - self.LAG - mark >= self.STEP:
            self._dropped[inode] = offset - self.LAG
            self._send(inode, mark, offset - self.LAG - mark)

    def forget(self, inode: int) -> None:
        self._dropped.pop(inode, None)

    def _send(self, inode: int, offset: int, length: int) -> None:
        if self._thread is None:
            self._device = _fuse_device()
            if self._device is None:
                log.debug("no FUSE device found: pages behind readers are not dropped")
                self.enabled = False
                return
            self._thread = threading.Thread(target=self._run, name="drop-behind", daemon=True)
            self._thread.start()
        self._queue.put((inode, offset, length))

    def _run(self) -> None:
        assert self._device is not None
        while True:
            inode, offset, length = self._queue.get()
            message = _INVAL_INODE.pack(
                _INVAL_INODE.size, _NOTIFY_INVAL_INODE, 0, inode, offset, length
            )
            try:
                os.write(self._device, message)
            except OSError as e:
                log.debug("could not drop pages of inode %d: %s", inode, e)
                if e.errno != errno.ENOENT:  # ENOENT: the kernel has forgotten that inode
                    self.enabled = False  # unmounted, or a kernel without the notification
