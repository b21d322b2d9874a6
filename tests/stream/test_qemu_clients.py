"""The stream service against qemu's own NBD client (qemu-img, qemu-io)."""

from __future__ import annotations

import json
import subprocess

from tests.conftest import sha256
from tests.stream.conftest import run, store_file


def qemu_io(uri: str, *commands: str) -> str:
    argv = ["qemu-io", "-f", "raw"]
    for cmd in commands:
        argv += ["-c", cmd]
    proc = run(*argv, uri)
    out = proc.stdout + proc.stderr
    assert "failed" not in out.lower(), out
    assert "error" not in out.lower(), out
    return out


def test_compare_standard_export_with_source(served, test_image):
    run("qemu-img", "compare", "-f", "raw", "-F", "raw", served.uri("pc1"), str(test_image))


def test_mac_address_resolves_to_the_device(served, test_image):
    run(
        "qemu-img",
        "compare",
        "-f",
        "raw",
        "-F",
        "raw",
        served.uri("52-54-00-12-34-01"),
        str(test_image),
    )


def test_standard_writes_go_to_the_cache_and_vanish_after_disconnect(served, test_image):
    vdisk_file = store_file(served, "golden")
    before = sha256(vdisk_file)
    qemu_io(
        served.uri("pc1"),
        "write -P 0xab 0 64k",
        "read -P 0xab 0 64k",
        "write -P 0xcd 100000 5000",
        "read -P 0xcd 100000 5000",
        "write -z 1M 128k",
        "read -P 0 1M 128k",
        "discard 4M 64k",
        "read -P 0 4M 64k",
        "write -f -P 0x11 8M 4k",
        "read -P 0x11 8M 4k",
        "flush",
    )
    assert sha256(vdisk_file) == before
    # A clean disconnect ended the session: the next connection sees the vDisk.
    run("qemu-img", "compare", "-f", "raw", "-F", "raw", served.uri("pc1"), str(test_image))


def test_two_devices_never_see_each_others_writes(served):
    # qemu-io keeps one connection open across its commands; run both at once.
    p1 = subprocess.Popen(
        [
            "qemu-io",
            "-f",
            "raw",
            "-c",
            "write -P 0x01 0 1M",
            "-c",
            "read -P 0x01 0 1M",
            served.uri("pc1"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    out2 = qemu_io(served.uri("pc2"), "write -P 0x02 0 1M", "read -P 0x02 0 1M")
    out1, _ = p1.communicate(60)
    assert p1.returncode == 0 and "failed" not in out1.lower(), out1
    assert "verification failed" not in out2.lower()


def test_private_writes_reach_the_vdisk_file(served):
    qemu_io(
        served.uri("solo"),
        "write -P 0x5a 1M 64k",
        "write -f -P 0x5b 2M 4k",
        "write -z 3M 64k",
        "flush",
    )
    data = store_file(served, "mine").read_bytes()
    assert data[1 << 20 : (1 << 20) + 65536] == b"\x5a" * 65536
    assert data[2 << 20 : (2 << 20) + 4096] == b"\x5b" * 4096
    assert data[3 << 20 : (3 << 20) + 65536] == bytes(65536)
    # and a new connection reads them back
    qemu_io(served.uri("solo"), "read -P 0x5a 1M 64k", "read -P 0x5b 2M 4k")


def _allocation(map_json: str) -> list[tuple[int, int, bool]]:
    """Merged (start, end, has_data) runs of a `qemu-img map --output=json`."""
    runs: list[list] = []
    for e in json.loads(map_json):
        data = bool(e["data"]) and not e.get("zero", False)
        if runs and runs[-1][2] == data and runs[-1][1] == e["start"]:
            runs[-1][1] = e["start"] + e["length"]
        else:
            runs.append([e["start"], e["start"] + e["length"], data])
    return [tuple(r) for r in runs]


def test_qemu_img_map_agrees_with_the_file(served):
    over_nbd = run("qemu-img", "map", "--output=json", "-f", "raw", served.uri("solo")).stdout
    on_disk = run(
        "qemu-img", "map", "--output=json", "-f", "raw", str(store_file(served, "mine"))
    ).stdout
    assert _allocation(over_nbd) == _allocation(on_disk)
    assert any(not data for _, _, data in _allocation(over_nbd)), "test image has holes"
    assert any(data for _, _, data in _allocation(over_nbd))


def test_unknown_export_is_refused_with_a_message(served):
    proc = run("qemu-img", "info", served.uri("nosuchdevice"), check=False)
    assert proc.returncode != 0
    assert "nosuchdevice" in proc.stderr


def test_private_vdisk_refuses_a_second_device(served):
    served.cli("device", "add", "intruder", "--vdisk", "mine")
    holder = subprocess.Popen(
        ["qemu-io", "-f", "raw", served.uri("solo")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        # wait until the holder is connected (its lock is in the database)
        for _ in range(100):
            locks = served.cli("--json", "lock", "list").stdout
            if "solo" in locks:
                break
            subprocess.run(["sleep", "0.1"])
        proc = run("qemu-io", "-f", "raw", "-c", "read 0 4k", served.uri("intruder"), check=False)
        out = proc.stdout + proc.stderr
        assert proc.returncode != 0 or "failed" in out.lower()
        assert "locked" in out
    finally:
        holder.communicate("quit\n", timeout=30)
