"""The three verbs implemented elsewhere: wired with the right arguments and
imported lazily."""

from __future__ import annotations

import subprocess
import sys
import types

import pytest

import vdfarm.daemon.run
import vdfarm.image.sample
from tests.cli.conftest import assert_one_line_error
from vdfarm.service.context import Farm


def fake_run_server(calls):
    """A run_server that records its arguments."""

    def run_server(farm, options):
        calls.append(
            (
                type(farm),
                farm.data_dir,
                farm.server_name,
                options.host,
                options.nbd_port,
                options.grace_seconds,
                options.lease_seconds,
                options.api_host,
                options.api_port,
                options.auto_rebalance_every,
                options.advertise,
            )
        )

    return run_server


def test_server_run_calls_run_server(icli, monkeypatch):
    calls = []
    monkeypatch.setattr(vdfarm.daemon.run, "run_server", fake_run_server(calls))
    icli.ok(
        "server",
        "run",
        "--nbd-port",
        "12345",
        "--host",
        "127.0.0.2",
        "--grace",
        "2.5",
        "--lease",
        "4",
        "--api-port",
        "0",
        "--api-host",
        "127.0.0.3",
        "--auto-rebalance",
        "60",
        "--advertise",
        "10.0.0.5",
    )
    icli.ok("server", "run")
    icli.ok("server", "run", "--no-api", "--host", "0.0.0.0", "--advertise", "pxe1.lan")
    assert calls == [
        (
            Farm,
            icli.data_dir,
            "srv1",
            "127.0.0.2",
            12345,
            2.5,
            4.0,
            "127.0.0.3",
            0,
            60.0,
            "10.0.0.5",
        ),
        (Farm, icli.data_dir, "srv1", "127.0.0.1", 10809, 30.0, 30.0, None, 8080, 0.0, None),
        (Farm, icli.data_dir, "srv1", "0.0.0.0", 10809, 30.0, 30.0, None, None, 0.0, "pxe1.lan"),
    ]


def test_server_run_exits_with_the_daemons_status(icli, monkeypatch):
    monkeypatch.setattr(vdfarm.daemon.run, "run_server", lambda farm, options: 1)
    assert icli("server", "run").exit_code == 1  # a task died: not a clean stop


@pytest.mark.parametrize("advertise", ["", "two words", "x" * 256])
def test_server_run_refuses_a_bad_advertise_before_starting(icli, monkeypatch, advertise):
    calls = []
    monkeypatch.setattr(vdfarm.daemon.run, "run_server", fake_run_server(calls))
    before = icli.dump()
    assert_one_line_error(
        icli("server", "run", "--advertise", advertise), 1, "invalid advertised address"
    )
    assert calls == [] and icli.dump() == before


def test_server_run_help_shows_advertise(cli):
    out = cli.ok("server", "run", "--help", data_dir=False).stdout
    assert "--advertise ADDR" in out and "0.0.0.0" in out


def test_image_sample_calls_build_without_a_data_dir(cli, tmp_path, monkeypatch):
    calls = []

    def fake_build(out, size_mib):
        calls.append((out, size_mib))
        return out

    monkeypatch.setattr(vdfarm.image.sample, "build", fake_build)
    out = tmp_path / "s.raw"
    result = cli.ok("image", "sample", str(out), "--size-mib", "32")
    assert result.stdout == f"built sample image {out} (32 MiB)\n"
    assert cli.json("image", "sample", str(out)) == {"path": str(out), "size_mib": 64}
    assert calls == [(out, 32), (out, 64)]
    assert not cli.data_dir.exists()


def test_demo_calls_demo_run(cli, monkeypatch):
    calls = []
    fake = types.ModuleType("vdfarm.demo")
    fake.run = calls.append
    monkeypatch.setitem(sys.modules, "vdfarm.demo", fake)
    cli.ok("demo")
    assert calls == [str(cli.data_dir)]


def test_cli_import_loads_no_stream_daemon_image_or_demo_code():
    code = (
        "import sys, vdfarm.cli.root; "
        "print(sorted(m for m in sys.modules if m.startswith("
        "('vdfarm.stream', 'vdfarm.daemon', 'vdfarm.image', 'vdfarm.demo'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_server_run_takes_its_own_replication_cap_and_refuses_a_bad_one(icli, monkeypatch):
    seen = []
    monkeypatch.setattr(
        vdfarm.daemon.run, "run_server", lambda farm, options: seen.append(options) or 0
    )
    icli.ok("server", "run", "--max-replication-rate", "50MB/s")
    icli.ok("server", "run")
    assert [o.replication_max_rate_bps for o in seen] == [50_000_000, None]
    before = icli.dump()
    result = icli("server", "run", "--max-replication-rate", "fast")
    assert_one_line_error(result, 2, "invalid rate 'fast'")
    assert len(seen) == 2 and icli.dump() == before
