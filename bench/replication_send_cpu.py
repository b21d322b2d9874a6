"""Benchmark: what a replica copy costs the sending server's CPU, per thread.

Job: one real `vdfarm server run` (SQLite, loopback) holds a vDisk of
random bytes; a receiver (this script, in a child process: `fetch_file`
into a scratch directory, no database) pulls it whole over the replication
routes with a `replica` token. The sender's CPU time is read per thread
from /proc before and after (the event loop's thread is the process's
main thread; the others are the API's worker threads and the copy's), and
printed as CPU seconds per GiB sent. With --fio, a device on the same
server reads 4 KiB at random (fio's nbd engine, QD32) over a hot vDisk,
idle first and then while the copy runs, and the ratio is printed.

Figures of one run on a loaded machine are noisy: compare two builds in
the same hour, or read the per-thread split (where the CPU goes).

Usage: .venv/bin/python bench/replication_send_cpu.py [--size-mib 1024]
       [--max-rate BYTES_PER_S] [--fio] [--fio-runtime 5] [--rounds 1]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from replication_bench import MIB, free_port, make_random_image, wait_port, warm  # noqa: E402

VDFARM = [sys.executable, "-m", "vdfarm"]
CLK_TCK = os.sysconf("SC_CLK_TCK")


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds of each living thread of PID, summed by thread name
    ('main' for the process's first thread), and of the whole process
    ('process', with the threads that ended)."""
    found: dict[str, float] = defaultdict(float)
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    found["process"] = (int(fields[11]) + int(fields[12])) / CLK_TCK
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            stat = (task / "stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            name = "main" if task.name == str(pid) else (task / "comm").read_text().strip()
            found[name + " user"] += int(fields[11]) / CLK_TCK
            found[name + " sys"] += int(fields[12]) / CLK_TCK
    return found


def cli(data: Path, *args: str) -> str:
    done = subprocess.run(VDFARM + ["--data-dir", str(data), *args], capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"bench: vdfarm {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout


RECEIVER = """
import json, sys, time
from pathlib import Path
from vdfarm.replication.fetch import FileWant, PeerAddress, fetch_file
from vdfarm.replication.throttle import Throttle
from vdfarm.store.receive import Partial
writer = [0.0]
write_chunk = Partial.write_chunk
def timed_write(self, index, data):
    t = time.thread_time()
    try:
        return write_chunk(self, index, data)
    finally:
        writer[0] += time.thread_time() - t
Partial.write_chunk = timed_write
want, url, token, target, rate = json.loads(sys.argv[1])
t0, c0, m0 = time.perf_counter(), time.process_time(), time.thread_time()
out = fetch_file(FileWant(*want), Path(target), [PeerAddress("a", url)], token,
                 throttle=Throttle(rate), may_run=lambda: True, progress=lambda p: None)
print(json.dumps({"published": out.published, "failures": out.failures,
                  "bytes": out.bytes_received, "wall": time.perf_counter() - t0,
                  "cpu": time.process_time() - c0, "main": time.thread_time() - m0,
                  "writer": writer[0]}))
"""


def fio_iops(uri: str, runtime: int) -> float:
    proc = subprocess.run(
        ["fio", "--name=dev", "--ioengine=nbd", f"--uri={uri}", "--rw=randread", "--bs=4k",
         "--iodepth=32", f"--runtime={runtime}", "--time_based", "--size=256M",
         "--output-format=json", "--numjobs=1"],
        capture_output=True, text=True,
    )  # fmt: skip
    if proc.returncode != 0:
        sys.exit(f"bench: fio failed: {proc.stderr[-300:]}")
    out = proc.stdout
    return float(json.loads(out[out.index("{") :])["jobs"][0]["read"]["iops"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--max-rate", type=int, default=None)
    ap.add_argument("--fio", action="store_true")
    ap.add_argument("--fio-runtime", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--receiver-nice", type=int, default=0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="vdfarm-send-cpu-", dir="/var/tmp") as tmp:
        work = Path(tmp)
        data = work / "a"
        cli(data, "init", "--name", "a")
        image = work / "image.raw"
        make_random_image(image, args.size_mib)
        cli(data, "vdisk", "import", "big", str(image), "--mode", "standard")
        image.unlink()
        token = cli(data, "token", "add", "bench", "--role", "replica").strip().splitlines()[-1]
        row = json.loads(cli(data, "--json", "version", "list", "big"))[0]
        want = ["big", row["file"], row["size"], row["sha256"]]
        if args.fio:
            hot = work / "hot.raw"
            make_random_image(hot, 256)
            cli(data, "vdisk", "import", "hot", str(hot), "--mode", "private")
            cli(data, "device", "add", "dev1", "--vdisk", "hot")
        nbd_port, api_port = free_port(), free_port()
        with open(work / "a.log", "ab") as log:
            server = subprocess.Popen(
                VDFARM + ["--data-dir", str(data), "server", "run", "--nbd-port", str(nbd_port),
                          "--api-port", str(api_port)],
                stdout=log, stderr=log,
            )  # fmt: skip
        try:
            wait_port(api_port, server)
            wait_port(nbd_port, server)
            time.sleep(3)  # the first rounds (chunk lists warmed) are done
            uri = f"nbd://127.0.0.1:{nbd_port}/dev1"
            for _ in range(args.rounds):
                if args.fio:
                    warm(data / "store" / "hot" / "base.raw")
                    idle = fio_iops(uri, args.fio_runtime)
                target = work / "b" / "big"
                target.parent.mkdir(exist_ok=True)
                with contextlib.suppress(FileNotFoundError):
                    (target / row["file"]).unlink()
                before = thread_cpu(server.pid)
                receiver = subprocess.Popen(
                    [*(["nice", "-n", str(args.receiver_nice)] if args.receiver_nice else []),
                     sys.executable, "-c", RECEIVER,
                     json.dumps([want, f"http://127.0.0.1:{api_port}", token, str(target),
                                 args.max_rate])],
                    stdout=subprocess.PIPE, text=True,
                )  # fmt: skip
                busy = None
                if args.fio:
                    time.sleep(1)
                    busy = fio_iops(uri, args.fio_runtime)
                out, _ = receiver.communicate()
                after = thread_cpu(server.pid)
                got = json.loads(out)
                gib = got["bytes"] / (1024 * MIB)
                spent = {k: after[k] - before.get(k, 0.0) for k in after}
                total = spent.pop("process")
                print(
                    f"sent {got['bytes'] / MIB:.0f} MiB in {got['wall']:.2f} s "
                    f"({got['bytes'] / MIB / got['wall']:.0f} MiB/s), published={got['published']}"
                    f" {got['failures'] or ''}"
                )
                print(
                    f"  sender CPU {total / gib:.3f} s/GiB; receiver CPU {got['cpu'] / gib:.3f} "
                    f"s/GiB (its main thread {got['main'] / gib:.3f}, writing chunks "
                    f"{got['writer'] / gib:.3f})"
                )
                idle_before = thread_cpu(server.pid)
                time.sleep(got["wall"])
                idle_spent = thread_cpu(server.pid)["process"] - idle_before["process"]
                print(
                    f"  the sender idle for as long: {idle_spent / gib:.3f} s/GiB "
                    f"(its rounds; the copy's own: {(total - idle_spent) / gib:.3f} s/GiB)"
                )
                print("  the sender's living threads:")
                for name, sec in sorted(spent.items(), key=lambda kv: -kv[1]):
                    if sec > 0:
                        print(f"    {name:<16} {sec / gib:.3f} s/GiB")
                if busy is not None:
                    print(f"  fio 4k QD32: idle {idle:.0f}, during the copy {busy:.0f} IOPS "
                          f"({busy / idle:.2f}x)")  # fmt: skip
        finally:
            server.terminate()
            server.wait(30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
