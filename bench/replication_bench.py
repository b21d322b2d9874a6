"""Benchmark: replication between two vdfarm servers vs rsync and cp, in one run.

Job: two real `vdfarm server run` processes (a, b) on loopback sharing one
PostgreSQL database (a throw-away one on 127.0.0.1:5432), and the peers on
the same files, page cache dropped before each copy:

  base        a 4 GiB base (random bytes) imported on a, pulled by b (from
              `store set --servers all` to `replication wait` returning)
              vs `rsync --whole-file` to an rsync daemon on loopback
              vs `cp` + `sha256sum` of the copy.
  delta       a version that changes 1 % of the image (41 MiB in 1 MiB
              writes spread over the disk, qemu-io on the open version),
              promoted on a, pulled by b: bytes a sent (its
              /replication/sent) and wall time, vs rsync's delta mode
              (`--inplace --no-whole-file`) of the flattened images to the
              daemon holding the flattened base (bytes from `--stats`).
  iops        a device on a reads 4 KiB at random (fio's nbd engine, QD32)
              over a hot 1 GiB vDisk (read whole first, as a busy server's
              working set is): idle, while b pulls a 4 GiB base with no
              cap, and with `--max-rate 100MB/s` (the copies' source pages
              are not in the cache).

Figures are times and rates of one run; the ratios are what to read.

Usage: .venv/bin/python bench/replication_bench.py [--size-mib 4096] [--iops-runtime 5]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import socket
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

    def sent(self, key: str) -> int:
        import httpx

        token = (self.data / "api-token").read_text().strip()
        response = httpx.get(
            f"http://127.0.0.1:{self.api_port}/api/v1/replication/sent",
            headers={"Authorization": f"Bearer {token}"},
        )
        response.raise_for_status()
        return int(response.json().get(key, 0))


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


def replicate(a: Server, b: Server, vdisk: str, version: int) -> float:
    """Let b's store take VDISK, time until VERSION is present on b."""
    t0 = time.perf_counter()
    a.cli("store", "set", "default", "--servers", "all")
    a.cli("replication", "wait", vdisk, "--version", str(version), "--interval", "0.2")
    return time.perf_counter() - t0


