"""Benchmark: login placement for 1,000 devices across 10 servers, and a
rebalance of that farm, on SQLite and on PostgreSQL.

Job: 10 servers (one data directory each, one shared database), one vDisk
held verified by all of them, 1,000 devices. Every device logs in (the
service call behind POST /api/v1/login, timed one by one) and its session
is recorded on the server it was sent to, so later logins see the load.
Servers s8 and s9 are down (no heartbeat) during the logins; then they come
up, the boot phase passes, and a rebalance spreads the load (planned and
applied: the move orders are written and audited); the moved devices then
log in again and must land on their new servers. Prints the median and
95th percentile login time and the rebalance time. Targets (issue "A farm of
servers"): a login under 5 ms median, a rebalance of 1,000 devices under 1 s.

Then the same logins through HTTP (POST /api/v1/login, httpx with keep-alive)
against real `vdfarm server run` processes, on a fresh farm of the same shape
with the real clock: the servers without a process are kept up by heartbeats
from this process. First one process and one client, one login at a time
(SQLite and PostgreSQL); then PROCESSES processes on one PostgreSQL database
with CLIENTS client threads spread over them, logging in at once (the time
per login is the time of its request; the rate is logins over the wall
time). After each login the device's session is recorded on the server it
was sent to (not timed), so the load grows as in the in-process run. Each
client first sends 5 untimed logins (connection set-up, first use of the
statements).

Usage: .venv/bin/python bench/farm_bench.py [--devices 1000] [--servers 10]
       [--db sqlite|postgresql|both] [--processes 3] [--clients 6] [--no-http]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import select as fd_select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from sqlalchemy import create_engine, select, text

from vdfarm.farm import db
from vdfarm.farm.models import Device, utcnow
from vdfarm.service.context import Farm

PG_ADMIN = "postgresql+psycopg://root@127.0.0.1:5432/test"
PG_SERVER = "postgresql+psycopg://root@127.0.0.1:5432"
VDFARM = Path(sys.executable).with_name("vdfarm")
START_TIMEOUT_S = 60
WARMUP_LOGINS = 5
CHOSEN_LOCK = threading.Lock()


class Clock:
    """A clock the benchmark moves forward (heartbeats, boot phase)."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


@contextlib.contextmanager
def database(kind: str, work: Path):
    if kind == "sqlite":
        yield db.sqlite_url(work / "farm.db")
        return
    name = f"vdfarm_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield f"{PG_SERVER}/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        admin.dispose()


@contextlib.contextmanager
def servers_holding_w(kind: str, n_servers: int, clock=utcnow):
    """(work dir, farms): N_SERVERS servers s0.. on one fresh database of
    KIND, each store holding vDisk w (imported on s0, copied to the others);
    all closed and removed afterwards."""
    with (
        tempfile.TemporaryDirectory(prefix="vdfarm-fbench-", dir="/var/tmp") as tmp,
        database(kind, Path(tmp)) as url,
    ):
        work = Path(tmp)
        image = work / "w.raw"
        with open(image, "wb") as f:
            f.write(os.urandom(1 << 20))
        farms = [
            Farm.init(work / f"s{i}", url, server_name=f"s{i}", clock=clock)
            for i in range(n_servers)
        ]
        try:
            farms[0].vdisks.import_image("w", image)
            for farm in farms[1:]:
                shutil.copytree(farms[0].store.root / "w", farm.store.root / "w")
            yield work, farms
        finally:
            for farm in farms:
                farm.close()


