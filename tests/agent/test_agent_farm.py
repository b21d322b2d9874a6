"""The agent in front of a real farm (tests/agent/farm.py: three `vdfarm
server run` on one real PostgreSQL, the vDisk in every store), real
clients (qemu-img, qemu-io) on the agent's socket. The whole disk is read
and compared; the serving server is SIGKILLed under a loop of reads, then
the next one is SIGSTOPped (hung): no client error, the status shows both
failovers with their pauses, the farm's audit has them. A rebalance moves
a device under loops of reads: the agent switches servers with no client
error and the old server's session ends.
"""

from __future__ import annotations

import re
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

from tests.stream.rawclient import RawClient

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


def slowest_read_ms(qemu_io_output: str) -> float:
    """The longest single read of a qemu-io loop (each line gives its ops/sec)."""
    rates = [float(r) for r in re.findall(r"and ([0-9.]+) ops/sec", qemu_io_output)]
    return 1000 / min(rates) if rates else 0.0


def test_a_move_order_reaches_a_running_agent(agent_farm):
    """A rebalance orders mv1 away from its server: mv1 and mv2 (a plain
    client) sit on it, its power rating makes it overloaded and another
    server is rated to take them; the planner moves devices in name order,
    and one move is enough. The agent switches under loops of reads: no
    client error, no failover, the old server's session ends, the farm's
    record names the new server."""
    names = sorted(agent_farm.servers)
    admin = agent_farm.cluster.first

    def rate(ratings: dict[str, str]) -> None:
        with ThreadPoolExecutor(len(ratings)) as pool:
            for done in [
                pool.submit(admin.cli, "server", "set", name, "--power-rating", rating)
                for name, rating in ratings.items()
            ]:
                done.result()

    with agent_farm.agent("mv1", extra=("--cache-size", "16")) as agent:
        serving = agent_farm.serving(agent).name
        target = next(name for name in names if name != serving)
        other = RawClient(agent_farm.servers[serving].nbd_port)
        other.connect("mv2")
        try:
            rate({serving: "0.01", target: "100"})
            plan = admin.cli_json("rebalance")
            moves = {m["device_name"]: (m["from_server"], m["to_server"]) for m in plan["moves"]}
            assert moves.get("mv1") == (serving, target) and "mv2" not in moves, plan
            slowest, rounds = 0.0, 0
            deadline = time.monotonic() + 60
            while True:  # loops of reads until the move happened, then one more
                moved = bool(agent.status_now()["moves"])
                out, err = read_loop(agent.uri, 1000).communicate(timeout=120)
                assert "failed" not in out + err and "error" not in (out + err).lower(), err
                slowest = max(slowest, slowest_read_ms(out))
                rounds += 1
                if moved:
                    break
                assert time.monotonic() < deadline, f"no move reached the agent: {agent.log()}"
        finally:
            other.close()
            rate({serving: "1", target: "1"})
        shown = agent.status()
        [move] = shown["moves"]
        assert (move["from_server"], move["to_server"]) == (serving, target)
        assert shown["server"] == target and shown["failovers"] == []
        old = agent_farm.servers[serving]
        deadline = time.monotonic() + 30
        while "device mv1: session ended" not in old.log():  # it left the old server
            assert time.monotonic() < deadline, old.log()[-3000:]
            time.sleep(0.1)
        deadline = time.monotonic() + 30
        while admin.cli_json("device", "show", "mv1")["session"]["server"] != target:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        print(
            f"move {serving} -> {target}: switched {move['switch_ms']} ms after the order "
            f"showed, {move['retried']} sent again; slowest 64 KiB read over {rounds} loops: "
            f"{slowest:.1f} ms"
        )
