"""Benchmark: replication between two vdfarm servers vs rsync and cp, in one run.

Job: two real `vdfarm server run` processes (a, b) on loopback sharing one
PostgreSQL database (a throw-away one on 127.0.0.1:5432), and the peers on
the same files, page cache dropped before each copy:

  base        a 4 GiB base (random bytes) imported on a, pulled by b (from
              `store set --servers all` to `replication wait` returning)
              vs `rsync --whole-file` to an rsync daemon on loopback
              vs `cp` + `sha256sum` of the copy.
  delta       a version that changes 1 % of the image (41 MiB in 1 MiB
              writes of random bytes spread over the disk, qemu-io on the
              open version: the data does not compress, only the qcow2
              tables do), promoted on a, pulled by b: bytes a sent (its
              /replication/sent, the file's bytes on the wire; the chunk
              list's size is printed beside) and wall time, vs rsync's
              delta mode (`--inplace --no-whole-file`) of the flattened
              images to the daemon holding the flattened base (bytes sent
              and received from `--stats`).
  iops        a device on a reads 4 KiB at random (fio's nbd engine, QD32)
              over a hot 1 GiB vDisk (read whole first, as a busy server's
              working set is): idle, then while b pulls a 4 GiB base with
              no cap, and again with `--max-rate 100MB/s` (the copies'
              source pages are not in the cache); each round's ratio is
              busy / the idle figure just before it, and the median ratio
              is reported (other work on the machine moves both).

Figures are times and rates of one run; the ratios are what to read. The
base copy's time is split from b's log: until b starts the copy (the
`store set` command and b's next round), the copy itself (first byte to
verified), and until `replication wait` returns.

Usage: .venv/bin/python bench/replication_bench.py [--size-mib 4096] [--iops-runtime 5]
       [--parts base,delta,iops] [--rounds 1]
  --parts   the parts to run (delta needs base); --rounds repeats each
            part's measurements (base: vdfarm and rsync alternate; iops:
            idle and copying alternate) and prints every round.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

VDFARM = [sys.executable, "-m", "vdfarm"]
ADMIN_URL = "postgresql+psycopg://root@127.0.0.1:5432/test"
MIB = 1 << 20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"bench: a server exited ({proc.returncode})")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.1)
    sys.exit(f"bench: nothing listens on {port}")


def drop_caches() -> None:
    os.sync()
    with contextlib.suppress(OSError), open("/proc/sys/vm/drop_caches", "w") as fh:
        fh.write("3\n")


@contextlib.contextmanager
def throwaway_database() -> Iterator[str]:
    from sqlalchemy import create_engine, text

    engine = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"vdfarm_bench_{uuid.uuid4().hex[:10]}"
    with engine.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield f"postgresql+psycopg://root@127.0.0.1:5432/{name}"
    finally:
        with engine.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        engine.dispose()


class Server:
    def __init__(self, work: Path, name: str, db: str) -> None:
        self.name, self.db = name, db
        self.data = work / name
        self.nbd_port, self.api_port = free_port(), free_port()
        self.proc: subprocess.Popen | None = None

    def cli(self, *args: str) -> str:
        argv = VDFARM + ["--data-dir", str(self.data), "--db", self.db, *args]
        done = subprocess.run(argv, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"bench: vdfarm {' '.join(args)} failed: {done.stderr.strip()}")
        return done.stdout

    def start(self) -> None:
        with open(self.data.parent / f"{self.name}.log", "ab") as log:  # the child keeps a copy
            self.proc = subprocess.Popen(
                VDFARM
                + ["--data-dir", str(self.data), "--db", self.db, "server", "run"]
                + ["--nbd-port", str(self.nbd_port), "--api-port", str(self.api_port)],
                stdout=log,
                stderr=log,
            )
        wait_port(self.nbd_port, self.proc)
        wait_port(self.api_port, self.proc)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(30)
            self.proc = None

    def get(self, path: str) -> bytes:
        import httpx

        token = (self.data / "api-token").read_text().strip()
        response = httpx.get(
            f"http://127.0.0.1:{self.api_port}/api/v1{path}",
            headers={"Authorization": f"Bearer {token}"},
        )
        response.raise_for_status()
        return response.content

    def sent(self, key: str) -> int:
        return int(json.loads(self.get("/replication/sent")).get(key, 0))


def warm(path: Path) -> None:
    """Read PATH whole, so its pages are in the page cache."""
    with open(path, "rb", buffering=0) as fh:
        while fh.read(MIB):
            pass


def make_random_image(path: Path, size_mib: int) -> None:
    with open(path, "wb") as fh:
        for _ in range(size_mib):
            fh.write(os.urandom(MIB))


def timed(argv: list[str], **kwargs) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True, **kwargs)
    return time.perf_counter() - t0


@contextlib.contextmanager
def rsync_daemon(root: Path) -> Iterator[str]:
    """An rsync daemon on loopback serving ROOT as module `m`; yields its URL."""
    port = free_port()
    conf = root.parent / "rsyncd.conf"
    conf.write_text(
        f"use chroot = no\nuid = root\ngid = root\n[m]\npath = {root}\nread only = no\n"
    )
    proc = subprocess.Popen(
        [
            "rsync",
            "--daemon",
            "--no-detach",
            f"--port={port}",
            f"--config={conf}",
            "--address=127.0.0.1",
        ]  # fmt: skip
    )
    wait_port(port, proc)
    try:
        yield f"rsync://127.0.0.1:{port}/m/"
    finally:
        proc.terminate()
        proc.wait(10)


def replicate(a: Server, b: Server, vdisk: str, version: int, split: dict | None = None) -> float:
    """Let b's store take VDISK, time until VERSION is present on b (SPLIT,
    if given, gets the `store set` command's own time)."""
    t0 = time.perf_counter()
    a.cli("store", "set", "default", "--servers", "all")
    if split is not None:
        split["store set"] = time.perf_counter() - t0
    a.cli("replication", "wait", vdisk, "--version", str(version), "--interval", "0.2")
    return time.perf_counter() - t0