def run(kind: str, n_servers: int, n_devices: int) -> dict:
    clock = Clock()
    with servers_holding_w(kind, n_servers, clock) as (_, farms):
        for farm in farms:
            farm.servers.register(10809, 8080)
        clock.now += timedelta(seconds=10)  # the late ones are down now
        for farm in farms[:-2]:
            farm.servers.heartbeat()
        by_name = {f.server_name: f for f in farms}
        for n in range(n_devices):
            farms[0].devices.add(f"pc{n:04}", vdisk="w")
        vdisk_id = farms[0].exports.view("w").vdisk_id
        times = []
        for n in range(n_devices):
            name = f"pc{n:04}"
            t0 = time.perf_counter()
            result = farms[0].logins.login(name)
            times.append(time.perf_counter() - t0)
            device_id = farms[0].exports.resolve(name).device_id
            by_name[result.server.name].sessions.started(device_id, vdisk_id, result.version)
        # the late servers come up; the boot phase passes
        clock.now += timedelta(seconds=120)
        for farm in farms:
            farm.servers.heartbeat()
        t0 = time.perf_counter()
        plan = farms[0].moves.rebalance(apply=False)
        plan_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        applied = farms[0].moves.rebalance(apply=True)
        apply_s = time.perf_counter() - t0
        load = {
            f.server_name: i.connected
            for f in farms
            for i in farms[0].servers.list()
            if i.name == f.server_name
        }
        assert len(applied.moves) == len(plan.moves) > 0, "the late servers got nothing"
        assert applied.applied and not plan.applied
        moved_times = []
        for move in applied.moves:  # their next login lands where the rebalance sent them
            t0 = time.perf_counter()
            result = farms[0].logins.login(move.device_name)
            moved_times.append(time.perf_counter() - t0)
            assert result.server.name == move.to_server, (move, result)
    times.sort()
    return {
        "login_median_ms": statistics.median(times) * 1e3,
        "login_p95_ms": times[int(len(times) * 0.95)] * 1e3,
        "moves": len(plan.moves),
        "plan_s": plan_s,
        "apply_s": apply_s,
        "load": load,
        "moved_login_median_ms": statistics.median(moved_times) * 1e3,
    }


