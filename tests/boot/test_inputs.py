"""What an admin types, checked: every value is refused in one line unless
it is of a shape that is safe to write as is into a dnsmasq line and an
iPXE line; nothing with a newline, a control or non-ASCII character gets
through any parser."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vdfarm.boot.inputs import (
    FullDhcp,
    ServerUrl,
    parse_interface,
    parse_range,
    parse_server_url,
    parse_subnet,
    parse_tftp_root,
)

PARSERS = [parse_interface, parse_subnet, parse_range, parse_server_url, parse_tftp_root]


@pytest.mark.parametrize("name", ["eth0", "enp3s0f1", "br-boot", "vlan.12", "a_b", "x" * 15])
def test_plain_interface_names_pass(name):
    assert parse_interface(name) == name


@pytest.mark.parametrize(
    "name, reason",
    [
        ("", "empty"),
        ("x" * 16, "at most 15"),
        ("eth0\n", "control"),
        ("eth 0", "space"),
        ("eth0,lo", "invalid interface name"),
        ("eth*", "invalid interface name"),
        ("a/b", "invalid interface name"),
        ("..", "invalid interface name"),
        ("éth0", "non-ASCII"),
    ],
)
def test_bad_interface_names_are_refused(name, reason):
    with pytest.raises(ValueError, match=reason):
        parse_interface(name)


def test_a_subnet_is_its_network():
    assert parse_subnet("192.168.1.0/24") == ipaddress.IPv4Network("192.168.1.0/24")
    assert parse_subnet("192.168.1.77/24") == ipaddress.IPv4Network("192.168.1.0/24")
    assert parse_subnet("10.0.0.0/8").prefixlen == 8


@pytest.mark.parametrize(
    "value, reason",
    [
        ("192.168.1.0", "ADDRESS/PREFIX"),
        ("192.168.1.0/33", "IPv4 ADDRESS/PREFIX"),
        ("192.168.1.0/31", "8 to 30"),
        ("10.0.0.0/7", "8 to 30"),
        ("fd00::/64", "IPv4"),
        ("192.168.1.0/24\ndhcp-boot=evil", "control"),
    ],
)
def test_bad_subnets_are_refused(value, reason):
    with pytest.raises(ValueError, match=reason):
        parse_subnet(value)


def test_ranges():
    assert parse_range("10.1.0.100,10.1.0.200") == FullDhcp(
        ipaddress.IPv4Address("10.1.0.100"), ipaddress.IPv4Address("10.1.0.200")
    )
    full = parse_range("10.1.0.100,10.1.0.100,255.255.255.0")
    assert full.netmask == ipaddress.IPv4Address("255.255.255.0")


@pytest.mark.parametrize(
    "value, reason",
    [
        ("10.1.0.100", "START,END"),
        ("10.1.0.100,10.1.0.200,255.255.255.0,1h", "START,END"),
        ("10.1.0.200,10.1.0.100", "comes after"),
        ("10.1.0.x,10.1.0.100", "range start"),
        ("10.1.0.1,10.1.0.300", "range end"),
        ("10.1.0.1,10.1.0.3,255.0.255.0", "contiguous"),
        ("10.1.0.1,10.1.0.3,255.255.255.254", "too small"),
        ("10.1.0.100,10.1.1.100,255.255.255.0", "is not in 10.1.0.0/24"),
        ("10.1.0.0,10.1.0.100,255.255.255.0", "network and broadcast"),
        ("10.1.0.10,10.1.0.255,255.255.255.0", "network and broadcast"),
        ("127.0.0.2,127.0.0.9", "not addresses a device"),
        ("0.0.0.0,10.0.0.1", "not addresses a device"),
        ("10.1.0.1,10.1.0.9\n", "control"),
    ],
)
def test_bad_ranges_are_refused(value, reason):
    with pytest.raises(ValueError, match=reason):
        parse_range(value)


@pytest.mark.parametrize(
    "value, expected",
    [
        ("http://10.0.0.5:8080", "http://10.0.0.5:8080"),
        ("http://10.0.0.5:8080/", "http://10.0.0.5:8080"),
        ("HTTP://farm-1.example.org", "http://farm-1.example.org"),
        ("https://farm1:8443", "https://farm1:8443"),
        ("http://[fd00::5]:8080", "http://[fd00::5]:8080"),
        ("http://[FD00::5]", "http://[fd00::5]"),
    ],
)
def test_server_urls(value, expected):
    assert str(parse_server_url(value)) == expected


@pytest.mark.parametrize(
    "value, reason",
    [
        ("10.0.0.5:8080", "http://HOST"),
        ("ftp://10.0.0.5", "http://HOST"),
        ("tftp://10.0.0.5/x", "http://HOST"),
        ("http:/10.0.0.5", "http://HOST"),
        ("http://10.0.0.5:8080/boot/ipxe", "vdfarm adds /boot/ipxe"),
        ("http://10.0.0.5:8080?mac=1", "vdfarm adds"),
        ("http://10.0.0.5:8080#x", "vdfarm adds"),
        ("http://admin:pw@10.0.0.5", "no user name"),
        ("http://10.0.0.5:0", "1 to 65535"),
        ("http://10.0.0.5:70000", "1 to 65535"),
        ("http://10.0.0.5:80x", "bad port"),
        ("http://:8080", "no host"),
        ("http://10.0.0.256:8080", "bad IPv4"),
        ("http://[fd00::zz]:8080", "bad IPv6"),
        ("http://farm_1:8080", "bad host name"),
        ("http://-farm:8080", "bad host name"),
        ("http://a..b:8080", "bad host name"),
        ("http://farm;reboot:8080", "bad host name"),
        ("http://farm${x}:8080", "bad host name"),
        ("http://farm\n:8080", "control"),
        ("http://farm\t:8080", "control"),
        ("http://farm :8080", "space"),
        ("http://farm,10.0.0.1", "bad host name"),
        ("http://" + "a" * 300, "longer than 200"),
    ],
)
def test_bad_server_urls_are_refused(value, reason):
    with pytest.raises(ValueError, match=reason):
        parse_server_url(value)


def test_a_server_url_is_a_value():
    assert parse_server_url("http://f:1/") == ServerUrl("http", "f", 1)
    assert len({parse_server_url("http://f:1"), parse_server_url("HTTP://f:1/")}) == 1


@pytest.mark.parametrize("value", ["/srv/tftp", "/srv/tftp/", "/var/lib/vdfarm/pxe-1.0", "/"])
def test_tftp_roots(value):
    assert parse_tftp_root(value) == (value.rstrip("/") or "/")


@pytest.mark.parametrize(
    "value, reason",
    [
        ("srv/tftp", "absolute"),
        ("/srv/tftp,eth0", "absolute path of letters"),
        ("/srv/tftp #x", "space"),
        ('/srv/"x"', "absolute path of letters"),
        ("/srv/../etc", "no '..'"),
        ("/srv/tftp\nenable-ra", "control"),
        ("/" + "a" * 1100, "longer than 1024"),
    ],
)
def test_bad_tftp_roots_are_refused(value, reason):
    with pytest.raises(ValueError, match=reason):
        parse_tftp_root(value)


@given(st.text(max_size=40))
def test_no_parser_lets_a_line_break_or_control_through(text):
    """Any text: each parser answers a value whose text is printable ASCII
    without spaces, or raises ValueError; never anything else."""
    for parse in PARSERS:
        try:
            value = parse(text)
        except ValueError:
            continue
        shown = str(value) if not isinstance(value, FullDhcp) else text
        assert all(33 <= ord(c) <= 126 for c in shown), (parse.__name__, text)
