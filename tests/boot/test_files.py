"""The host side: an interface's subnet read from the kernel, and the
directory --write fills (configuration, chain script, links to Debian's
iPXE loaders), rewritten in place and refused whole when a loader is
missing."""

from __future__ import annotations

import ipaddress
import os

import pytest

from vdfarm.boot.files import interface_network, missing_loaders, write_boot_dir


def test_the_loopback_interfaces_subnet():
    assert interface_network("lo") == ipaddress.IPv4Network("127.0.0.0/8")
    with pytest.raises(OSError):
        interface_network("vdfarm-none0")


@pytest.fixture
def ipxe_dir(tmp_path):
    """A stand-in for /usr/lib/ipxe."""
    d = tmp_path / "ipxe"
    d.mkdir()
    (d / "undionly.kpxe").write_bytes(b"bios loader")
    (d / "ipxe.efi").write_bytes(b"uefi loader")
    return d


def test_write_fills_the_directory_and_links_the_loaders(tmp_path, ipxe_dir):
    out = tmp_path / "pxe" / "boot"
    written = write_boot_dir(out, "port=0\n", "#!ipxe\n", str(ipxe_dir))
    assert [p.name for p in written] == ["dnsmasq.conf", "vdfarm.ipxe", "undionly.kpxe", "ipxe.efi"]
    assert (out / "dnsmasq.conf").read_text() == "port=0\n"
    assert (out / "vdfarm.ipxe").read_text() == "#!ipxe\n"
    assert os.readlink(out / "undionly.kpxe") == str(ipxe_dir / "undionly.kpxe")
    assert (out / "ipxe.efi").read_bytes() == b"uefi loader"
    assert (out / "dnsmasq.conf").stat().st_mode & 0o777 == 0o644
    assert missing_loaders(str(out)) == []
    # Again with one server: the stale chain script goes, the rest is rewritten.
    write_boot_dir(out, "port=0\ninterface=x\n", None, str(ipxe_dir))
    assert sorted(p.name for p in out.iterdir()) == ["dnsmasq.conf", "ipxe.efi", "undionly.kpxe"]
    assert (out / "dnsmasq.conf").read_text() == "port=0\ninterface=x\n"


def test_a_missing_loader_writes_nothing(tmp_path, ipxe_dir):
    (ipxe_dir / "ipxe.efi").unlink()
    with pytest.raises(FileNotFoundError, match="install Debian's ipxe package"):
        write_boot_dir(tmp_path / "out", "port=0\n", None, str(ipxe_dir))
    assert not (tmp_path / "out").exists()
    assert missing_loaders(str(ipxe_dir)) == [str(ipxe_dir / "ipxe.efi")]


def test_a_file_where_the_directory_should_be_is_refused(tmp_path, ipxe_dir):
    (tmp_path / "out").write_text("x")
    with pytest.raises(OSError):
        write_boot_dir(tmp_path / "out", "port=0\n", None, str(ipxe_dir))
    assert (tmp_path / "out").read_text() == "x"