def loadavg() -> str:
    """The 1, 5 and 15 minute load averages (what else the machine was doing)."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def summary(times: list[float]) -> dict:
    times = sorted(times)
    return {
        "median_ms": statistics.median(times) * 1e3,
        "p95_ms": times[int(len(times) * 0.95)] * 1e3,
    }


def start_server(data_dir: Path, log: Path) -> tuple[subprocess.Popen, int]:
    """A `vdfarm server run` process on DATA_DIR (any free ports) and its API port."""
    with open(log, "wb") as stderr:
        process = subprocess.Popen(
            [
                str(VDFARM),
                "--data-dir",
                str(data_dir),
                "server",
                "run",
                "--nbd-port",
                "0",
                "--api-port",
                "0",
                # every client is 127.0.0.1: the per-source limits would
                # time the limiter, not the login
                "--login-rate",
                "100000",
                "--login-burst",
                "100000",
                "--login-reservations",
                "100000",
            ],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        ready, _, _ = fd_select.select([process.stdout], [], [], 0.5)
        if ready:
            line = process.stdout.readline()
            if not line:
                break
            if "REST API on " in line:
                return process, int(line.split("REST API on ")[1].split()[0].rsplit(":", 1)[1])
    process.kill()
    raise RuntimeError(f"server {data_dir.name} did not start; see {log}")


def stop_servers(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def keep_beating(farms: list[Farm], stop: threading.Event) -> None:
    """Heartbeats every second for the servers that run no process."""
    while not stop.wait(1.0):
        for farm in farms:
            farm.servers.heartbeat(inventory=False)


def client(
    url: str,
    names: list[str],
    ids: dict[str, int],
    by_name: dict[str, Farm],
    vdisk_id: int,
    times: list[float],
    chosen: Counter,
) -> None:
    """Log NAMES in through URL one by one; record each session where it was sent
    (IDS: device name -> id)."""
    with httpx.Client(base_url=url, timeout=30) as http:
        for _ in range(WARMUP_LOGINS):
            http.post("/api/v1/login", json={"device": names[0]}).raise_for_status()
        for name in names:
            t0 = time.perf_counter()
            answer = http.post("/api/v1/login", json={"device": name})
            times.append(time.perf_counter() - t0)
            answer.raise_for_status()
            body = answer.json()
            with CHOSEN_LOCK:
                chosen[body["server"]["name"]] += 1
            by_name[body["server"]["name"]].sessions.started(ids[name], vdisk_id, body["version"])


def run_http(kind: str, n_servers: int, n_devices: int, n_processes: int, n_clients: int) -> dict:
    """N_DEVICES logins through HTTP: N_CLIENTS threads spread over N_PROCESSES servers."""
    with servers_holding_w(kind, n_servers) as (work, farms):
        processes: list[subprocess.Popen] = []
        stop = threading.Event()
        beater = threading.Thread(target=keep_beating, args=(farms[n_processes:], stop))
        try:
            for farm in farms[n_processes:]:
                farm.servers.register(10809, 8080)
            beater.start()
            ports = []
            for farm in farms[:n_processes]:
                process, port = start_server(farm.data_dir, work / f"{farm.server_name}.log")
                processes.append(process)
                ports.append(port)
            names = [f"pc{n:04}" for n in range(n_devices)]
            for name in names:
                farms[0].devices.add(name, vdisk="w")
            vdisk_id = farms[0].exports.view("w").vdisk_id
            with farms[0].session() as session:
                ids = dict(session.execute(select(Device.name, Device.id)).all())
            by_name = {f.server_name: f for f in farms}
            times: list[float] = []
            chosen: Counter = Counter()
            threads = [
                threading.Thread(
                    target=client,
                    args=(
                        f"http://127.0.0.1:{ports[c % n_processes]}",
                        names[c::n_clients],
                        ids,
                        by_name,
                        vdisk_id,
                        times,
                        chosen,
                    ),
                )
                for c in range(n_clients)
            ]
            t0 = time.perf_counter()
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            wall = time.perf_counter() - t0
            assert len(times) == n_devices, "a client failed"
        finally:
            stop.set()
            if beater.is_alive():
                beater.join()
            stop_servers(processes)
    return summary(times) | {"rate": n_devices / wall, "chosen": dict(sorted(chosen.items()))}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--servers", type=int, default=10)
    ap.add_argument("--db", choices=["sqlite", "postgresql", "both"], default="both")
    ap.add_argument(
        "--processes",
        type=int,
        default=3,
        help="server processes sharing PostgreSQL in the concurrent HTTP run",
    )
    ap.add_argument(
        "--clients", type=int, default=6, help="client threads in the concurrent HTTP run"
    )
    ap.add_argument("--no-http", action="store_true", help="only the in-process runs")
    args = ap.parse_args()
    kinds = ["sqlite", "postgresql"] if args.db == "both" else [args.db]
    print(f"{os.cpu_count()} CPUs; load average before: {loadavg()}", flush=True)
    for kind in kinds:
        r = run(kind, args.servers, args.devices)
        print(
            f"{kind:10} {args.devices} devices / {args.servers} servers: login median "
            f"{r['login_median_ms']:.2f} ms, p95 {r['login_p95_ms']:.2f} ms; rebalance "
            f"{r['moves']} moves: plan {r['plan_s'] * 1e3:.0f} ms, plan+apply "
            f"{r['apply_s'] * 1e3:.0f} ms",
            flush=True,
        )
        print(f"{'':10} connected before the moves take effect: {r['load']}")
        print(
            f"{'':10} logins of the {r['moves']} moved devices: each on its new server, "
            f"median {r['moved_login_median_ms']:.2f} ms"
        )
        print(f"{'':10} load average after: {loadavg()}", flush=True)
    if args.no_http:
        return 0
    runs = [(kind, 1, 1) for kind in kinds]
    if "postgresql" in kinds:
        runs.append(("postgresql", args.processes, args.clients))
    for kind, processes, clients in runs:
        r = run_http(kind, args.servers, args.devices, processes, clients)
        print(
            f"{kind:10} HTTP, {processes} server process(es), {clients} client(s): "
            f"{args.devices} logins: median {r['median_ms']:.2f} ms, p95 {r['p95_ms']:.2f} ms; "
            f"{r['rate']:.0f} logins/s (each followed by its session write)",
            flush=True,
        )
        print(f"{'':10} sent to: {r['chosen']}; load average after: {loadavg()}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
