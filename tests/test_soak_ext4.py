"""The soak's check of its loop-mounted ext4 image must not harm the image when reads of it
fail for a while (found by scripts/soak, dog backend, seed 643976186).

The cluster restarted; reads of the image through sheepfs failed for a while (EIO, as they
should while the cluster is away). The soak's check, ``e2fsck -fy``, answered "Ignore
error? yes, Force rewrite? yes" and wrote the root directory's block back with what it had
not read; the next check "corrected" that and took an acknowledged file out of the
directory, and the soak counted it lost. The check now runs in preen mode, which stops at
a read error having changed nothing that matters.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.mounting import ROOT, fuse_unmount, is_mounted

sys.path.insert(0, str(ROOT / "scripts"))

from soaklib.ext4 import Ext4  # noqa: E402
from soaklib.report import Report  # noqa: E402
from soaklib.runner import Runner  # noqa: E402

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(
        not all(map(shutil.which, ["mkfs.ext4", "e2fsck", "debugfs", "fusermount3"])),
        reason="needs e2fsprogs and fusermount3",
    ),
    pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="needs /dev/fuse"),
]
BLOCK = 4096
DATA = bytes(range(256)) * 1200


def debugfs(image: Path, request: str) -> bytes:
    return subprocess.run(["debugfs", "-R", request, str(image)], capture_output=True,
                          check=True).stdout  # fmt: skip


def make_image(tmp_path: Path) -> tuple[Path, int]:
    """A 16 MiB ext4 image holding /f1; and the block of its root directory."""
    image, src = tmp_path / "img", tmp_path / "src"
    subprocess.run(["truncate", "-s", "16M", str(image)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-b", str(BLOCK), str(image)], check=True)
    src.write_bytes(DATA)
    subprocess.run(["debugfs", "-w", "-R", f"write {src} f1", str(image)], check=True,
                   capture_output=True)  # fmt: skip
    assert debugfs(image, "cat /f1") == DATA
    return image, int(debugfs(image, "blocks /").split()[0])


@contextmanager
def flaky(tmp_path: Path, image: Path, block: int) -> Iterator[tuple[Path, Path]]:
    """``image`` as ``MNT/img``, whose reads of ``block`` fail while CONTROL exists."""
    mnt, control = tmp_path / "mnt", tmp_path / "failing"
    mnt.mkdir()
    control.touch()
    argv = [sys.executable, str(ROOT / "tests" / "flaky_image.py"), str(image), str(mnt),
            str(block * BLOCK), str((block + 1) * BLOCK), str(control)]  # fmt: skip
    proc = subprocess.Popen(argv)
    try:
        for _ in range(100):
            if is_mounted(mnt) and (mnt / "img").exists():
                break
            time.sleep(0.05)
        else:
            pytest.fail("the flaky image did not mount")
        yield mnt, control
    finally:
        fuse_unmount(mnt)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


class CheckingWorker:
    """What ``Ext4.op`` needs of a soak worker: its commands run for real."""

    def __init__(self, mnt: Path) -> None:
        self.report = Report(seed=1, replay="")
        self.ctx = SimpleNamespace(mnt=mnt, report=self.report, calm=threading.Event())
        self.ctx.calm.set()
        self.runner = Runner(self.report)

    def do(self, kind, entries, argv, nbytes, desc):
        return self.runner.run(argv, 60, desc)


def test_e2fsck_y_writes_back_a_block_it_could_not_read(tmp_path) -> None:
    """The fact behind the bug: a read refused for a moment costs the file system."""
    image, root_block = make_image(tmp_path)
    with flaky(tmp_path, image, root_block) as (mnt, _):
        p = subprocess.run(["e2fsck", "-fy", str(mnt / "img")], capture_output=True, text=True)
    assert "Force rewrite? yes" in p.stdout and p.returncode & 1, p.stdout
    assert debugfs(image, "cat /f1") != DATA  # out of its directory: lost+found/#12


def test_the_soaks_check_leaves_an_image_whose_reads_fail_whole(tmp_path, monkeypatch) -> None:
    image, root_block = make_image(tmp_path)
    writes: list[str] = []
    monkeypatch.setattr(Ext4, "_write", lambda self, wk, img: writes.append(img))
    ext4 = Ext4("img", made=True, files={"f1": (hashlib.sha256(DATA).hexdigest(), len(DATA))})
    with flaky(tmp_path, image, root_block) as (mnt, control):
        wk = CheckingWorker(mnt)
        ext4.op(wk)  # the root directory cannot be read: next time
        assert writes == [] and wk.report.lost == 0 and ext4.made and "f1" in ext4.files
        control.unlink()
        ext4.op(wk)  # it reads again: checked, and the next files go in
        assert writes == [str(mnt / "img")] and wk.report.lost == 0
    assert debugfs(image, "cat /f1") == DATA
