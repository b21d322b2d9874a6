"""`vdfarm server run --boot-rate/--boot-burst`: the per-source limit of the
boot path (/boot/ipxe, /boot/files) is the admin's to set (devices booting
behind one NAT share an address); a value out of range is one line."""

from __future__ import annotations

import httpx

from tests.conftest import free_port


def test_the_boot_rate_is_set_by_flags(farm):
    api_port = free_port()
    farm.start(extra_args=("--api-port", str(api_port), "--boot-rate", "0.01", "--boot-burst", "2"))
    url = f"http://127.0.0.1:{api_port}/boot/files/nothing/0/kernel"
    codes = [httpx.get(url, timeout=10).status_code for _ in range(3)]
    assert codes == [404, 404, 429]  # the third is past the burst of 2


def test_a_boot_rate_out_of_range_is_one_line(farm):
    for extra in (["--boot-rate", "0"], ["--boot-burst", "0"], ["--boot-rate", "fast"]):
        run = farm.cli(
            "server", "run", "--nbd-port", str(free_port()), "--api-port", "0", *extra, check=False
        )
        assert run.returncode == 2, run.stderr
        lines = run.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("vdfarm: error: "), run.stderr
        assert "serving NBD" not in run.stdout
