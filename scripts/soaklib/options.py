"""The soak's command line."""

from __future__ import annotations

import argparse
import random
import shlex
from dataclasses import dataclass

from sheepfs.sizes import parse_size


@dataclass(frozen=True)
class Config:
    duration: float
    seed: int
    backend: str
    workers: int
    max_size: int  # the largest new file
    budget: int  # bytes all files may hold together
    timeout: float  # sheepfs --timeout
    fault_gap: float  # mean seconds between two faults
    spool_size: int
    fake: bool
    debug: bool
    keep: bool

    def deadline(self, nbytes: int = 0) -> float:
        """Seconds an operation moving ``nbytes`` may take before it counts as a hang: many
        times what sheepfs itself may wait on the cluster (``--timeout``) on top of a slow
        pace (2 MiB/s), so a correct sheepfs on a loaded 2-core machine never reaches it."""
        return 30 * self.timeout + nbytes / (2 << 20)

    def replay(self) -> str:
        return shlex.join(
            [
                "scripts/soak",
                "--seed",
                str(self.seed),
                "--duration",
                f"{self.duration:g}",
                "--backend",
                self.backend,
                "--workers",
                str(self.workers),
            ]
            + (["--fake"] if self.fake else [])
        )


def parse(argv: list[str]) -> Config:
    ap = argparse.ArgumentParser(prog="scripts/soak", description=__doc__)
    ap.add_argument("--duration", type=float, default=600, help="seconds of workload (600)")
    ap.add_argument("--seed", type=int, help="seed of the workload and faults (random)")
    ap.add_argument("--backend", choices=("sheep", "dog"), default="sheep")
    ap.add_argument("--workers", type=int, default=3, help="workers at once (3)")
    ap.add_argument("--max-size", default="256M", help="the largest new file (256M)")
    ap.add_argument("--budget", default="1536M", help="bytes all files hold at most (1536M)")
    ap.add_argument("--timeout", type=float, default=8, help="sheepfs --timeout (8 s)")
    ap.add_argument("--fault-gap", type=float, default=10, help="mean seconds between faults")
    ap.add_argument("--spool-size", default="2G", help="size of the spool's own disk (2G)")
    ap.add_argument("--fake", action="store_true", help="the fake dog even if Sheepdog is found")
    ap.add_argument("--debug", action="store_true", help="run sheepfs with --debug")
    ap.add_argument("--keep", action="store_true", help="keep the work directory, logs and stores")
    a = ap.parse_args(argv)
    seed = a.seed if a.seed is not None else random.SystemRandom().randrange(1, 1 << 31)
    return Config(
        duration=a.duration,
        seed=seed,
        backend=a.backend,
        workers=max(1, a.workers),
        max_size=parse_size(a.max_size),
        budget=parse_size(a.budget),
        timeout=a.timeout,
        fault_gap=a.fault_gap,
        spool_size=parse_size(a.spool_size),
        fake=a.fake,
        debug=a.debug,
        keep=a.keep,
    )
