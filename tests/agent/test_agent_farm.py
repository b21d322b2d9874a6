"""The agent in front of a real farm (tests/agent/farm.py: three `vdfarm
server run` on one real PostgreSQL, the vDisk in every store), real
clients (qemu-img, qemu-io) on the agent's socket. The whole disk is read
and compared; the serving server is SIGKILLed under a loop of reads, then
the next one is SIGSTOPped (hung): no client error, the status shows both
failovers with their pauses, the farm's audit has them.
"""

from __future__ import annotations

import subprocess
import time

SIZE = 8 << 20


def read_loop(uri: str, count: int) -> subprocess.Popen:
    return subprocess.Popen(
        ["qemu-io", "-f", "raw", "-r", uri]
        + [a for n in range(count) for a in ("-c", f"read {(n * 65536) % SIZE} 65536")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_reads_survive_a_killed_and_a_hung_server(agent_farm):
    image = agent_farm.images["golden"]
    with agent_farm.agent("pc1", extra=("--io-timeout", "1", "--cache-size", "16")) as agent:
        uri = agent.uri
        compare = ["qemu-img", "compare", "-f", "raw", "-F", "raw", str(image), uri]
        subprocess.run(compare, check=True, timeout=60, capture_output=True)

        for n, (how, act) in enumerate((("SIGKILL", "kill"), ("SIGSTOP", "pause"))):
            serving = agent_farm.serving(agent)
            reads = read_loop(uri, 6000)
            time.sleep(0.3)
            getattr(serving, act)()
            out, err = reads.communicate(timeout=120)
            assert reads.returncode == 0 and "failed" not in out + err, err
            # Had the loop ended before the signal, this read meets the failover.
            after = read_loop(uri, 1).communicate(timeout=60)
            assert "failed" not in "".join(after), after
            shown = agent.status()
            assert len(shown["failovers"]) == n + 1, shown
            record = shown["failovers"][-1]
            assert record["from_server"] == serving.name != shown["server"]
            assert record["pause_ms"] is not None
            print(f"{how}: pause {record['pause_ms']} ms, {record['retried']} requests sent again")
        subprocess.run(compare, check=True, timeout=60, capture_output=True)
        agent_farm.reported_failovers("pc1", 2)
