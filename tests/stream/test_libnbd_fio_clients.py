"""The stream service against libnbd's tools (nbdinfo, nbdcopy) and fio."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from tests.conftest import sha256
from tests.stream.conftest import run, store_file

ADVERTISED = [
    "connect",
    "read",
    "write",
    "flush",
    "fua",
    "trim",
    "zero",
    "fast-zero",
    "cache",
    "multi-conn",
    "structured-reply",
    "df",
]


def test_nbdinfo_can_every_advertised_flag(served):
    for export in ("pc1", "solo"):
        for flag in ADVERTISED:
            proc = run("nbdinfo", "--can", flag, served.uri(export), check=False)
            assert proc.returncode == 0, f"{export} should advertise {flag}: {proc.stderr}"


def test_nbdinfo_sees_the_vdisk_view_read_only(served):
    assert (
        run("nbdinfo", "--is", "read-only", served.uri("vdisk/golden"), check=False).returncode == 0
    )
    for flag in ("write", "trim", "zero", "fua"):
        proc = run("nbdinfo", "--can", flag, served.uri("vdisk/golden"), check=False)
        assert proc.returncode == 2, f"read-only view must not advertise {flag}"


def test_nbdinfo_reports_size_and_writability(served, test_image):
    info = json.loads(run("nbdinfo", "--json", served.uri("pc1")).stdout)
    export = info["exports"][0]
    assert export["export-size"] == test_image.stat().st_size
    assert export["is_read_only"] is False
    assert info["protocol"] == "newstyle-fixed"
    assert "golden" in export.get("description", "")


def test_nbdinfo_list_shows_the_devices_only_when_asked(served, serve_copy):
    out = run("nbdinfo", "--list", "--json", f"nbd://127.0.0.1:{served.port}").stdout
    assert json.loads(out)["exports"] == []  # names are for those who know them
    listing = serve_copy(extra_args=["--list-exports"])
    out = run("nbdinfo", "--list", "--json", f"nbd://127.0.0.1:{listing.port}").stdout
    names = {e["export-name"] for e in json.loads(out)["exports"]}
    assert {"pc1", "solo"} <= names


def test_nbdinfo_map_agrees_with_the_file(served):
    nbd_map = json.loads(run("nbdinfo", "--map", "--json", served.uri("solo")).stdout)
    qemu_map = json.loads(
        run("qemu-img", "map", "--output=json", "-f", "raw", str(store_file(served, "mine"))).stdout
    )

    def data_ranges_nbd(entries):
        return _merge((e["offset"], e["length"], e["type"] & 1 == 0) for e in entries)

    def data_ranges_qemu(entries):
        return _merge((e["start"], e["length"], e["data"]) for e in entries)

    assert data_ranges_nbd(nbd_map) == data_ranges_qemu(qemu_map)


def _merge(entries) -> list[tuple[int, int, bool]]:
    out: list[list] = []
    for start, length, data in entries:
        if out and out[-1][2] == data and out[-1][1] == start:
            out[-1][1] += length
        else:
            out.append([start, start + length, data])
    return [tuple(e) for e in out]


@pytest.mark.parametrize("connections", ["1", "4"])
def test_nbdcopy_reads_the_export(served, test_image, tmp_path, connections):
    out = tmp_path / "copy.raw"
    run("nbdcopy", f"--connections={connections}", served.uri("pc1"), str(out))
    assert sha256(out) == sha256(test_image)


def test_nbdcopy_round_trip_into_a_private_vdisk(served, tmp_path):
    src = tmp_path / "new.raw"
    size = store_file(served, "mine").stat().st_size
    with open(src, "wb") as f:
        f.write(os.urandom(size))
    run("nbdcopy", "--connections=4", str(src), served.uri("solo"))
    assert sha256(store_file(served, "mine")) == sha256(src)
    back = tmp_path / "back.raw"
    run("nbdcopy", served.uri("solo"), str(back))
    assert sha256(back) == sha256(src)


def fio(uri: str, *extra: str, cwd) -> dict:
    """Run fio's nbd engine in `cwd` (it leaves verify state files there)."""
    argv = [
        "fio",
        "--name=t",
        "--ioengine=nbd",
        f"--uri={uri}",
        "--bs=4k",
        "--size=16m",
        "--iodepth=16",
        "--randseed=42",
        "--output-format=json",
        *extra,
    ]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=cwd)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(proc.stdout[proc.stdout.index("{") :])
    job = result["jobs"][0]
    assert job["error"] == 0, job
    return job


@pytest.mark.parametrize("export", ["pc1", "solo"])
def test_fio_random_write_with_verification(served, export, tmp_path):
    job = fio(
        served.uri(export),
        "--rw=randwrite",
        "--verify=crc32c",
        "--verify_fatal=1",
        "--do_verify=1",
        cwd=tmp_path,
    )
    assert job["write"]["io_bytes"] >= 16 << 20
    assert job["read"]["io_bytes"] >= 16 << 20  # the verify pass read it all back


def test_fio_random_read_verifies_what_an_earlier_run_wrote(served, tmp_path):
    """Private mode keeps data across connections: a second fio run reads
    the first run's blocks in random order and checks every checksum."""
    fio(served.uri("solo"), "--rw=randwrite", "--verify=crc32c", "--do_verify=0", cwd=tmp_path)
    job = fio(
        served.uri("solo"),
        "--rw=randwrite",
        "--verify=crc32c",
        "--verify_only=1",
        "--verify_fatal=1",
        cwd=tmp_path,
    )
    assert job["read"]["io_bytes"] >= 16 << 20


def test_fio_random_read(served, tmp_path):
    job = fio(served.uri("pc1"), "--rw=randread", "--runtime=2", "--time_based", cwd=tmp_path)
    assert job["read"]["io_bytes"] > 0


def test_big_pipelined_reads_to_a_slow_reader_arrive_intact(served, test_image):
    """32 MiB reads go out with sendfile(2); a client that reads slowly makes
    the socket fill up mid-reply, so the rest must queue in order."""
    import time

    from tests.stream import rawclient as rc

    c = rc.RawClient(served.port, timeout=60)
    c.connect("pc1")
    offsets = [0, 32 << 20, 4096, (16 << 20) + 512]
    cookies = [
        c.request(rc.CMD_READ, off, 32 << 20 if off < (32 << 20) else 16 << 20)
        for off in offsets[:2]
    ]
    cookies += [c.request(rc.CMD_READ, off, 8 << 20) for off in offsets[2:]]
    time.sleep(0.5)  # let the server fill the socket
    source = test_image.read_bytes()
    lengths = {
        cookies[0]: (0, 32 << 20),
        cookies[1]: (32 << 20, 16 << 20),
        cookies[2]: (4096, 8 << 20),
        cookies[3]: ((16 << 20) + 512, 8 << 20),
    }
    for _ in cookies:
        err, cookie, _ = c.reply()
        assert err == 0
        offset, length = lengths[cookie]
        data = bytearray()
        while len(data) < length:
            data += c.sock.recv(min(65536, length - len(data)))
            if len(data) % (4 << 20) < 65536:
                time.sleep(0.01)  # a slow reader
        assert bytes(data) == source[offset : offset + length], f"read at {offset} corrupted"
    c.close()
