"""Benchmark: the device agent (`vdfarm agent`) vs straight to the server, in one run.

Job: a farm of three `vdfarm server run` processes on one throw-away
PostgreSQL database (every store holds the vDisks), then, each part in turn:

  startup     `vdfarm agent` with a 0-byte device cache, started N times:
              time from the exec to its listening socket (login, NBD
              handshake, listen included), and its RSS then; the RSS of the
              agent that served the fio jobs, after them (now and peak).
  fio         fio's nbd engine through the agent (its unix socket) and
              straight to the server the agent streams from (TCP), same
              device, jobs interleaved: 4 KiB random read QD32 (IOPS),
              1 MiB sequential read QD8 (MiB/s). Target: agent >= 0.8x direct.
  boot        a VM (qemu, TCG) boots the sample image through the agent vs
              with qemu's own NBD client straight to the server, rounds
              interleaved; time from qemu's start to the guest's first
              marker line (VDFARM-BOOT-OK: kernel and /init run) and to its
              last (VDFARM-DONE: its disk checks done). Target: <= 1.1x.
  failover    fio reads through the agent without a stop while the server it
              streams from is SIGKILLed (then restarted) KILLS times and
              SIGSTOPped (then resumed) HANGS times: the pause of each
              failover as the agent measured it (from the oldest request
              that waited to the first answer after it), median and worst,
              and fio's longest read. Targets: median < 1 s for kills,
              < io-timeout + 0.5 s for hangs.
  move        a move order (rebalance) under the same reads, MOVES times:
              the switch time the agent recorded and fio's longest read.

Machines here are noisy and everything shares two cores (clients, agent,
servers), so the same-run ratios are the result, not the absolute figures.
While it runs, /tmp/bench-quiet exists (other work on the machine holds
back); it is removed at the end, also on failure.

Usage: .venv/bin/python bench/agent_bench.py [--size-mib 512] [--runtime 8]
       [--rounds 3] [--boots 3] [--kills 20] [--hangs 10] [--moves 5]
       [--only startup,fio,boot,failover,move]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from nbd_bench import fio, free_port, make_image, wait_port

ADMIN_URL = "postgresql+psycopg://root@127.0.0.1:5432/test"
VDFARM = [sys.executable, "-m", "vdfarm"]
QUIET_FLAG = Path("/tmp/bench-quiet")
PARTS = ("startup", "fio", "boot", "failover", "move")


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


def wait_until(check, what: str, timeout: float = 60.0, step: float = 0.02):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise RuntimeError(f"bench: timed out waiting for {what}")
        time.sleep(step)


class FarmServer:
    def __init__(self, work: Path, name: str, db: str) -> None:
        self.name, self.db = name, db
        self.data = work / name
        self.log = work / f"{name}.log"
        self.nbd_port, self.api_port = free_port(), free_port()
        self.proc: subprocess.Popen | None = None

    def cli(self, *args: str) -> str:
        argv = VDFARM + ["--data-dir", str(self.data), "--db", self.db, *args]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            raise RuntimeError(f"bench: vdfarm {' '.join(args)} failed: {done.stderr.strip()}")
        return done.stdout

    def start(self) -> None:
        with open(self.log, "ab") as log:  # the child keeps its own copy
            self.proc = subprocess.Popen(
                VDFARM
                + ["--data-dir", str(self.data), "--db", self.db, "server", "run"]
                + ["--nbd-port", str(self.nbd_port), "--api-port", str(self.api_port)],
                stdout=log,
                stderr=log,
            )
        wait_port(self.nbd_port, self.proc, timeout=60)
        wait_port(self.api_port, self.proc, timeout=60)

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)
        if sig == signal.SIGKILL:
            self.proc.wait(30)
            self.proc = None

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGCONT)
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None


class Farm:
    """Three servers on one database; vDisks imported on the first and copied
    into the others' stores."""

    def __init__(self, work: Path, db: str, names=("s1", "s2", "s3")) -> None:
        self.work = work
        self.servers = {name: FarmServer(work, name, db) for name in names}
        self.first = self.servers[names[0]]

    def init(self) -> None:
        for server in self.servers.values():
            server.cli("init", "--name", server.name)

    def add_vdisk(self, name: str, image: Path, devices: list[str]) -> None:
        self.first.cli("vdisk", "import", name, str(image), "--write-cache", "device-ram")
        for device in devices:
            self.first.cli("device", "add", device, "--vdisk", name)
        source = self.first.data / "store" / name
        for server in self.servers.values():
            if server is not self.first:
                shutil.copytree(source, server.data / "store" / name)

    def start(self) -> None:
        for server in self.servers.values():
            server.start()

    def stop(self) -> None:
        for server in self.servers.values():
            server.stop()

    @property
    def urls(self) -> str:
        return ",".join(f"http://127.0.0.1:{s.api_port}" for s in self.servers.values())


