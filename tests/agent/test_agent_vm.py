"""A VM (qemu, TCG) boots the sample image through the agent, from the
shared three-server farm (tests/agent/farm.py), and keeps running while the
servers under it fail.

One boot covers both failures (boots are the cost): the guest's /init,
given a control disk, reads and writes its disk in rounds (init.sh); under
those rounds the server the agent streams from is SIGKILLed, then the one
it moved to is SIGSTOPped (hung: only the agent's --io-timeout can tell).
The guest must go on, every hash it printed must be the image's, every
block it wrote must read back, and it must power off cleanly; the agent's
status shows both failovers with their pauses and reasons, and the farm's
audit has them.
"""

from __future__ import annotations

import hashlib
import shutil
import time

import pytest

from vdfarm.image import sample, vm

pytestmark = [
    pytest.mark.vm,
    pytest.mark.skipif(shutil.which(vm.QEMU) is None, reason="qemu not installed"),
]

BOOT_TIMEOUT = 300  # seconds; a TCG boot takes about 10-20
ROUNDS_AFTER = 3  # rounds the guest must finish after each failover settled


def wait_rounds(machine: vm.VmHandle, count: int, timeout: float = BOOT_TIMEOUT) -> int:
    """Wait until the guest has printed COUNT rounds; return how many it has."""
    deadline = time.monotonic() + timeout
    while True:
        text = machine.serial_text()
        rounds, _ = vm.parse_loop(text)
        if len(rounds) >= count:
            return len(rounds)
        assert machine.running() and "VDFARM-ERROR" not in text, text
        assert time.monotonic() < deadline, text
        time.sleep(0.1)


def expected_hash(image: bytes, mib: int) -> str:
    start = mib << 20
    return hashlib.sha256(image[start : start + (sample.LOOP_READ_MIB << 20)]).hexdigest()


def test_a_vm_booted_through_the_agent_survives_a_killed_then_a_hung_server(agent_farm, tmp_path):
    if "sample" not in agent_farm.images:
        pytest.skip("the sample image could not be built here")
    image = agent_farm.images["sample"].read_bytes()
    control = tmp_path / "control.img"
    disk_args = vm.make_control_disk(control)
    events = []
    with agent_farm.agent("vm1", extra=("--io-timeout", "1")) as agent:
        with vm.start(agent.uri, "vm1", extra_args=tuple(disk_args)) as machine:
            done = wait_rounds(machine, 3)
            for n, (how, act) in enumerate((("SIGKILL", "kill"), ("SIGSTOP", "pause"))):
                serving = agent_farm.serving(agent)
                getattr(serving, act)()
                events.append((how, serving.name, done))
                agent.settled_failovers(n + 1)
                done = wait_rounds(machine, wait_rounds(machine, 0) + ROUNDS_AFTER)
            vm.stop_loop(control)
            result = machine.wait(BOOT_TIMEOUT)
        shown = agent.status()

    serial = result.serial_output
    assert result.ok and result.fields.error is None, serial
    rounds, ended = vm.parse_loop(serial)
    assert ended == len(rounds) == rounds[-1].number, serial
    for round_ in rounds:
        assert round_.sha256 == expected_hash(image, round_.mib), f"round {round_.number}"
    for how, _, rounds_before in events:
        assert rounds_before < len(rounds), f"the guest did no I/O after the {how}"

    (kill, killed, _), (stop, stopped, _) = events
    first, second = shown["failovers"]  # exactly these two
    assert first["from_server"] == killed and first["to_server"] == stopped
    assert second["from_server"] == stopped and second["to_server"] not in (killed, stopped)
    assert "unanswered" in second["reason"], second  # the hang: only the I/O timeout sees it
    assert shown["server"] == second["to_server"] and shown["last_error"] is not None
    for how, record in ((kill, first), (stop, second)):
        print(
            f"{how}: {record['from_server']} -> {record['to_server']}, pause "
            f"{record['pause_ms']} ms, {record['retried']} requests sent again ({record['reason']})"
        )
    audited = agent_farm.reported_failovers("vm1", 2)
    assert [(row["after"]["from"], row["after"]["to"]) for row in audited] == [
        (killed, stopped),
        (stopped, second["to_server"]),
    ]
    print(f"{len(rounds)} rounds of guest I/O, boot to power-off {result.duration_s:.1f} s")
