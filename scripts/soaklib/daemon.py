"""The sheepfs under test: one mount point, mounted again after each kill, always with the
same spool, which lives on a small disk of its own so that it can be filled up."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from .target import CRASH_WORDS

log = logging.getLogger("soak")
ROOT = Path(__file__).resolve().parent.parent.parent


class SpoolDisk:
    """A tmpfs holding the spool (``spool``) and, while the spool is to be full, a ballast
    file beside it that takes every free byte but ``leave``."""

    def __init__(self, base: Path, size: int) -> None:
        self.root = base / "spooldisk"
        self.root.mkdir(mode=0o700)
        mount = ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(self.root)]
        subprocess.run(mount, check=True, capture_output=True)
        self.spool = self.root / "spool"
        self.spool.mkdir(mode=0o700)
        self.ballast = self.root / "ballast"

    def fill(self, leave: int) -> int:
        """Take all free space but ``leave`` bytes; returns the ballast's size."""
        fd = os.open(self.ballast, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            for _ in range(100):  # the spool may take more meanwhile
                st = os.statvfs(self.root)
                size = max(0, st.f_bavail * st.f_frsize - leave + os.fstat(fd).st_size)
                try:
                    os.posix_fallocate(fd, 0, size) if size else None
                    return size
                except OSError as e:
                    if e.errno != errno.ENOSPC:
                        raise
            return os.fstat(fd).st_size
        finally:
            os.close(fd)

    def drain(self) -> None:
        self.ballast.unlink(missing_ok=True)

    def staged(self) -> list[Path]:
        """Data files in the spool now."""
        return sorted(self.spool.glob("*.data"))

    def setting_aside(self) -> bool:
        """Whether a replace or a rename over a file has the old data in a snapshot now."""
        return any(self.spool.glob("*.aside"))

    def replacing(self) -> bool:
        """Whether some staged file replaces a VDI's data (a replace is under way)."""
        return any(
            '"replaces": true' in p.read_text() for p in self.spool.glob("*.json") if p.exists()
        )

    def remove(self) -> None:
        subprocess.run(["umount", "-l", str(self.root)], capture_output=True)


def fuse_mounted(mnt: Path) -> bool:
    """Whether a FUSE file system is mounted on ``mnt`` (alive or not)."""
    with open("/proc/self/mounts") as f:
        return any(w[1] == str(mnt) and w[2].startswith("fuse") for w in map(str.split, f))


class Daemon:
    """sheepfs on ``mnt``, started again after each kill; every run logs to a file of its
    own (``sheepfs-N.log``). Under the mount point lies an empty read-only tmpfs: between a
    kill and the next mount, the workload's writes fail (EROFS) rather than land on the
    local disk."""

    def __init__(self, mnt: Path, spool: Path, logs: Path, args: list[str], env) -> None:
        self.mnt, self.spool, self.logs, self.args, self.env = mnt, spool, logs, args, env
        self.mnt.mkdir(exist_ok=True)
        self._underlay()
        self.proc: subprocess.Popen | None = None
        self.runs = 0

    @property
    def log_file(self) -> Path:
        return self.logs / f"sheepfs-{self.runs}.log"

    def start(self) -> None:
        self._underlay()
        self.runs += 1
        argv = [
            sys.executable,
            "-m",
            "sheepfs",
            str(self.mnt),
            "-f",
            *self.args,
            "--spool-dir",
            str(self.spool),
            "--log-file",
            str(self.log_file),
        ]
        with open(self.log_file.with_suffix(".err"), "wb") as err:  # what it says on dying
            self.proc = subprocess.Popen(
                argv, env=self.env, cwd=ROOT, start_new_session=True,
                stdout=subprocess.DEVNULL, stderr=err,
            )  # fmt: skip
        end = time.monotonic() + 120
        while not fuse_mounted(self.mnt):
            if not self.alive() or time.monotonic() > end:
                raise RuntimeError(f"sheepfs did not mount: {self.log_text()[-600:]}")
            time.sleep(0.05)

    def _underlay(self) -> None:
        """The read-only tmpfs under the mount point, mounted if it is not."""
        with open("/proc/self/mounts") as f:
            if any(w[1] == str(self.mnt) and w[2] == "tmpfs" for w in map(str.split, f)):
                return
        underlay = ["mount", "-t", "tmpfs", "-o", "ro,size=4k,mode=0755", "tmpfs", str(self.mnt)]
        subprocess.run(underlay, check=True, capture_output=True)

    def _clear(self) -> None:
        """Lazily unmount a dead FUSE mount (never the tmpfs under it: fusermount3 would)."""
        if fuse_mounted(self.mnt):
            subprocess.run(["fusermount3", "-uz", str(self.mnt)], capture_output=True)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL, as a crash would; the dead mount is cleared (``fusermount3 -uz``)."""
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # its dog calls too
        self.proc.wait(60)
        self._clear()

    def term(self, deadline: float) -> int | None:
        """SIGTERM: sheepfs saves what is pending, unmounts, exits; its exit code, None if
        it did not exit within ``deadline`` seconds (then it is killed)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(deadline)
        except subprocess.TimeoutExpired:
            self.kill()
            return None
        self._clear()
        return rc

    def unmount(self, deadline: float) -> int | None:
        """Unmount as a user would (pending data is written first); the exit code, None if
        sheepfs did not exit within ``deadline`` seconds."""
        assert self.proc is not None
        for _ in range(120):  # busy for a moment after the last close
            if not fuse_mounted(self.mnt):
                break
            done = subprocess.run(["fusermount3", "-u", str(self.mnt)], capture_output=True)
            if done.returncode == 0:
                break
            time.sleep(0.5)
        try:
            return self.proc.wait(deadline)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def cleanup(self) -> None:
        if self.alive():
            self.kill()
        self._clear()

    def remove(self) -> None:
        """Clear the mount point (the FUSE mount and the tmpfs under it)."""
        self.cleanup()
        subprocess.run(["umount", "-l", str(self.mnt)], capture_output=True)

    def crashes(self) -> list[str]:
        """Lines of any run's log that say it crashed."""
        found = []
        for f in sorted(self.logs.glob("sheepfs-*.*")):
            with open(f, errors="replace") as lines:
                found += [
                    f"{f.name}: {line.strip()}"
                    for line in lines
                    if any(w in line for w in CRASH_WORDS)
                ]
        return found

    def log_text(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    def wait_recovered(self, leftovers: list[Path], deadline: float) -> list[Path]:
        """Wait until every spool file an earlier run left is uploaded (gone) or named in
        the log (kept, or failed); returns those still neither at the deadline."""
        end = time.monotonic() + deadline
        while True:
            text = self.log_text()
            left = [p for p in leftovers if p.exists() and str(p) not in text]
            if not left or time.monotonic() > end:
                return left
            time.sleep(0.2)