class Agent:
    """One `vdfarm agent` process for DEVICE."""

    def __init__(self, farm: Farm, device: str, *extra: str, cache_mib: int = 0) -> None:
        self.device = device
        self.sock = farm.work / "run" / f"{device}.sock"
        self.log = farm.work / f"agent-{device}.log"
        self.status_file = self.sock.with_name(self.sock.name + ".status.json")
        for stale in (self.sock, self.status_file):  # an earlier agent's (of the same device)
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()
        argv = VDFARM + ["agent", "--farm", farm.urls, "--device", device]
        argv += ["--listen", f"unix:{self.sock}", "--cache-size", str(cache_mib), *extra]
        with open(self.log, "ab") as log:
            self.started = time.perf_counter()
            self.proc = subprocess.Popen(argv, stdout=log, stderr=log)
        wait_until(self._listening, f"agent {device} to listen", timeout=60, step=0.001)
        self.listening_after = time.perf_counter() - self.started

    def _listening(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"bench: the agent exited: {self.log.read_text()[-2000:]}")
        return self.sock.exists()

    @property
    def uri(self) -> str:
        return f"nbd+unix:///{self.device}?socket={self.sock}"

    def status(self) -> dict:
        for _ in range(500):  # replaced atomically; absent only before the first write
            with contextlib.suppress(FileNotFoundError, ValueError):
                return json.loads(self.status_file.read_text())
            time.sleep(0.02)
        raise RuntimeError("bench: no agent status")

    def memory_kib(self) -> dict[str, int]:
        fields = {}
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0])
        return fields

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


# -- parts ----------------------------------------------------------------


def part_startup(farm: Farm, starts: int) -> dict:
    times, rss = [], []
    for _ in range(starts):
        agent = Agent(farm, "fio1")
        times.append(agent.listening_after)
        rss.append(agent.memory_kib()["VmRSS"])
        agent.stop()
    return {"listen_s": times, "rss_kib": rss}


def part_fio(farm: Farm, rounds: int, runtime: int, size: int) -> tuple[dict, dict]:
    agent = Agent(farm, "fio1")
    try:
        server = farm.servers[agent.status()["server"]]
        direct = f"nbd://127.0.0.1:{server.nbd_port}/fio1"
        jobs = {
            "randread-4k-qd32": ("randread", "4k", 32, "iops"),
            "seqread-1m-qd8": ("read", "1m", 8, "mibps"),
        }
        results: dict[str, dict[str, list[float]]] = {
            job: {"direct": [], "agent": [], "ratio": []} for job in jobs
        }
        for round_no in range(rounds):
            for job, (rw, bs, depth, key) in jobs.items():
                d = fio(direct, rw, bs, depth, runtime, size)[key]
                a = fio(agent.uri, rw, bs, depth, runtime, size)[key]
                results[job]["direct"].append(d)
                results[job]["agent"].append(a)
                results[job]["ratio"].append(a / d)
                print(f"  round {round_no + 1} {job}: direct {d:.0f}, agent {a:.0f}, {a / d:.2f}x")
        memory = agent.memory_kib()
    finally:
        agent.stop()
    return results, memory


def boot_once(url: str, serial_id: str) -> tuple[float, float]:
    """(seconds to VDFARM-BOOT-OK, seconds to VDFARM-DONE) of one boot."""
    from vdfarm.image import vm

    t0 = time.perf_counter()
    handle = vm.start(url, serial_id)
    try:
        booted = done = None
        deadline = time.monotonic() + 300
        while done is None:
            text = handle.serial_text()
            now = time.perf_counter() - t0
            if booted is None and "VDFARM-BOOT-OK" in text:
                booted = now
            if "VDFARM-DONE" in text:
                done = now
            if "VDFARM-ERROR" in text or time.monotonic() > deadline:
                raise RuntimeError(f"bench: the VM failed: {text[-2000:]}")
            if not handle.running() and done is None and "VDFARM-DONE" not in text:
                raise RuntimeError(f"bench: the VM stopped: {text[-2000:]}")
            time.sleep(0.01)
        fields = vm.parse_serial(handle.serial_text())
        if fields.readback != "ok":
            raise RuntimeError("bench: the guest's read-back failed")
        assert booted is not None
        return booted, done
    finally:
        handle.close()