def log_times(log: Path, since: float, vdisk: str) -> tuple[float, float] | None:
    """(copy started, copy verified) of VDISK's last copy in the server log
    LOG after the wall-clock time SINCE, as wall-clock times."""
    started = verified = None
    for line in log.read_text(errors="replace").splitlines():
        try:
            when = datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
        except ValueError:
            continue
        if when < since - 0.01:
            continue
        if f"replication: copying {vdisk}/" in line:
            started = when
        elif f"replication: {vdisk}/" in line and " verified " in line:
            verified = when
    return None if started is None or verified is None else (started, verified)


def replicate_split(a: Server, b: Server, vdisk: str, version: int) -> dict[str, float]:
    """`replicate`, with its time split by b's log: until the copy starts,
    the copy, and until `replication wait` returns."""
    wall0 = time.time()
    split: dict[str, float] = {}
    split["total"] = total = replicate(a, b, vdisk, version, split)
    times = log_times(b.data.parent / f"{b.name}.log", wall0, vdisk)
    if times is not None:
        split["to start"] = times[0] - wall0
        split["copy"] = times[1] - times[0]
        split["after"] = total - (times[1] - wall0)
    return split


def spread_writes(path: Path, size_mib: int, count: int, scratch: Path) -> None:
    """COUNT writes of 1 MiB of random bytes (each its own: nothing to
    compress, nothing the base holds) at random places of the qcow2 file at
    PATH."""
    rng = random.Random(1)
    offsets = sorted(rng.sample(range(size_mib), count))
    commands: list[str] = []
    for n, off in enumerate(offsets):
        source = scratch / f"random-{n}"
        source.write_bytes(os.urandom(MIB))
        commands += ["-c", f"write -s {source} {off}M 1M"]
    try:
        subprocess.run(["qemu-io", "-f", "qcow2", *commands, str(path)], check=True,
                       capture_output=True)  # fmt: skip
    finally:
        for n in range(len(offsets)):
            (scratch / f"random-{n}").unlink(missing_ok=True)


