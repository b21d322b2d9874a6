"""iPXE scripts as text: what may stand in a script unchanged, how an echo
line is made safe, the boot and the retry scripts, and the device's
kernel parameters (the ones the netboot sample's /init reads)."""

from __future__ import annotations

import pytest

from vdfarm.image import netboot
from vdfarm.service.errors import Invalid
from vdfarm.service.ipxe import check_base_url, check_mac
from vdfarm.service.ipxe_script import (
    MAX_ECHO,
    UnsafeScriptText,
    boot_script,
    check_script_text,
    device_params,
    echo_text,
    retry_script,
)

KERNEL = "http://10.0.2.2:8080/boot/files/w/0/kernel?sha256=ab&mac=aa:bb:cc:00:00:01"
INITRD = "http://10.0.2.2:8080/boot/files/w/0/initrd?sha256=cd&mac=aa:bb:cc:00:00:01"


@pytest.mark.parametrize(
    "text",
    [
        "console=ttyS0 ${net0/ip}",
        "a || shell",
        "a && shell",
        "a\nshell",
        "a\rshell",
        "a\\b",
        'init="/bin/sh"',
        "root='x'",
        "#!ipxe",
        "é",
        "a\tb",
    ],
)
def test_text_ipxe_would_interpret_is_refused(text):
    with pytest.raises(UnsafeScriptText, match=r"the line holds .*U\+"):
        check_script_text("the line", text)


def test_plain_text_and_query_strings_pass():
    for text in (KERNEL, "console=ttyS0,115200 quiet panic=1 ip=::::pc1:eth0:dhcp", ""):
        assert check_script_text("x", text) == text


def test_an_echo_line_is_always_safe_and_short():
    hostile = "no device ${net0/mac} || shell && x \\ #\n\r\x00é" + "y" * 500
    line = echo_text(hostile)
    assert check_script_text("echo", line) == line and len(line) == MAX_ECHO
    assert "$" not in line and "||" not in line and "\n" not in line
    assert echo_text("version 0 of vDisk w-1.2 (vdfarm vdisk boot w)") == (
        "version 0 of vDisk w-1.2 (vdfarm vdisk boot w)"
    )


def test_the_boot_script_loads_the_kernel_with_its_line_and_the_initramfs():
    script = boot_script(KERNEL, INITRD, "console=ttyS0 vdfarm.export=pc1", "pc1 boots")
    assert script == (
        "#!ipxe\n"
        "echo vdfarm: pc1 boots\n"
        f"kernel {KERNEL} console=ttyS0 vdfarm.export=pc1\n"
        f"initrd {INITRD}\n"
        "boot\n"
    )
    assert boot_script(KERNEL, None, "", "x").splitlines()[2:] == [f"kernel {KERNEL}", "boot"]
    with pytest.raises(UnsafeScriptText, match="the kernel command line"):
        boot_script(KERNEL, INITRD, "a ${b}", "x")
    with pytest.raises(UnsafeScriptText, match="the initramfs URL"):
        boot_script(KERNEL, INITRD + "||x", "", "x")


def test_the_retry_script_says_why_waits_and_chains_the_same_url():
    url = "http://h:1/boot/ipxe?mac=aa:bb:cc:00:00:01"
    assert retry_script("unknown MAC ${x}\nboot", url, 5) == (
        "#!ipxe\n"
        "echo vdfarm: unknown MAC ?{x} boot\n"
        "echo vdfarm: trying again in 5 s\n"
        "sleep 5\n"
        f"chain --autofree {url}\n"
    )


def test_the_device_parameters_are_the_ones_the_sample_reads():
    params = device_params("10.0.2.2", 10809, "pc1", ["http://10.0.2.2:8080", "http://b:8080"])
    assert params == (
        "vdfarm.server=10.0.2.2:10809 vdfarm.export=pc1 vdfarm.id=pc1 "
        "vdfarm.farm=http://10.0.2.2:8080,http://b:8080"
    )
    assert params.startswith(netboot.device_cmdline("", "10.0.2.2:10809", "pc1", "pc1"))
    assert device_params("srv", None, "pc1", []) == (
        "vdfarm.server=srv vdfarm.export=pc1 vdfarm.id=pc1"
    )


def test_macs_and_base_urls():
    assert check_mac("AA-BB-CC-00-00-01") == "aa:bb:cc:00:00:01"
    for bad in (None, "", "aa:bb", "${net0/mac}", "aa:bb:cc:00:00:01 x", "a" * 100):
        with pytest.raises(Invalid):
            check_mac(bad)
    for good in ("http://10.0.2.2:8080", "https://farm.example", "http://[fe80::1]:80"):
        assert check_base_url(good) == good
    for bad in ("http://a b", "http://x/y", "ftp://x", "http://x:port", "http://x||y"):
        with pytest.raises(Invalid, match="invalid Host"):
            check_base_url(bad)