def part_boot(farm: Farm, boots: int) -> dict:
    out: dict[str, list[float]] = {k: [] for k in ("direct", "agent", "direct_done", "agent_done")}
    for n in range(boots):
        agent = Agent(farm, "vm1", cache_mib=64)  # a fresh agent (an empty cache) per boot
        try:
            server = farm.servers[agent.status()["server"]]
            a_boot, a_done = boot_once(agent.uri, f"agent{n}")
        finally:
            agent.stop()
        time.sleep(0.5)  # the server ends the agent's session
        d_boot, d_done = boot_once(f"nbd://127.0.0.1:{server.nbd_port}/vm1", f"direct{n}")
        out["direct"].append(d_boot)
        out["agent"].append(a_boot)
        out["direct_done"].append(d_done)
        out["agent_done"].append(a_done)
        print(
            f"  boot {n + 1}: marker direct {d_boot:.2f} s, agent {a_boot:.2f} s; "
            f"done direct {d_done:.2f} s, agent {a_done:.2f} s"
        )
        time.sleep(0.5)
    return out


class Reader:
    """fio reading through the agent until stopped; an I/O error ends it early.
    With LAT_LOG, every read's completion time and latency are logged."""

    def __init__(self, uri: str, size: int, work: Path, lat_log: bool = False) -> None:
        name = f"reader-{uuid.uuid4().hex[:6]}"
        self.out = work / f"{name}.json"
        self.lat_prefix = work / name if lat_log else None
        logs = [f"--write_lat_log={self.lat_prefix}"] if lat_log else []
        self.proc = subprocess.Popen(
            [
                "fio",
                "--name=reader",
                "--ioengine=nbd",
                f"--uri={uri}",
                "--rw=randread",
                "--bs=64k",
                "--iodepth=4",
                "--time_based",
                "--runtime=3600",
                f"--size={size}",
                "--output-format=json",
                f"--output={self.out}",
                *logs,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )

    def check(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"bench: fio stopped (an I/O error?): {self.proc.stderr.read()}")

    def stop(self) -> dict:
        """fio's read figures; raises if it had stopped on its own."""
        self.check()
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(60)
        text = self.out.read_text()
        job = json.loads(text[text.index("{") :])["jobs"][0]
        if job.get("error"):
            raise RuntimeError(f"bench: fio reported error {job['error']}")
        read = job["read"]
        out = {"ios": read["total_ios"], "max_lat_ms": read["lat_ns"]["max"] / 1e6}
        if self.lat_prefix is not None:
            log = Path(f"{self.lat_prefix}_lat.1.log")
            reads = [
                (int(t), int(lat) / 1e6)
                for t, lat, *_ in (line.split(",") for line in log.read_text().splitlines())
            ]
            end_ms = json.loads(text[text.index("{") :])["timestamp_ms"]
            start_ms = end_ms - max(t for t, _ in reads)  # fio's time 0, as wall time
            out["reads"] = [(start_ms + t, lat) for t, lat in reads]  # (done at, ms)
        return out


def epoch_ms(iso: str) -> float:
    """Wall time in ms of the agent's ISO 8601 UTC time stamps."""
    from datetime import datetime

    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000


def slowest_near(reads: list[tuple[float, float]], at_ms: float, window_ms: float) -> float:
    """The longest read that completed within WINDOW_MS of AT_MS."""
    return max((lat for done, lat in reads if abs(done - at_ms) <= window_ms), default=0.0)


def part_failover(farm: Farm, kills: int, hangs: int, size: int) -> dict:
    agent = Agent(farm, "fo1")  # default --io-timeout 1
    reader = Reader(agent.uri, size, farm.work)
    pauses: dict[str, list[int]] = {"kill": [], "hang": []}
    try:
        time.sleep(1)
        for kind, count in (("kill", kills), ("hang", hangs)):
            for n in range(count):
                status = agent.status()
                before, serving = len(status["failovers"]), farm.servers[status["server"]]
                serving.signal(signal.SIGKILL if kind == "kill" else signal.SIGSTOP)

                def settled(before=before):
                    shown = agent.status()["failovers"]
                    return len(shown) > before and shown[-1]["pause_ms"] is not None and shown

                record = wait_until(settled, f"the failover after {kind} {n + 1}")[-1]
                pauses[kind].append(record["pause_ms"])
                print(
                    f"  {kind} {n + 1}: {record['from_server']} -> {record['to_server']}, "
                    f"pause {record['pause_ms']} ms, {record['retried']} sent again"
                )
                reader.check()
                if kind == "kill":
                    serving.start()
                else:
                    serving.signal(signal.SIGCONT)
                time.sleep(1.0)  # reads go on; the server is back before the next event
        reads = reader.stop()
    finally:
        if reader.proc.poll() is None:
            reader.proc.kill()
        agent.stop()
    return {**pauses, "reader": reads}


def part_move(farm: Farm, moves: int, size: int) -> dict:
    """Move orders under reads: each makes the agent's server overloaded by
    power rating (plus a plain client of device mv2 on it) and rebalances."""
    agent = Agent(farm, "mv1")
    reader = Reader(agent.uri, size, farm.work, lat_log=True)
    switches: list[int] = []
    records: list[dict] = []
    names = sorted(farm.servers)
    try:
        time.sleep(1)
        for n in range(moves):
            serving = agent.status()["server"]
            target = names[(names.index(serving) + 1) % len(names)]
            other = subprocess.Popen(  # device mv2 on the same server, reading slowly
                [
                    "qemu-io",
                    "-f",
                    "raw",
                    "-r",
                    f"nbd://127.0.0.1:{farm.servers[serving].nbd_port}/mv2",
                    "-c",
                    "sleep 600000",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                time.sleep(1)
                for name in names:
                    rating = "100" if name == target else "0.01"
                    farm.first.cli("server", "set", name, "--power-rating", rating)
                plan = json.loads(farm.first.cli("--json", "rebalance"))
                moved = [m["device_name"] for m in plan["moves"]]
                if "mv1" not in moved:
                    raise RuntimeError(f"bench: the rebalance did not move mv1: {plan}")
                record = wait_until(
                    lambda n=n: len(agent.status()["moves"]) > n and agent.status()["moves"][n],
                    f"move {n + 1}",
                )
            finally:
                other.kill()
                other.wait()
            switches.append(record["switch_ms"])
            records.append(record)
            print(
                f"  move {n + 1}: {record['from_server']} -> {record['to_server']}, switched "
                f"{record['switch_ms']} ms after the order showed, {record['retried']} sent again"
            )
            reader.check()
            if agent.status()["failovers"]:
                raise RuntimeError("bench: a move became a failover")
            for name in names:
                farm.first.cli("server", "set", name, "--power-rating", "1")
        reads = reader.stop()
    finally:
        if reader.proc.poll() is None:
            reader.proc.kill()
        agent.stop()
    done = reads.pop("reads")
    latencies = sorted(lat for _, lat in done)
    around = [slowest_near(done, epoch_ms(r["at"]), 1000) for r in records]
    for n, worst in enumerate(around):
        print(
            f"  move {n + 1}: the slowest read completing within 1 s of the switch: {worst:.1f} ms"
        )
    return {
        "switch_ms": switches,
        "reader": reads,
        "around_switch_ms": around,
        "p50_ms": latencies[len(latencies) // 2],
        "p999_ms": latencies[int(len(latencies) * 0.999)],
    }


# -- the run ------------------------------------------------------------------


def report(results: dict, args: argparse.Namespace) -> None:
    print()
    print(
        f"agent bench: image {args.size_mib} MiB, fio runtime {args.runtime}s x "
        f"{args.rounds} rounds, {args.boots} boots, {args.kills} kills, {args.hangs} hangs, "
        f"{args.moves} moves"
    )
    if "startup" in results:
        s = results["startup"]
        print(
            f"startup (0-byte cache): to the listening socket median "
            f"{median(s['listen_s']):.3f} s, worst {max(s['listen_s']):.3f} s; RSS then median "
            f"{median(s['rss_kib']) / 1024:.1f} MiB"
        )
    if "fio" in results:
        fio_results, memory = results["fio"]
        print(f"{'job':<20}{'direct':>12}{'agent':>12}{'agent/direct':>14}")
        for job, r in fio_results.items():
            print(
                f"{job:<20}{median(r['direct']):>12.0f}{median(r['agent']):>12.0f}"
                f"{median(r['ratio']):>14.2f}"
            )
        print(
            f"agent RSS after the fio jobs (0-byte cache): {memory['VmRSS'] / 1024:.1f} MiB, "
            f"peak {memory['VmHWM'] / 1024:.1f} MiB"
        )
    if "boot" in results:
        b = results["boot"]
        for label, key in (("to VDFARM-BOOT-OK", ""), ("to VDFARM-DONE", "_done")):
            d, a = median(b["direct" + key]), median(b["agent" + key])
            ratios = [x / y for x, y in zip(b["agent" + key], b["direct" + key], strict=True)]
            print(
                f"VM boot {label}: direct (qemu's NBD client) {d:.2f} s, through the agent "
                f"{a:.2f} s, agent/direct {median(ratios):.2f} (per boot: "
                + ", ".join(f"{r:.2f}" for r in ratios)
                + ")"
            )
    if "failover" in results:
        f = results["failover"]
        for kind in ("kill", "hang"):
            if f[kind]:
                print(
                    f"failover after {kind} ({len(f[kind])}): pause median "
                    f"{median(f[kind]):.0f} ms, worst {max(f[kind])} ms"
                )
        print(
            f"  fio through it all: {f['reader']['ios']} reads, no error, longest "
            f"{f['reader']['max_lat_ms']:.0f} ms"
        )
    if "move" in results:
        m = results["move"]
        print(
            f"moves ({len(m['switch_ms'])}): switch median {median(m['switch_ms']):.0f} ms, "
            f"worst {max(m['switch_ms'])} ms after the order showed; fio through them: "
            f"{m['reader']['ios']} reads, no error, longest {m['reader']['max_lat_ms']:.1f} ms"
        )
        print(
            f"  slowest read within 1 s of a switch: median {median(m['around_switch_ms']):.1f} ms, "
            f"worst {max(m['around_switch_ms']):.1f} ms (all reads of the run: median "
            f"{m['p50_ms']:.2f} ms, 99.9th percentile {m['p999_ms']:.1f} ms)"
        )


def run(args: argparse.Namespace, work: Path) -> dict:
    parts = args.only.split(",") if args.only else list(PARTS)
    image = work / "random.raw"
    make_image(image, args.size_mib)
    size = args.size_mib << 20
    results: dict = {}
    with throwaway_database() as db:
        farm = Farm(work, db)
        try:
            farm.init()
            farm.add_vdisk("rnd", image, ["fio1", "fo1", "mv1", "mv2"])
            if "boot" in parts:
                from vdfarm.image import sample

                farm.add_vdisk("sample", sample.build(work / "sample.raw", size_mib=64), ["vm1"])
            farm.start()
            if "startup" in parts:
                print("startup")
                results["startup"] = part_startup(farm, args.starts)
            if "fio" in parts:
                print("fio")
                results["fio"] = part_fio(farm, args.rounds, args.runtime, size)
            if "boot" in parts:
                print("boot")
                results["boot"] = part_boot(farm, args.boots)
            if "failover" in parts:
                print("failover")
                results["failover"] = part_failover(farm, args.kills, args.hangs, size)
            if "move" in parts:
                print("move")
                results["move"] = part_move(farm, args.moves, size)
        finally:
            farm.stop()
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size-mib", type=int, default=512)
    ap.add_argument("--runtime", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--starts", type=int, default=5)
    ap.add_argument("--boots", type=int, default=3)
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--hangs", type=int, default=10)
    ap.add_argument("--moves", type=int, default=5)
    ap.add_argument("--only", default="", help=f"comma-separated parts of {','.join(PARTS)}")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args()
    QUIET_FLAG.touch()
    work = Path(tempfile.mkdtemp(prefix="vdfarm-agent-bench-"))
    try:
        results = run(args, work)
    finally:
        QUIET_FLAG.unlink(missing_ok=True)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"work directory kept: {work}")
    report(results, args)


if __name__ == "__main__":
    main()