def fio_iops(uri: str, runtime: int, size: int = 1 << 30) -> float:
    proc = subprocess.run(
        ["fio", "--name=dev", "--ioengine=nbd", f"--uri={uri}", "--rw=randread", "--bs=4k",
         "--iodepth=32", f"--runtime={runtime}", "--time_based", f"--size={size}",
         "--output-format=json", "--numjobs=1"],
        capture_output=True, text=True,
    )  # fmt: skip
    if proc.returncode != 0:
        sys.exit(f"bench: fio on {uri} failed: {proc.stdout[-300:]}{proc.stderr[-300:]}")
    out = proc.stdout
    return float(json.loads(out[out.index("{") :])["jobs"][0]["read"]["iops"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size-mib", type=int, default=4096)
    ap.add_argument("--iops-runtime", type=int, default=5)
    ap.add_argument("--parts", default="base,delta,iops")
    ap.add_argument("--rounds", type=int, default=1)
    args = ap.parse_args()
    parts = set(args.parts.split(","))
    if parts - {"base", "delta", "iops"} or ("delta" in parts and "base" not in parts):
        sys.exit("bench: --parts takes base, delta, iops (delta needs base)")
    for tool in ("rsync", "qemu-io", "qemu-img", "fio", "sha256sum"):
        if shutil.which(tool) is None:
            sys.exit(f"bench: {tool} is not installed (run scripts/install.sh --test)")
    size = args.size_mib * MIB
    results = Results()
    with tempfile.TemporaryDirectory(prefix="vdfarm-repl-bench-", dir="/var/tmp") as tmp, \
            throwaway_database() as db:  # fmt: skip
        work = Path(tmp)
        image = work / "image.raw"
        make_random_image(image, args.size_mib)
        a, b = Server(work, "a", db), Server(work, "b", db)
        a.cli("init", "--name", "a")
        b.cli("init", "--name", "b")
        a.cli("store", "set", "default", "--servers", "a")
        a.start()
        b.start()
        try:
            if "base" in parts:
                base_part(a, b, work, image, args, results)
            if "iops" in parts:
                iops_part(a, work, image, args, results)
        finally:
            a.stop()
            b.stop()
    report(results, size)
    return 0


def base_part(a: Server, b: Server, work: Path, image: Path, args, results: Results) -> None:
    """The base copy (vdfarm, rsync, cp + sha256sum) and, if asked, the delta."""
    rsync_root = work / "rsync"
    rsync_root.mkdir()
    with rsync_daemon(rsync_root) as url:
        for round_ in range(args.rounds):
            name = "big" if round_ == 0 else f"big{round_}"
            a.cli("store", "set", "default", "--servers", "a")
            a.cli("vdisk", "import", name, str(image), "--mode", "standard")
            drop_caches()
            split = replicate_split(a, b, name, 0)
            results.add("base vdfarm s", split.pop("total"))
            for key, value in split.items():
                results.add(f"base vdfarm {key} s", value)
            drop_caches()
            results.add("base rsync s", timed(["rsync", "--whole-file", str(image), url]))
        drop_caches()
        copy = work / "copy.raw"
        results["base cp+sha256sum s"] = timed(["cp", str(image), str(copy)]) + timed(
            ["sha256sum", str(copy)]
        )
        copy.unlink()
        if "delta" in args.parts.split(","):
            delta_part(a, b, work, url, args, results)


def delta_part(a: Server, b: Server, work: Path, url: str, args, results: Results) -> None:
    """A version changing 1 % of vDisk big, pulled by b, vs rsync's delta mode."""
    a.cli("store", "set", "default", "--servers", "a")
    a.cli("version", "new", "big")
    rows = json.loads(a.cli("--json", "version", "list", "big"))
    top = a.data / "store" / "big" / rows[-1]["file"]
    spread_writes(top, args.size_mib, max(1, args.size_mib // 100), work)
    a.cli("version", "promote", "big", "--to", "test")
    key = f"big/{top.name}"
    sent_before = a.sent(key)
    drop_caches()
    results["delta vdfarm s"] = replicate(a, b, "big", rows[-1]["number"])
    results["delta vdfarm bytes"] = a.sent(key) - sent_before
    results["delta vdfarm list bytes"] = len(a.get(f"/replication/files/{key}/chunks"))
    results["delta file bytes"] = top.stat().st_size
    flat = work / "flat.raw"
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(top), str(flat)],
                   check=True)  # fmt: skip
    drop_caches()
    t0 = time.perf_counter()
    stats = subprocess.run(
        ["rsync", "--inplace", "--no-whole-file", "--stats", str(flat), f"{url}image.raw"],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    results["delta rsync s"] = time.perf_counter() - t0
    for label, word in (("bytes", "sent"), ("bytes back", "received")):
        line = next(x for x in stats.splitlines() if x.startswith(f"Total bytes {word}"))
        results[f"delta rsync {label}"] = int(line.split(":")[1].replace(",", ""))
    flat.unlink()


def iops_part(a: Server, work: Path, image: Path, args, results: Results) -> None:
    """A device's 4 KiB random reads on a: idle, and while b pulls a base
    (uncapped, then capped at 100 MB/s), idle and busy alternating."""
    hot = work / "hot.raw"
    make_random_image(hot, 1024)
    a.cli("vdisk", "import", "hot", str(hot), "--mode", "private")
    a.cli("device", "add", "dev1", "--vdisk", "hot")
    uri = f"nbd://127.0.0.1:{a.nbd_port}/dev1"
    hot_copy = a.data / "store" / "hot" / "base.raw"
    copies = 0
    for _ in range(args.rounds):
        for label, rate in (("uncapped", "none"), ("100MB/s", "100MB/s")):
            copies += 1
            name = f"c{copies}"
            a.cli("store", "set", "default", "--servers", "a", "--max-rate", rate)
            a.cli("vdisk", "import", name, str(image), "--mode", "standard")
            warm(hot_copy)  # the device's working set is hot, as on a busy server
            results.add("iops idle", fio_iops(uri, args.iops_runtime))
            a.cli("store", "set", "default", "--servers", "all")
            time.sleep(2)  # the copy is under way
            results.add(f"iops during copy {label}", fio_iops(uri, args.iops_runtime))
            idle, busy = (
                results.rounds["iops idle"][-1],
                results.rounds[f"iops during copy {label}"][-1],
            )
            results.add(f"iops ratio {label}", busy / idle)
            a.cli("store", "set", "default", "--servers", "all", "--max-rate", "none")
            a.cli("replication", "wait", name, "--interval", "0.2")
            a.cli("vdisk", "delete", name)


class Results(dict[str, float]):
    """The figures, each printed as it is measured (a later failure keeps
    them); `add` keeps every round's figure and the key's value is their
    median."""

    def __init__(self) -> None:
        super().__init__()
        self.rounds: dict[str, list[float]] = {}

    def __setitem__(self, key: str, value: float) -> None:
        super().__setitem__(key, value)
        print(f"{key}: {value:.3f}", flush=True)

    def add(self, key: str, value: float) -> None:
        self.rounds.setdefault(key, []).append(value)
        self[key] = statistics.median(self.rounds[key])


def report(r: Results, size: int) -> None:
    print(json.dumps({"median": r, "rounds": r.rounds}, indent=1))
    mib = size / MIB
    if "base vdfarm s" in r:
        print(f"\nbase {mib:.0f} MiB: vdfarm {mib / r['base vdfarm s']:.0f} MiB/s, rsync --whole-file "
              f"{mib / r['base rsync s']:.0f} MiB/s, cp+sha256sum {mib / r['base cp+sha256sum s']:.0f} "
              f"MiB/s; vdfarm/rsync {r['base rsync s'] / r['base vdfarm s']:.2f}, "
              f"vdfarm/cp+sha256sum {r['base cp+sha256sum s'] / r['base vdfarm s']:.2f}")  # fmt: skip
        if "base vdfarm copy s" in r:
            print(f"  vdfarm's time: {r['base vdfarm to start s']:.2f} s to start (of which "
                  f"`store set` {r['base vdfarm store set s']:.2f} s), copy "
                  f"{r['base vdfarm copy s']:.2f} s ({mib / r['base vdfarm copy s']:.0f} MiB/s), "
                  f"{r['base vdfarm after s']:.2f} s after")  # fmt: skip
        per_round = [
            f"{rs / vs:.2f}"
            for vs, rs in zip(r.rounds["base vdfarm s"], r.rounds["base rsync s"], strict=True)
        ]
        print(f"  vdfarm/rsync by round: {', '.join(per_round)}")
    if "delta vdfarm bytes" in r:
        print(f"delta 1 %: vdfarm {r['delta vdfarm bytes'] / MIB:.2f} MiB in {r['delta vdfarm s']:.1f} s "
              f"(+ its chunk list: {r['delta vdfarm list bytes']:.0f} bytes; "
              f"delta file {r['delta file bytes'] / MIB:.2f} MiB); rsync {r['delta rsync bytes'] / MIB:.2f} "
              f"MiB sent + {r['delta rsync bytes back']:.0f} bytes back (its checksums) "
              f"in {r['delta rsync s']:.1f} s; bytes vdfarm/rsync (file + list / sent + back) "
              f"{(r['delta vdfarm bytes'] + r['delta vdfarm list bytes']) / (r['delta rsync bytes'] + r['delta rsync bytes back']):.4f}")  # fmt: skip
    if "iops idle" in r:
        print(f"4 KiB random reads on the sender (busy/idle of each round, median): idle "
              f"{r['iops idle']:.0f} IOPS; during an uncapped copy {r['iops ratio uncapped']:.2f}x "
              f"({', '.join(f'{x:.2f}' for x in r.rounds['iops ratio uncapped'])}); capped at "
              f"100 MB/s {r['iops ratio 100MB/s']:.2f}x "
              f"({', '.join(f'{x:.2f}' for x in r.rounds['iops ratio 100MB/s'])})")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
