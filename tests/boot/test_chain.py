"""The iPXE script that tries the farm's servers in turn: one `chain` per
server in the given order, each falling through to the next on failure,
the last to a wait and a new round."""

from __future__ import annotations

import pytest

from vdfarm.boot.chain import boot_url, chain_script
from vdfarm.boot.inputs import parse_server_url

A = parse_server_url("http://10.0.0.5:8080")
B = parse_server_url("https://farm-2.example.org")


def test_a_servers_boot_url_names_the_nic_mac_for_ipxe_to_fill():
    assert boot_url(A) == "http://10.0.0.5:8080/boot/ipxe?mac=${netX/mac}"
    assert boot_url(B) == "https://farm-2.example.org/boot/ipxe?mac=${netX/mac}"


def test_the_script_tries_each_server_in_turn_then_starts_again():
    script = chain_script([A, B])
    assert script.startswith("#!ipxe\n") and script.endswith("\n")
    commands = [line for line in script.splitlines() if not line.startswith("#")]
    assert commands == [
        ":server1",
        "echo vdfarm: asking http://10.0.0.5:8080 for this device's boot script",
        f"chain --autofree {boot_url(A)} || goto server2",
        ":server2",
        "echo vdfarm: asking https://farm-2.example.org for this device's boot script",
        f"chain --autofree {boot_url(B)} || goto none",
        ":none",
        "echo vdfarm: no farm server answered; trying again in 10 seconds",
        "sleep 10",
        "goto server1",
    ]


def test_one_server_still_makes_a_script_and_none_is_refused():
    assert f"chain --autofree {boot_url(A)} || goto none" in chain_script([A])
    with pytest.raises(ValueError, match="no farm server"):
        chain_script([])
