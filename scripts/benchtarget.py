"""Where scripts/bench runs: the user's cluster, a throwaway real one, or the fake dog."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from benchlib import Dog

log = logging.getLogger("bench")


@dataclass
class Where:
    """The cluster under test and how to describe it."""

    dog: Dog
    label: str  # for the first line of the output
    sheepfs_c: Path | None  # Sheepdog's C sheepfs, to measure beside the mount
    c_why: str  # why there is no C sheepfs column, when there is none
    fake: bool = False  # the fake dog: only the dog backend can mount it


def choose(args, work: Path, stack: contextlib.ExitStack) -> Where:
    """The user's cluster (-a/-p/--dog), else a throwaway real one, else the fake dog. A
    throwaway cluster's removal is pushed on ``stack``."""
    from realcluster import Dist, RealCluster, find_sheepdog

    dist = find_sheepdog()
    user = not args.fake and (args.dog or args.address or args.port)
    if isinstance(dist, Dist):
        c, c_why = dist.sheepfs_c, "" if dist.sheepfs_c else f"{dist.origin} has no sheepfs-c"
    else:
        c, c_why = None, f"no Sheepdog build with sheepfs-c ({dist})"
    if user:
        dog_path = args.dog or (str(dist.dog) if isinstance(dist, Dist) else None)
        dog_path = dog_path or shutil.which("dog") or shutil.which("collie")
        if dog_path is None:
            raise SystemExit("bench: no dog found; give --dog")
        dog = Dog(dog_path, args.address or "127.0.0.1", args.port or 7000, dict(os.environ))
        return Where(dog, f"real cluster ({describe(dog)}, dog {dog_path})", c, c_why)
    if isinstance(dist, Dist) and not args.fake:
        cluster = RealCluster(dist, nodes=3, copies=2)
        stack.callback(cluster.remove)
        log.info("starting a throwaway cluster on 127.0.0.1:%d", cluster.port)
        cluster.start()
        dog = Dog(str(dist.dog), cluster.address, cluster.port, dict(os.environ))
        label = f"Sheepdog {sheep_version(dist.sheep)}, 3 nodes, 2 copies, throwaway"
        return Where(dog, f"real cluster ({label}, {dist.origin})", c, c_why)
    return fake(args, work, "--fake" if args.fake else f"no Sheepdog found: {dist}")


def fake(args, work: Path, why: str) -> Where:
    """The fake dog (tests/fakedog) with real dog's costs emulated."""
    from fakedog import control

    store = control.init_store(
        work / "store",
        call_cost=args.call_cost,
        list_cost_per_vdi=args.list_cost,
        read_bandwidth=args.read_bw,
        write_bandwidth=args.write_bw,
        alloc_bandwidth=args.alloc_bw,
    )
    dog = Dog(control.dog_path(), "127.0.0.1", 7000, control.env(store))
    label = (
        f"fake dog ({why}; call cost {args.call_cost * 1000:.0f} ms, list "
        f"{args.list_cost * 1000:.2f} ms/VDI, read {args.read_bw >> 20} / write "
        f"{args.write_bw >> 20} / allocating write {args.alloc_bw >> 20} MiB/s)"
    )
    return Where(dog, label, None, "the fake dog has no sheep for it to talk to", fake=True)


def sheep_version(sheep: Path) -> str:
    p = subprocess.run([str(sheep), "--version"], capture_output=True, text=True)
    words = (p.stdout + p.stderr).split("version", 1)[-1].split()
    return words[0].split("_")[0] if words else "?"


def describe(dog: Dog) -> str:
    """``ADDR:PORT, N nodes, C copies`` of a running cluster, as far as dog says."""
    where = f"{dog.address}:{dog.port}"
    try:
        nodes = len(dog.run("node", "list", "-r").stdout.splitlines())
        info = dog.run("cluster", "info", "-v").stdout.decode(errors="replace")
        copies = info.split(" redundancy")[0].rsplit(" ", 1)[-1] if "redundancy" in info else "?"
    except subprocess.CalledProcessError as e:
        raise SystemExit(f"bench: no cluster at {where}: {e.stderr.decode().strip()}") from e
    return f"{where}, {nodes} nodes, {copies} copies"
