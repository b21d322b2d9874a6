"""dnsmasq's configuration: the lines each mode and each client kind needs,
read back line by line, and real dnsmasq's own check (`dnsmasq --test`)
accepting every shape the generator makes."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from vdfarm.boot.chain import CHAIN_SCRIPT
from vdfarm.boot.dnsmasq import DnsmasqSettings, dnsmasq_config, ipxe_boot_file
from vdfarm.boot.inputs import ProxyDhcp, parse_range, parse_server_url, parse_subnet

ONE = (parse_server_url("http://10.0.0.5:8080"),)
TWO = (*ONE, parse_server_url("https://farm-2.example.org:8443"))
PROXY = ProxyDhcp(parse_subnet("192.168.1.0/24"))
FULL = parse_range("10.9.0.100,10.9.0.200,255.255.255.0")
URL = "http://10.0.0.5:8080/boot/ipxe?mac=${netX/mac}"


def lines(text: str) -> list[str]:
    """The configuration lines (no comments, no blank lines)."""
    return [line for line in text.splitlines() if line and not line.startswith("#")]


def test_proxy_dhcp_beside_the_sites_server():
    got = lines(dnsmasq_config(DnsmasqSettings("eth1", PROXY, ONE)))
    assert got == [
        "port=0",
        "interface=eth1",
        "bind-interfaces",
        "dhcp-range=192.168.1.0,proxy,255.255.255.0",
        "dhcp-userclass=set:ipxe,iPXE",
        "dhcp-match=set:ipxe,175",
        "enable-tftp",
        "tftp-root=/usr/lib/ipxe",
        'pxe-service=tag:!ipxe,x86PC,"Network boot (vdfarm)",undionly.kpxe',
        'pxe-service=tag:!ipxe,BC_EFI,"Network boot (vdfarm)",ipxe.efi',
        'pxe-service=tag:!ipxe,x86-64_EFI,"Network boot (vdfarm)",ipxe.efi',
        f'pxe-service=tag:ipxe,x86PC,"Network boot (vdfarm)",{URL}',
        f'pxe-service=tag:ipxe,BC_EFI,"Network boot (vdfarm)",{URL}',
        f'pxe-service=tag:ipxe,x86-64_EFI,"Network boot (vdfarm)",{URL}',
        f"dhcp-boot=tag:ipxe,{URL}",
        "dhcp-no-override",
    ]


@pytest.mark.parametrize("server", ["http://farm1:8080", "http://[fd00::1]:8080"])
def test_in_proxy_mode_a_boot_url_without_a_dot_goes_through_the_chain_script(server):
    """dnsmasq would add PXE's `.0` layer suffix to a menu item without a dot."""
    dotless = (parse_server_url(server),)
    assert ipxe_boot_file(dotless, PROXY) == CHAIN_SCRIPT
    assert 'pxe-service=tag:ipxe,x86PC,"Network boot (vdfarm)",vdfarm.ipxe' in lines(
        dnsmasq_config(DnsmasqSettings("eth1", PROXY, dotless))
    )
    assert ipxe_boot_file(dotless, FULL) == f"{server}/boot/ipxe?mac=${{netX/mac}}"


def test_full_dhcp_hands_out_the_range_and_picks_the_loader_by_architecture():
    got = lines(dnsmasq_config(DnsmasqSettings("br0", FULL, ONE, "/srv/tftp")))
    assert "dhcp-range=10.9.0.100,10.9.0.200,255.255.255.0,1h" in got
    assert "tftp-root=/srv/tftp" in got
    assert not [line for line in got if "proxy" in line or "pxe-service" in line]
    assert got[got.index("dhcp-match=set:ipxe,175") :] == [
        "dhcp-match=set:ipxe,175",
        "enable-tftp",
        "tftp-root=/srv/tftp",
        "dhcp-match=set:bios,option:client-arch,0",
        "dhcp-match=set:efi64,option:client-arch,7",
        "dhcp-match=set:efi64,option:client-arch,9",
        "dhcp-boot=tag:bios,tag:!ipxe,undionly.kpxe",
        "dhcp-boot=tag:efi64,tag:!ipxe,ipxe.efi",
        "dhcp-boot=tag:ipxe,http://10.0.0.5:8080/boot/ipxe?mac=${netX/mac}",
        "dhcp-no-override",
    ]
    no_mask = lines(dnsmasq_config(DnsmasqSettings("br0", parse_range("10.9.0.1,10.9.0.2"), ONE)))
    assert "dhcp-range=10.9.0.1,10.9.0.2,1h" in no_mask


def test_several_servers_send_ipxe_to_the_chain_script():
    text = dnsmasq_config(DnsmasqSettings("eth1", PROXY, TWO))
    assert f"dhcp-boot=tag:ipxe,{CHAIN_SCRIPT}" in lines(text)
    assert "# farm servers: http://10.0.0.5:8080 https://farm-2.example.org:8443" in text
    assert "/boot/ipxe" not in "".join(lines(text))


def test_a_boot_url_too_long_for_dhcp_is_refused():
    long_name = ".".join(["a" * 60] * 2)  # 121 characters: the URL is 160
    with pytest.raises(ValueError, match="longer than the 127 characters"):
        ipxe_boot_file((parse_server_url(f"http://{long_name}:8080"),), FULL)
    # ... but through the chain script it is fine: TFTP files have no such bound.
    several = (*ONE, parse_server_url(f"http://{long_name}:8080"))
    assert ipxe_boot_file(several, FULL) == CHAIN_SCRIPT
    with pytest.raises(ValueError, match="no farm server"):
        ipxe_boot_file((), PROXY)


DNSMASQ = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"


@pytest.mark.skipif(
    not os.path.exists(DNSMASQ), reason="dnsmasq not installed (scripts/install.sh --test)"
)
@pytest.mark.parametrize(
    "settings",
    [
        DnsmasqSettings("eth1", PROXY, ONE),
        DnsmasqSettings("eth1", PROXY, TWO, "/srv/tftp"),
        DnsmasqSettings("br-boot", FULL, ONE),
        DnsmasqSettings("vlan.12", parse_range("10.9.0.1,10.9.0.9"), TWO),
        DnsmasqSettings("eth0", ProxyDhcp(parse_subnet("10.0.0.0/8")), TWO),
    ],
    ids=["proxy", "proxy-several", "full", "full-nomask-several", "proxy-wide"],
)
def test_dnsmasq_accepts_the_configuration(settings, tmp_path):
    conf = tmp_path / "dnsmasq.conf"
    conf.write_text(dnsmasq_config(settings))
    done = subprocess.run(
        [DNSMASQ, "--test", f"--conf-file={conf}"], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0 and "syntax check OK" in done.stderr, done.stderr


@pytest.mark.skipif(
    not os.path.exists(DNSMASQ), reason="dnsmasq not installed (scripts/install.sh --test)"
)
def test_dnsmasq_test_can_fail(tmp_path):
    """The check above is a real one: a broken line fails it."""
    conf = tmp_path / "dnsmasq.conf"
    conf.write_text(dnsmasq_config(DnsmasqSettings("eth1", PROXY, ONE)) + "dhcp-range=nonsense\n")
    done = subprocess.run(
        [DNSMASQ, "--test", f"--conf-file={conf}"], capture_output=True, text=True
    )
    assert done.returncode != 0
