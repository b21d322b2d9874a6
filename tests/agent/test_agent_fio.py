"""fio through the agent while servers die: one 60 s fio run (its nbd
engine, libnbd on the agent's unix socket) with two jobs — random reads
verified against the known image (fio's own offset pattern, tests/agent/
conftest.py), random writes verified as they land in the device-side RAM
cache — while a chaos loop SIGKILLs a server every 10 s and restarts it.
The first kill takes the server the agent streams from (so every run
fails over at least once); the others take a server at random (a printed
seed). Zero I/O errors, zero verify failures; the test prints the
failovers and the longest pause.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import time

import pytest

from tests.agent.conftest import FIO_PATTERN, PATTERN_IMAGE_MIB, PATTERN_MIB

pytestmark = pytest.mark.skipif(shutil.which("fio") is None, reason="fio not installed")

RUNTIME_S = 60
KILL_EVERY_S = 10
WRITE_MIB = PATTERN_IMAGE_MIB - PATTERN_MIB


def fio_argv(uri: str) -> list[str]:
    """One fio run, two jobs on the agent's socket for RUNTIME_S seconds.

    read-verify reads the pattern region in random order and checks every
    block against the pattern. fio 3.33 with an async engine (nbd) stops a
    time-based read-only verify job after one pass, so it is written as
    fio's `verify_only` of random writes (nothing is written: fio replays
    the offsets and reads them back), looped until the runtime ends.
    write-verify writes random blocks after the pattern region (they stay
    in the device cache) and reads each back (verify_backlog) as it goes.
    """
    common = ["--ioengine=nbd", f"--uri={uri}", "--bs=4k", "--iodepth=8", "--verify_fatal=1"]
    common += [f"--runtime={RUNTIME_S}", "--output-format=json"]
    read_job = ["--name=read-verify", "--rw=randwrite", "--verify_only=1", "--loops=1000000"]
    read_job += ["--offset=0", f"--size={PATTERN_MIB}m"]
    read_job += ["--verify=pattern", f"--verify_pattern={FIO_PATTERN}"]
    write_job = ["--name=write-verify", "--rw=randwrite", "--time_based"]
    write_job += [f"--offset={PATTERN_MIB}m", f"--size={WRITE_MIB}m"]
    write_job += ["--verify=crc32c", "--verify_backlog=64"]
    return ["fio", *common, *read_job, *write_job]


def test_fio_verifies_reads_and_cached_writes_while_servers_are_killed(agent_farm, tmp_path):
    if "pattern" not in agent_farm.images:
        pytest.skip("no fio pattern image")
    seed = random.randrange(1 << 32)
    print(f"chaos seed {seed}")
    chooser = random.Random(seed)
    kills: list[str] = []
    extra = ("--io-timeout", "1", "--cache-size", str(2 * WRITE_MIB))
    with agent_farm.agent("fio1", extra=extra) as agent:
        started = time.monotonic()
        fio = subprocess.Popen(
            fio_argv(agent.uri),
            cwd=tmp_path,  # fio leaves its verify state files here
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            while len(kills) < RUNTIME_S // KILL_EVERY_S - 1:
                time.sleep(max(0.0, started + KILL_EVERY_S * (len(kills) + 1) - time.monotonic()))
                if fio.poll() is not None:
                    break
                if kills:
                    victim = agent_farm.servers[chooser.choice(sorted(agent_farm.servers))]
                else:
                    victim = agent_farm.serving(agent)
                victim.kill()
                kills.append(victim.name)
                victim.start()
            out, err = fio.communicate(timeout=RUNTIME_S * 3)
        finally:
            if fio.poll() is None:
                fio.kill()
                fio.wait()
        shown = agent.status()

    (tmp_path / "fio.json").write_text(out)  # for a look after a failure
    assert fio.returncode == 0, out + err
    jobs = {job["jobname"]: job for job in json.loads(out[out.index("{") :])["jobs"]}
    for name, job in jobs.items():
        assert job["error"] == 0, (name, job["error"], err)
    assert jobs["read-verify"]["read"]["io_bytes"] > 0
    written = jobs["write-verify"]["write"]["io_bytes"]
    assert written > 0 and jobs["write-verify"]["read"]["io_bytes"] > 0  # the verify reads
    assert len(kills) == RUNTIME_S // KILL_EVERY_S - 1, f"fio ended early: {err}"
    failovers = shown["failovers"]
    assert failovers and failovers[0]["from_server"] == kills[0], shown
    assert all(record["pause_ms"] is not None for record in failovers), shown
    assert shown["cache"] is not None and not shown["cache_full"]
    longest = max(record["pause_ms"] for record in failovers)
    print(f"killed {kills}")
    for record in failovers:
        print(
            f"  {record['from_server']} -> {record['to_server']}: pause {record['pause_ms']} ms, "
            f"{record['retried']} requests sent again ({record['reason']})"
        )
    read_ios = jobs["read-verify"]["read"]["total_ios"]
    write_ios = jobs["write-verify"]["write"]["total_ios"]
    print(
        f"{len(failovers)} failovers in {len(kills)} kills, longest pause {longest} ms; "
        f"{read_ios} reads and {write_ios} writes verified"
    )
