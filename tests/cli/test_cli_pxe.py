"""`vdfarm pxe dnsmasq-config`: the configuration for the servers given or
the farm's own, --write's directory, and every bad input refused in one
line (exit 2) before anything is printed or written."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.cli.conftest import assert_one_line_error
from vdfarm.boot.dnsmasq import IPXE_DIR
from vdfarm.farm import db

USAGE = 2
CMD = ("pxe", "dnsmasq-config")
DNSMASQ = "/usr/sbin/dnsmasq"
HAVE_IPXE = os.path.isfile(f"{IPXE_DIR}/undionly.kpxe") and os.path.isfile(f"{IPXE_DIR}/ipxe.efi")


@pytest.fixture
def loaders(tmp_path) -> Path:
    """A TFTP root holding both loaders (stand-ins)."""
    d = tmp_path / "tftp"
    d.mkdir()
    (d / "undionly.kpxe").write_bytes(b"bios")
    (d / "ipxe.efi").write_bytes(b"uefi")
    return d


def config_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line and not line.startswith("#")]


def test_proxy_dhcp_for_a_given_server(cli, loaders):
    out = cli.ok(
        *CMD,
        "--interface",
        "eth1",
        "--proxy-for",
        "192.168.1.0/24",
        "--server",
        "http://10.0.0.5:8080",
        "--tftp-root",
        str(loaders),
        data_dir=False,
    ).stdout
    got = config_lines(out)
    assert "interface=eth1" in got and f"tftp-root={loaders}" in got
    assert "dhcp-range=192.168.1.0,proxy,255.255.255.0" in got
    assert "dhcp-boot=tag:ipxe,http://10.0.0.5:8080/boot/ipxe?mac=${netX/mac}" in got


def test_the_interfaces_own_subnet_is_the_default_proxy(cli, loaders):
    out = cli.ok(
        *CMD, "--interface", "lo", "--server", "http://10.0.0.5:8080", "--tftp-root", str(loaders)
    ).stdout
    assert "dhcp-range=127.0.0.0,proxy,255.0.0.0" in config_lines(out)


def test_the_farms_servers_are_the_default(icli, loaders):
    assert_one_line_error(
        icli(*CMD, "--interface", "eth1", "--range", "10.1.0.10,10.1.0.20"),
        USAGE,
        "the farm has no server with a REST API: give --server URL",
    )
    from_the_farm = (*CMD, "--interface", "eth1", "--range", "10.1.0.10,10.1.0.20")
    from_the_farm += ("--tftp-root", str(loaders))
    engine = db.make_engine(db.sqlite_url(icli.data_dir / "farm.db"))
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("UPDATE servers SET hostname='10.1.0.1', api_port=8080"))
        out = icli.ok(*from_the_farm).stdout
        assert "dhcp-boot=tag:ipxe,http://10.1.0.1:8080/boot/ipxe?mac=${netX/mac}" in out
        with engine.begin() as conn:
            conn.execute(sa.text("UPDATE servers SET api_tls=1, hostname='fd00::1'"))
        out = icli.ok(*from_the_farm).stdout
        assert "dhcp-boot=tag:ipxe,https://[fd00::1]:8080/boot/ipxe?mac=${netX/mac}" in out
        with engine.begin() as conn:
            conn.execute(sa.text("UPDATE servers SET hostname='evil\nenable-ra'"))
        assert_one_line_error(
            icli(*CMD, "--interface", "eth1", "--range", "10.1.0.10,10.1.0.20"),
            USAGE,
            "server srv1's API address makes no boot URL",
        )
    finally:
        engine.dispose()


@pytest.mark.skipif(not HAVE_IPXE, reason="Debian's ipxe not installed (scripts/install.sh --test)")
def test_write_makes_the_tftp_root_with_the_chain_script(cli, tmp_path):
    out_dir = tmp_path / "pxe"
    result = cli.ok(
        *CMD,
        "--interface",
        "br0",
        "--range",
        "10.1.0.10,10.1.0.20,255.255.255.0",
        "--server",
        "http://10.1.0.1:8080",
        "--server",
        "http://10.1.0.2:8080",
        "--server",
        "http://10.1.0.1:8080/",  # the same one again: tried once
        "--write",
        str(out_dir),
        data_dir=False,
    )
    assert result.stdout.splitlines() == [
        f"wrote {out_dir}/dnsmasq.conf",
        f"wrote {out_dir}/vdfarm.ipxe",
        f"wrote {out_dir}/undionly.kpxe",
        f"wrote {out_dir}/ipxe.efi",
        f"run: dnsmasq --conf-file={out_dir}/dnsmasq.conf",
    ]
    conf = (out_dir / "dnsmasq.conf").read_text()
    assert f"tftp-root={out_dir}" in conf and "dhcp-boot=tag:ipxe,vdfarm.ipxe" in conf
    script = (out_dir / "vdfarm.ipxe").read_text()
    assert script.count("chain --autofree") == 2
    assert (out_dir / "undionly.kpxe").read_bytes() == Path(IPXE_DIR, "undionly.kpxe").read_bytes()
    if os.path.exists(DNSMASQ):
        done = subprocess.run(
            [DNSMASQ, "--test", f"--conf-file={out_dir}/dnsmasq.conf"], capture_output=True
        )
        assert done.returncode == 0, done.stderr


def test_json_gives_the_configuration_and_the_script(cli, loaders):
    out = cli.ok(
        "--json",
        *CMD,
        "--interface",
        "eth1",
        "--proxy-for",
        "10.0.0.0/8",
        "--server",
        "http://a.b:1",
        "--tftp-root",
        str(loaders),
        data_dir=False,
    ).stdout
    answer = json.loads(out)
    assert answer["servers"] == ["http://a.b:1"] and answer["script"] is None
    assert answer["written"] == [] and "interface=eth1" in answer["config"]


GOOD = ("--interface", "eth1", "--proxy-for", "10.0.0.0/8", "--server", "http://a.b:1")


@pytest.mark.parametrize(
    "args, message",
    [
        ((*CMD,), "Missing option '--interface'"),
        ((*CMD, "--interface", "eth1\ndhcp-boot=x", "--server", "http://a:1"), "control"),
        ((*CMD, "--interface", "eth0,lo", "--server", "http://a:1"), "invalid interface name"),
        ((*CMD, "--interface", "x" * 16, "--server", "http://a:1"), "at most 15"),
        ((*CMD, *GOOD[:2], "--proxy-for", "10.0.0.0", "--server", "http://a:1"), "ADDRESS/PREFIX"),
        ((*CMD, *GOOD[:2], "--proxy-for", "10.0.0.0/8\nx", "--server", "http://a:1"), "control"),
        ((*CMD, *GOOD[:2], "--range", "10.0.0.9,10.0.0.1", "--server", "http://a:1"), "after"),
        ((*CMD, *GOOD[:2], "--range", "10.0.0.1", "--server", "http://a:1"), "START,END"),
        ((*CMD, *GOOD, "--range", "10.0.0.1,10.0.0.2"), "not both"),
        ((*CMD, *GOOD[:4], "--server", "http://a:1/boot/ipxe"), "vdfarm adds /boot/ipxe"),
        ((*CMD, *GOOD[:4], "--server", "http://a:1\r\nX: y"), "control"),
        ((*CMD, *GOOD[:4], "--server", "gopher://a"), "give http://HOST"),
        ((*CMD, *GOOD[:4], "--server", "http://a:1", "--server", "http://b:1"), "--write DIR"),
        ((*CMD, *GOOD[:4], "--server", "http://farm1:8080"), "without a dot needs vdfarm.ipxe"),
        (
            (*CMD, *GOOD[:4], "--server", "http://" + "a" * 60 + "." + "a" * 60),
            "longer than the 127",
        ),
        ((*CMD, *GOOD, "--tftp-root", "relative/dir"), "absolute"),
        ((*CMD, *GOOD, "--tftp-root", "/srv/a,eth0"), "invalid TFTP root"),
        ((*CMD, *GOOD, "--tftp-root", "/srv", "--write", "/nonexistent/vdfarm-pxe"), "not both"),
        ((*CMD, *GOOD, "--write", "/nonexistent/with space"), "--write: the TFTP root"),
        ((*CMD, "--interface", "vdfarm-none0", "--server", "http://a:1"), "cannot tell the subnet"),
    ],
)
def test_bad_input_is_one_line(cli, args, message, tmp_path):
    result = cli(*args, data_dir=False)
    assert_one_line_error(result, USAGE, message)
    assert (
        not Path("/nonexistent/vdfarm-pxe").exists()
        and not Path("/nonexistent/with space").exists()
    )


def test_write_into_a_file_is_one_line(cli, tmp_path):
    if not HAVE_IPXE:
        pytest.skip("Debian's ipxe not installed (scripts/install.sh --test)")
    (tmp_path / "file").write_text("x")
    assert_one_line_error(
        cli(*CMD, *GOOD, "--write", str(tmp_path / "file"), data_dir=False), USAGE, "is a file"
    )
    assert_one_line_error(
        cli(*CMD, *GOOD, "--write", str(tmp_path / "file" / "sub"), data_dir=False),
        USAGE,
        "cannot write",
    )
    assert (tmp_path / "file").read_text() == "x"
