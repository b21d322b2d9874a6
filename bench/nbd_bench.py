"""Benchmark: vdfarm vs nbdkit vs qemu-nbd serving the same file, in one run.

Job: start each server on loopback in turn, drive it with the same real
clients (fio's nbd engine, nbdcopy), and print figures and ratios (vdfarm /
peer). Machines here are noisy, so only the ratios of one run mean much;
every job runs `--rounds` times, interleaved across servers, and the median
is kept.

Lines:
  randread-4k-qd32   fio nbd engine, 4 KiB random read, iodepth 32   (IOPS)
  seqread-1m-qd8     fio nbd engine, 1 MiB sequential read, iodepth 8 (MiB/s)
  nbdcopy-1g         nbdcopy of the whole image to null:            (MiB/s)
each for a plain export (vdfarm private mode, nbdkit -r file, qemu-nbd -r)
and a copy-on-write export (vdfarm standard mode with its write cache,
nbdkit --filter=cow, qemu-nbd --snapshot).

Usage: .venv/bin/python bench/nbd_bench.py [--size-mib 1024] [--runtime 8] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VDFARM = [sys.executable, "-m", "vdfarm"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"port {port} never opened")


def make_image(path: Path, size_mib: int) -> None:
    """Random (incompressible, fully allocated) content."""
    with open(path, "wb") as f:
        chunk = os.urandom(1 << 20)
        for i in range(size_mib):
            f.write(chunk[i % 7 :] + chunk[: i % 7])


class Server:
    """One server under test: a command line and the URIs it serves."""

    def __init__(
        self, name: str, argv: list[str], port: int, plain: str, cow: str, env=None
    ) -> None:
        self.name, self.argv, self.port = name, argv, port
        self.plain_uri = f"nbd://127.0.0.1:{port}/{plain}"
        self.cow_uri = f"nbd://127.0.0.1:{port}/{cow}"
        self.env = env
        self.procs: list[subprocess.Popen] = []

    def start(self) -> None:
        proc = subprocess.Popen(
            self.argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=self.env
        )
        self.procs.append(proc)
        wait_port(self.port, proc)

    def stop(self) -> None:
        for p in self.procs:
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        self.procs.clear()


def fio(uri: str, rw: str, bs: str, depth: int, runtime: int, size: int) -> dict:
    host_port, export = uri[len("nbd://") :].split("/", 1)
    cmd = [
        "fio",
        "--name=bench",
        "--ioengine=nbd",
        f"--uri={uri}",
        f"--rw={rw}",
        f"--bs={bs}",
        f"--iodepth={depth}",
        f"--runtime={runtime}",
        "--time_based",
        f"--size={size}",
        "--output-format=json",
        "--numjobs=1",
    ]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    job = json.loads(out[out.index("{") :])["jobs"][0]["read"]
    return {"iops": job["iops"], "mibps": job["bw_bytes"] / (1 << 20)}


def nbdcopy(uri: str, size: int) -> dict:
    t0 = time.perf_counter()
    subprocess.run(["nbdcopy", uri, "null:"], check=True)
    dt = time.perf_counter() - t0
    return {"mibps": size / (1 << 20) / dt, "seconds": dt}


def setup_vdfarm(work: Path, image: Path, port: int) -> Server:
    data = work / "vdfarm-data"
    env = dict(os.environ, VDFARM_DATA_DIR=str(data))

    def run(*a):
        return subprocess.run(
            VDFARM + list(a),
            check=True,
            env=env,
            stdout=subprocess.DEVNULL,
        )

    run("init")
    run("vdisk", "import", "plain", str(image), "--mode", "private")
    run("vdisk", "import", "golden", str(image), "--mode", "standard")
    run("device", "add", "bench-plain", "--vdisk", "plain")
    run("device", "add", "bench-cow", "--vdisk", "golden")
    argv = VDFARM + ["server", "run", "--nbd-port", str(port), "--grace", "0", "--no-api"]
    return Server("vdfarm", argv, port, "bench-plain", "bench-cow", env=env)


def servers(work: Path, image: Path) -> list[Server]:
    out = [setup_vdfarm(work, image, free_port())]
    p1, p2 = free_port(), free_port()
    out.append(
        _Pair(
            "nbdkit",
            ["nbdkit", "-f", "-r", "-i", "127.0.0.1", "-p", str(p1), "file", str(image)],
            ["nbdkit", "-f", "-i", "127.0.0.1", "-p", str(p2), "--filter=cow", "file", str(image)],
            p1,
            p2,
        )
    )
    p3, p4 = free_port(), free_port()
    out.append(
        _Pair(
            "qemu-nbd",
            [
                "qemu-nbd",
                "-r",
                "-f",
                "raw",
                "-b",
                "127.0.0.1",
                "-p",
                str(p3),
                "--persistent",
                "--shared=16",
                "-x",
                "",
                str(image),
            ],
            [
                "qemu-nbd",
                "-s",
                "-f",
                "raw",
                "-b",
                "127.0.0.1",
                "-p",
                str(p4),
                "--persistent",
                "--shared=16",
                "-x",
                "",
                str(image),
            ],
            p3,
            p4,
        )
    )
    return out


class _Pair(Server):
    """A peer that needs two processes: one plain, one copy-on-write."""

    def __init__(self, name, plain_argv, cow_argv, plain_port, cow_port) -> None:
        super().__init__(name, plain_argv, plain_port, "", "")
        self.cow_argv, self.cow_port = cow_argv, cow_port
        self.cow_uri = f"nbd://127.0.0.1:{cow_port}/"

    def start(self) -> None:
        for argv, port in ((self.argv, self.port), (self.cow_argv, self.cow_port)):
            proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            self.procs.append(proc)
            wait_port(port, proc)


def jobs(size: int, runtime: int):
    return [
        ("randread-4k-qd32", "iops", lambda u: fio(u, "randread", "4k", 32, runtime, size)),
        ("seqread-1m-qd8", "mibps", lambda u: fio(u, "read", "1m", 8, runtime, size)),
        ("nbdcopy-1g", "mibps", lambda u: nbdcopy(u, size)),
    ]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--runtime", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    for tool in ("fio", "nbdkit", "qemu-nbd", "nbdcopy"):
        if shutil.which(tool) is None:
            sys.exit(f"bench: {tool} is not installed (run scripts/install.sh --test)")
    size = args.size_mib << 20
    results: dict[tuple[str, str, str], list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="vdfarm-bench-", dir="/var/tmp") as tmp:
        work = Path(tmp)
        image = work / "image.raw"
        make_image(image, args.size_mib)
        peers = servers(work, image)
        try:
            for srv in peers:  # all up at once; idle ones cost nothing
                srv.start()
            # Interleave finely: the same job on each server back to back, so
            # the machine's noise hits all three alike within a round.
            for rnd in range(args.rounds):
                for name, metric, run in jobs(size, args.runtime):
                    for kind in ("plain", "cow"):
                        for srv in peers:
                            uri = srv.plain_uri if kind == "plain" else srv.cow_uri
                            value = run(uri)[metric]
                            results.setdefault((srv.name, kind, name), []).append(value)
                            print(
                                f"round {rnd + 1} {srv.name:8} {kind:5} {name:18} "
                                f"{value:12.1f} {metric}",
                                flush=True,
                            )
        finally:
            for srv in peers:
                srv.stop()
    report(results, args)
    return 0


def ratio(results, a: tuple, b: tuple) -> float:
    """Median over rounds of a/b measured in the same round."""
    return statistics.median(x / y for x, y in zip(results[a], results[b], strict=True))


def report(results, args) -> None:
    med = {k: statistics.median(v) for k, v in results.items()}
    names = [n for n, _, _ in jobs(0, 0)]
    print()
    print(
        f"{args.rounds} rounds, image {args.size_mib} MiB, fio runtime {args.runtime}s; "
        f"figures are medians, ratios are medians of same-round ratios"
    )
    print(
        f"{'job':18} {'kind':5} {'vdfarm':>10} {'nbdkit':>10} {'qemu-nbd':>10} "
        f"{'vs nbdkit':>9} {'vs qemu':>8}"
    )
    for kind in ("plain", "cow"):
        for name in names:
            v, k, q = (med[(s, kind, name)] for s in ("vdfarm", "nbdkit", "qemu-nbd"))
            rk = ratio(results, ("vdfarm", kind, name), ("nbdkit", kind, name))
            rq = ratio(results, ("vdfarm", kind, name), ("qemu-nbd", kind, name))
            print(f"{name:18} {kind:5} {v:10.0f} {k:10.0f} {q:10.0f} {rk:9.2f} {rq:8.2f}")
    print()
    for name in names:
        r = ratio(results, ("vdfarm", "cow", name), ("vdfarm", "plain", name))
        print(f"vdfarm write-cache path / plain path, {name}: {r:.2f}")
    if args.json:
        args.json.write_text(json.dumps({"|".join(k): v for k, v in results.items()}, indent=1))


if __name__ == "__main__":
    sys.exit(main())
