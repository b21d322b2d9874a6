"""Server-side write caches of standard-mode devices: size limits (ENOSPC on
exactly the write that does not fit, nothing lost, audited) and the
server-ram type (the cache lives in RAM, on tmpfs)."""

from __future__ import annotations

import json
import stat
import time
from pathlib import Path

from tests.stream import rawclient as rc

BLOCK = 4096


def test_the_write_that_overflows_the_cache_gets_enospc_and_nothing_is_lost(farm, test_image):
    farm.cli("vdisk", "import", "golden", str(test_image), "--mode", "standard")
    farm.cli("vdisk", "set", "golden", "--cache-limit-mb", "1")
    farm.cli("device", "add", "pc1", "--vdisk", "golden")
    farm.start(grace=5)
    c = rc.RawClient(farm.port)
    c.connect("pc1")
    fits = (1 << 20) // BLOCK
    for i in range(fits):
        assert c.call(rc.CMD_WRITE, i * BLOCK, BLOCK, data=bytes([i % 251 + 1]) * BLOCK)[0] == 0
    # the exact write that does not fit
    assert c.call(rc.CMD_WRITE, fits * BLOCK, BLOCK, data=b"\xff" * BLOCK)[0] == rc.ENOSPC
    # rewriting a cached block still fits; earlier writes read back
    assert c.call(rc.CMD_WRITE, 0, BLOCK, data=b"\x01" * BLOCK)[0] == 0
    for i in (0, 1, fits // 2, fits - 1):
        err, data = c.call(rc.CMD_READ, i * BLOCK, BLOCK)
        assert err == 0 and data == bytes([i % 251 + 1]) * BLOCK
    # the server reports the cache's use to the farm: `device show` says it
    for _ in range(150):  # reported every few seconds; a loaded machine is slower
        live = json.loads(farm.cli("--json", "device", "show", "pc1").stdout)["session"]
        if live and live["write_cache_used_bytes"] == 1 << 20:
            break
        time.sleep(0.2)
    assert live["write_cache_used_bytes"] == 1 << 20, live
    assert live["write_cache_limit_bytes"] == 1 << 20 and live["version"] == 0
    shown = farm.cli("device", "show", "pc1").stdout
    assert "1.0 MiB used of 1 MiB" in shown
    # the block that did not fit still reads the vDisk's own content
    err, data = c.call(rc.CMD_READ, fits * BLOCK, BLOCK)
    assert err == 0 and data == test_image.read_bytes()[fits * BLOCK : (fits + 1) * BLOCK]
    c.close()
    # the server keeps serving others, and the event is in the audit trail
    other = rc.RawClient(farm.port)
    other.connect("vdisk/golden")
    assert other.call(rc.CMD_READ, 0, BLOCK)[0] == 0
    other.close()
    audit = json.loads(farm.cli("--json", "audit", "list").stdout)
    full = [e for e in audit if e["action"] == "write-cache-full"]
    assert len(full) == 1 and full[0]["target_name"] == "pc1"
    assert full[0]["after"]["limit_bytes"] == 1 << 20


def test_server_ram_cache_lives_in_ram(farm, test_image):
    farm.cli(
        "vdisk",
        "import",
        "golden",
        str(test_image),
        "--mode",
        "standard",
        "--write-cache",
        "server-ram",
    )
    farm.cli("device", "add", "pc1", "--vdisk", "golden")
    farm.start(grace=5)
    c = rc.RawClient(farm.port)
    c.connect("pc1")
    assert c.call(rc.CMD_WRITE, 0, BLOCK, data=b"\x33" * BLOCK)[0] == 0
    uuid = json.loads((farm.data_dir / "server.json").read_text())["uuid"]
    device_id = json.loads(farm.cli("--json", "device", "show", "pc1").stdout)["id"]
    # A fresh private directory per start, under an unpredictable name.
    caches = list(Path("/dev/shm").glob(f"vdfarm-{uuid}-*/device-{device_id}.wcache"))
    assert len(caches) == 1, "server-ram cache must be on tmpfs"
    cache = caches[0]
    assert stat.S_IMODE(cache.parent.lstat().st_mode) == 0o700
    assert stat.S_IMODE(cache.lstat().st_mode) == 0o600
    with open(cache, "rb") as f:
        assert f.read(BLOCK) == b"\x33" * BLOCK
    assert not (farm.data_dir / "cache" / f"device-{device_id}.wcache").exists()
    err, data = c.call(rc.CMD_READ, 0, BLOCK)
    assert err == 0 and data == b"\x33" * BLOCK
    c.close()
