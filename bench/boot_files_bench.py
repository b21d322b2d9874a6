"""Benchmark: GET /boot/files/… of a real `vdfarm server run` against
lighttpd serving the same file, on loopback.

Job: one vDisk whose version 0 has an initramfs of SIZE MiB (random
bytes: nothing compresses on the way), served by vdfarm at
/boot/files/bench/0/initrd and by lighttpd (Debian's, default static
file serving) from a copy of the file. curl downloads it: one client,
DOWNLOADS times in a row (keep-alive: one curl with every URL), and
CLIENTS curl processes at once, DOWNLOADS each. Rounds alternate between
the servers; the best round of each is kept (the machine is shared).
Prints MiB/s of each and vdfarm / lighttpd, and the CPU time each server
process spent per GiB sent (steadier than MiB/s on a shared machine).
Target (issue 12): vdfarm at least 0.8 x the static file server.

Usage: .venv/bin/python bench/boot_files_bench.py [--size-mib 32]
       [--downloads 10] [--clients 4] [--rounds 3]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

VDFARM = [sys.executable, "-m", "vdfarm"]
MIB = 1 << 20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process PID so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def running(argv: list[str], port: int, log: Path) -> Iterator[int]:
    with open(log, "ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=out)
    try:
        wait_port(port)
        yield proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def vdfarm_server(work: Path, initrd: Path) -> tuple[list[str], int]:
    data = work / "data"
    cli = [*VDFARM, "--data-dir", str(data)]
    image = work / "disk.raw"
    with open(image, "wb") as fh:
        fh.truncate(16 * MIB)
    kernel = work / "vmlinuz"
    kernel.write_bytes(os.urandom(MIB))
    for args in (
        ["init"],
        ["vdisk", "import", "bench", str(image)],
        ["vdisk", "boot", "bench", "--kernel", str(kernel), "--initrd", str(initrd)],
    ):
        subprocess.run(cli + args, check=True, capture_output=True)
    port = free_port()
    argv = cli + ["server", "run", "--nbd-port", str(free_port()), "--api-port", str(port)]
    # every curl comes from 127.0.0.1: the per-source boot rate limit would
    # time the limiter, not the server (lighttpd has none)
    argv += ["--no-replication", "--boot-rate", "100000", "--boot-burst", "100000"]
    return argv, port


def lighttpd_server(work: Path, initrd: Path) -> tuple[list[str], int]:
    www = work / "www"
    www.mkdir()
    shutil.copyfile(initrd, www / "initrd")
    port = free_port()
    conf = work / "lighttpd.conf"
    conf.write_text(
        f'server.document-root = "{www}"\nserver.bind = "127.0.0.1"\n'
        f"server.port = {port}\n"
        f'server.errorlog = "{work / "lighttpd.err"}"\n'
        'mimetype.assign = ("" => "application/octet-stream")\n'
    )
    return ["lighttpd", "-D", "-f", str(conf)], port


def download(url: str, downloads: int, clients: int) -> float:
    """Seconds for CLIENTS curls to fetch URL DOWNLOADS times each, at once."""
    argv = ["curl", "-sf", "--max-time", "600"]
    for _ in range(downloads):
        argv += ["-o", "/dev/null", url]
    start = time.perf_counter()
    procs = [subprocess.Popen(argv) for _ in range(clients)]
    for proc in procs:
        if proc.wait() != 0:
            raise RuntimeError(f"curl failed on {url}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=32)
    parser.add_argument("--downloads", type=int, default=10)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    for tool in ("lighttpd", "curl"):
        if shutil.which(tool) is None:
            sys.exit(f"missing {tool} (apt-get install {tool})")
    with tempfile.TemporaryDirectory(prefix="vdfarm-bootbench-") as tmp:
        work = Path(tmp)
        initrd = work / "initrd.gz"
        initrd.write_bytes(os.urandom(args.size_mib * MIB))
        servers = {
            "vdfarm": (*vdfarm_server(work, initrd), "/boot/files/bench/0/initrd"),
            "lighttpd": (*lighttpd_server(work, initrd), "/initrd"),
        }
        best: dict[tuple[str, int], float] = {}
        cpu: dict[str, float] = {}  # least CPU seconds per GiB sent
        for _ in range(args.rounds):
            for name, (argv, port, path) in servers.items():
                url = f"http://127.0.0.1:{port}{path}"
                with running(argv, port, work / f"{name}.log") as pid:
                    download(url, 1, 1)  # warm: page cache, first request
                    for clients in (1, args.clients):
                        before = cpu_seconds(pid)
                        seconds = download(url, args.downloads, clients)
                        sent_mib = clients * args.downloads * args.size_mib
                        per_gib = (cpu_seconds(pid) - before) * 1024 / sent_mib
                        cpu[name] = min(cpu.get(name, per_gib), per_gib)
                        rate = sent_mib / seconds
                        best[(name, clients)] = max(best.get((name, clients), 0.0), rate)
        print(
            f"{args.size_mib} MiB file, {args.downloads} downloads per client, best of {args.rounds}"
        )
        for clients in (1, args.clients):
            ours, theirs = best[("vdfarm", clients)], best[("lighttpd", clients)]
            print(
                f"{clients} client(s): vdfarm {ours:8.0f} MiB/s   lighttpd {theirs:8.0f} MiB/s   "
                f"ratio {ours / theirs:.2f}"
            )
        print(f"CPU per GiB sent: vdfarm {cpu['vdfarm']:.2f} s   lighttpd {cpu['lighttpd']:.2f} s")


if __name__ == "__main__":
    main()
