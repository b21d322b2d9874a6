"""Benchmark: login placement for 1,000 devices across 10 servers, and a
rebalance of that farm, on SQLite and on PostgreSQL.

Job: 10 servers (one data directory each, one shared database), one vDisk
held verified by all of them, 1,000 devices. Every device logs in (the
service call behind POST /api/v1/login, timed one by one) and its session
is recorded on the server it was sent to, so later logins see the load.
Servers s8 and s9 are down (no heartbeat) during the logins; then they come
up, the boot phase passes, and a rebalance spreads the load (planned and
applied: the move orders are written and audited). Prints the median and
95th percentile login time and the rebalance time. Targets (issue "A farm of
servers"): a login under 5 ms median, a rebalance of 1,000 devices under 1 s.

Usage: .venv/bin/python bench/farm_bench.py [--devices 1000] [--servers 10] [--db sqlite|postgresql|both]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

from sqlalchemy import create_engine, text

from vdfarm.farm import db
from vdfarm.service.context import Farm
from vdfarm.service.login import login
from vdfarm.service.moves import rebalance

PG_ADMIN = "postgresql+psycopg://root@127.0.0.1:5432/test"
PG_SERVER = "postgresql+psycopg://root@127.0.0.1:5432"


class Clock:
    """A clock the benchmark moves forward (heartbeats, boot phase)."""

    def __init__(self) -> None:
        self.now = datetime.now(timezone.utc)

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


def run(kind: str, n_servers: int, n_devices: int) -> dict:
    clock = Clock()
    with tempfile.TemporaryDirectory(prefix="vdfarm-fbench-", dir="/var/tmp") as tmp, \
            database(kind, Path(tmp)) as url:
        work = Path(tmp)
        image = work / "w.raw"
        with open(image, "wb") as f:
            f.write(os.urandom(1 << 20))
        farms = [Farm.init(work / f"s{i}", url, server_name=f"s{i}", clock=clock)
                 for i in range(n_servers)]
        try:
            farms[0].vdisks.import_image("w", image)
            for farm in farms[1:]:
                shutil.copytree(farms[0].store.root / "w", farm.store.root / "w")
            for farm in farms:
                farm.register_server(10809, 8080)
            clock.now += timedelta(seconds=10)  # the late ones are down now
            for farm in farms[:-2]:
                farm.servers.heartbeat()
            by_name = {f.server_name: f for f in farms}
            for n in range(n_devices):
                farms[0].devices.add(f"pc{n:04}", vdisk="w")
            vdisk_id = farms[0].resolve_vdisk_view("w").vdisk_id
            times = []
            for n in range(n_devices):
                name = f"pc{n:04}"
                t0 = time.perf_counter()
                result = login(farms[0], name)
                times.append(time.perf_counter() - t0)
                device_id = farms[0].resolve_export(name).device_id
                by_name[result.server.name].session_started(device_id, vdisk_id, result.version)
            # the late servers come up; the boot phase passes
            clock.now += timedelta(seconds=120)
            for farm in farms:
                farm.servers.heartbeat()
            t0 = time.perf_counter()
            plan = rebalance(farms[0], apply=False)
            plan_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            applied = rebalance(farms[0], apply=True)
            apply_s = time.perf_counter() - t0
            load = {f.server_name: i.connected for f in farms for i in farms[0].servers.list()
                    if i.name == f.server_name}
            assert len(applied.moves) == len(plan.moves) > 0, "the late servers got nothing"
            assert applied.applied and not plan.applied
        finally:
            for farm in farms:
                farm.close()
    times.sort()
    return {
        "login_median_ms": statistics.median(times) * 1e3,
        "login_p95_ms": times[int(len(times) * 0.95)] * 1e3,
        "moves": len(plan.moves), "plan_s": plan_s, "apply_s": apply_s, "load": load,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--servers", type=int, default=10)
    ap.add_argument("--db", choices=["sqlite", "postgresql", "both"], default="both")
    args = ap.parse_args()
    kinds = ["sqlite", "postgresql"] if args.db == "both" else [args.db]
    for kind in kinds:
        r = run(kind, args.servers, args.devices)
        print(f"{kind:10} {args.devices} devices / {args.servers} servers: login median "
              f"{r['login_median_ms']:.2f} ms, p95 {r['login_p95_ms']:.2f} ms; rebalance "
              f"{r['moves']} moves: plan {r['plan_s'] * 1e3:.0f} ms, plan+apply "
              f"{r['apply_s'] * 1e3:.0f} ms", flush=True)
        print(f"{'':10} connected before the moves take effect: {r['load']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
