"""ext4 on one file of the mount, loop-mounted: the kernel's own writes, flushes and
journal through sheepfs. The model is what ext4 holds: each small file written in an
operation that ended well (the files copied in, ``sync -f``, unmounted) must be there at
the end, in the image as read back from the cluster, after its journal is replayed.

The loop mount lives in a mount namespace of its own (``unshare -m``), so that a sheep
started meanwhile does not copy it (its namespace would keep the image open).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field

from . import content
from .ops import MiB, Worker
from .runner import Result
from .target import Target, Unavailable

log = logging.getLogger("soak")

IMAGE = 64 * MiB
#: Copies ($3.. pairs of SOURCE NAME; SOURCE "-" removes NAME) into the image $1 mounted
#: on $2, then syncs and unmounts; its exit code says whether all of it was acknowledged.
SCRIPT = r"""set -e
img=$1 dir=$2; shift 2
mount -o loop "$img" "$dir"
while [ $# -gt 0 ]; do
    if [ "$1" = - ]; then rm -f -- "$dir/$2"; else cp -- "$1" "$dir/$2"; fi
    shift 2
done
sync -f "$dir"
umount "$dir"
"""


#: Preen mode: where a read fails, e2fsck stops (exit 4, "Error reading block") having
#: written nothing but the superblock's error flag. ``-y`` answers "Ignore error? yes" and
#: "Force rewrite? yes" and writes the block back with what it could not read: a read
#: refused for a moment, as the cluster restarts, wiped a directory block, and the next
#: check, "correcting" that, took an acknowledged file out of it (found by the soak,
#: 643976186; ``tests/test_soak_ext4.py``).
FSCK = ["e2fsck", "-fp"]


def unreadable(fsck: Result) -> bool:
    """Whether e2fsck could not read the image (a fault, not a damaged file system)."""
    return bool(fsck.rc and fsck.rc & 8) or b"Error reading block" in fsck.out


@dataclass
class Ext4:
    name: str
    made: bool = False  # the image exists and holds a file system
    files: dict[str, tuple[str, int]] = field(default_factory=dict)  # acknowledged: sha, size
    unknown: set[str] = field(default_factory=set)  # written by a refused operation
    last_op: str = "-"
    last_at: float = 0.0

    def op(self, wk: Worker) -> bool:
        img = wk.ctx.mnt / self.name
        if not self.made:
            return self._make(wk, str(img))
        faults, calm = len(wk.ctx.report.faults), wk.ctx.calm.is_set()
        fsck = wk.do("ext4", [], [*FSCK, str(img)], IMAGE, f"e2fsck {self.name}")
        quiet = calm and wk.ctx.calm.is_set() and len(wk.ctx.report.faults) == faults
        if fsck.rc is None or not quiet:
            return True  # a fault came meanwhile: next time
        missing = "No such file" in fsck.err
        if missing or (fsck.rc & 4 and not unreadable(fsck)):
            lost = sum(size for _, size in self.files.values())
            if lost or not missing:  # an image holding nothing acknowledged may be gone
                said = fsck.out.decode(errors="replace").strip()[-300:]
                why = "missing" if missing else f"inconsistent (e2fsck -p exit {fsck.rc}: {said})"
                wk.ctx.report.lose(max(1, lost), f"ext4 image {self.name} {why}", self.last_op,
                                   self.last_at)  # fmt: skip
            self.made, self.files, self.unknown = False, {}, set()
            return True
        if fsck.rc & ~3:
            return True  # it could not be read (a fault just before): next time, unharmed
        self._write(wk, str(img))
        return True

    def _make(self, wk: Worker, img: str) -> bool:
        r = wk.do("ext4", [], ["truncate", "-s", str(IMAGE), "--", img], 0, f"image {self.name}")
        if r.ok:
            r = wk.do("ext4", [], ["mkfs.ext4", "-q", "-F", img], IMAGE, f"mkfs {self.name}")
        if r.ok:  # mkfs does not say whether its close failed: fsync says
            r = wk.do("ext4", [], ["sync", "--", img], IMAGE, f"sync {self.name}")
        self.made = r.ok
        self.files, self.unknown = {}, set()
        return True

    def _write(self, wk: Worker, img: str) -> None:
        args, planned = [], {}
        for _ in range(wk.rng.randrange(1, 4)):
            inner = f"i{wk.rng.randrange(8)}"
            if wk.rng.random() < 0.2:
                args += ["-", inner]
                planned[inner] = None
                continue
            src = wk.ctx.tmp / f"ext4-{inner}"
            data = content.data(wk.rng.randrange(1 << 62), 0, wk.rng.randrange(1, 2 * MiB))
            src.write_bytes(data)
            args += [str(src), inner]
            planned[inner] = (hashlib.sha256(data).hexdigest(), len(data))
        mnt = wk.ctx.tmp / "ext4-mnt"
        mnt.mkdir(exist_ok=True)
        argv = [
            "unshare",
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            SCRIPT,
            "sh",
            img,
            str(mnt),
            *args,
        ]
        r = wk.do("ext4", [], argv, 4 * IMAGE, f"{self.name}: {' '.join(planned)}")
        self.last_op, self.last_at = (
            f"ext4 {' '.join(planned)} ({'ok' if r.ok else 'refused'})",
            wk.ctx.report.now(),
        )
        for inner, what in planned.items():
            if not r.ok:
                self.files.pop(inner, None)
                self.unknown.add(inner)
            elif what is None:
                self.files.pop(inner, None)
                self.unknown.discard(inner)
            else:
                self.files[inner] = what
                self.unknown.discard(inner)

    def final(self, wk_runner, report, target: Target, tmp) -> None:
        """The image as the cluster holds it: journal replayed, every acknowledged file."""
        if not self.made or not self.files:
            return
        local = tmp / "ext4-final.img"
        try:
            stream = target.open_vdi(self.name)
            if stream is None:
                raise Unavailable("the image is missing")
            with open(local, "wb") as out:
                while block := stream.read(MiB):
                    out.write(block)
            stream.finish()
        except Unavailable as e:
            report.lose(
                sum(s for _, s in self.files.values()),
                f"ext4 image: {e}",
                self.last_op,
                self.last_at,
            )
            return
        fsck = wk_runner.run(["e2fsck", "-fy", str(local)], 600, "final e2fsck")
        if fsck.rc not in (0, 1):
            report.note(f"ext4 image: e2fsck exit {fsck.rc}: {fsck.err[-200:]}")
        for inner, (sha, size) in sorted(self.files.items()):
            r = wk_runner.run(["debugfs", "-R", f"cat /{inner}", str(local)], 600, "debugfs")
            report.verified_one()
            if hashlib.sha256(r.out).hexdigest() != sha:
                report.lose(
                    size,
                    f"ext4 image: /{inner} ({size} bytes) lost or changed",
                    self.last_op,
                    self.last_at,
                )
        local.unlink(missing_ok=True)