def spread_writes(path: Path, size_mib: int, count: int) -> None:
    """COUNT writes of 1 MiB at random places of the qcow2 file at PATH."""
    rng = random.Random(1)
    offsets = sorted(rng.sample(range(size_mib), count))
    commands: list[str] = []
    for off in offsets:
        commands += ["-c", f"write -P {off % 250 + 1} {off}M 1M"]
    subprocess.run(["qemu-io", "-f", "qcow2", *commands, str(path)], check=True,
                   capture_output=True)  # fmt: skip


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
    args = ap.parse_args()
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
            # -- base ------------------------------------------------------
            a.cli("vdisk", "import", "big", str(image), "--mode", "standard")
            drop_caches()
            results["base vdfarm s"] = replicate(a, b, "big", 0)
            rsync_root = work / "rsync"
            rsync_root.mkdir()
            with rsync_daemon(rsync_root) as url:
                drop_caches()
                results["base rsync s"] = timed(["rsync", "--whole-file", str(image), url])
                drop_caches()
                copy = work / "copy.raw"
                results["base cp+sha256sum s"] = timed(["cp", str(image), str(copy)]) + timed(
                    ["sha256sum", str(copy)]
                )
                copy.unlink()

                # -- delta -------------------------------------------------
                a.cli("store", "set", "default", "--servers", "a")
                a.cli("version", "new", "big")
                rows = json.loads(a.cli("--json", "version", "list", "big"))
                top = a.data / "store" / "big" / rows[-1]["file"]
                spread_writes(top, args.size_mib, max(1, args.size_mib // 100))
                a.cli("version", "promote", "big", "--to", "test")
                key = f"big/{top.name}"
                sent_before = a.sent(key)
                drop_caches()
                results["delta vdfarm s"] = replicate(a, b, "big", rows[-1]["number"])
                results["delta vdfarm bytes"] = a.sent(key) - sent_before
                results["delta file bytes"] = top.stat().st_size
                flat = work / "flat.raw"
                subprocess.run(["qemu-img", "convert", "-O", "raw", str(top), str(flat)],
                               check=True)  # fmt: skip
                drop_caches()
                t0 = time.perf_counter()
                stats = subprocess.run(
                    ["rsync", "--inplace", "--no-whole-file", "--stats", str(flat),
                     f"{url}image.raw"],
                    check=True, capture_output=True, text=True,
                ).stdout  # fmt: skip
                results["delta rsync s"] = time.perf_counter() - t0
                sent_line = next(x for x in stats.splitlines() if x.startswith("Total bytes sent"))
                results["delta rsync bytes"] = int(sent_line.split(":")[1].replace(",", ""))
                flat.unlink()

            # -- iops on the sending server ---------------------------------
            hot = work / "hot.raw"
            make_random_image(hot, 1024)
            a.cli("vdisk", "import", "hot", str(hot), "--mode", "private")
            a.cli("device", "add", "dev1", "--vdisk", "hot")
            uri = f"nbd://127.0.0.1:{a.nbd_port}/dev1"
            hot_copy = a.data / "store" / "hot" / "base.raw"
            warm(hot_copy)  # the device's working set is hot, as on a busy server
            results["iops idle"] = fio_iops(uri, args.iops_runtime)
            for label, rate, name in (("uncapped", "none", "c1"), ("100MB/s", "100MB/s", "c2")):
                a.cli("store", "set", "default", "--servers", "a", "--max-rate", rate)
                a.cli("vdisk", "import", name, str(image), "--mode", "standard")
                warm(hot_copy)  # the import read 4 GiB through the cache: warm again
                a.cli("store", "set", "default", "--servers", "all")
                time.sleep(2)  # the copy is under way
                results[f"iops during copy {label}"] = fio_iops(uri, args.iops_runtime)
                a.cli("replication", "wait", name, "--interval", "0.2")
        finally:
            a.stop()
            b.stop()
    report(results, size)
    return 0


class Results(dict[str, float]):
    """The figures, each printed as it is measured (a later failure keeps them)."""

    def __setitem__(self, key: str, value: float) -> None:
        super().__setitem__(key, value)
        print(f"{key}: {value:.3f}", flush=True)


def report(r: dict[str, float], size: int) -> None:
    print(json.dumps(r, indent=1))
    mib = size / MIB
    print(f"\nbase {mib:.0f} MiB: vdfarm {mib / r['base vdfarm s']:.0f} MiB/s, rsync --whole-file "
          f"{mib / r['base rsync s']:.0f} MiB/s, cp+sha256sum {mib / r['base cp+sha256sum s']:.0f} "
          f"MiB/s; vdfarm/rsync {r['base rsync s'] / r['base vdfarm s']:.2f}, "
          f"vdfarm/cp+sha256sum {r['base cp+sha256sum s'] / r['base vdfarm s']:.2f}")  # fmt: skip
    print(f"delta 1 %: vdfarm {r['delta vdfarm bytes'] / MIB:.1f} MiB in {r['delta vdfarm s']:.1f} s "
          f"(delta file {r['delta file bytes'] / MIB:.1f} MiB); rsync {r['delta rsync bytes'] / MIB:.1f} "
          f"MiB in {r['delta rsync s']:.1f} s")  # fmt: skip
    idle = r["iops idle"]
    print(f"4 KiB random reads on the sender: idle {idle:.0f} IOPS; during an uncapped copy "
          f"{r['iops during copy uncapped'] / idle:.2f}x; capped at 100 MB/s "
          f"{r['iops during copy 100MB/s'] / idle:.2f}x")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
