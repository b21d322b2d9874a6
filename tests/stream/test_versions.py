"""vDisk versions over a real `vdfarm server run`, seen by real clients.

Production (prod), test (tst) and maintenance (mnt, mnt2) devices share one
standard vDisk. Every step is checked from outside the server: `qemu-img
check` and `qemu-img info --backing-chain` on every file of its store
directory, and each device's export compared (`qemu-img compare`, `nbdcopy`)
with qemu's own flattening of its version's chain (`qemu-img convert`),
independent of vdfarm's qcow2 reader. Writers: qemu-io, and a raw NBD client
that knows which of its writes a FLUSH (or FUA) made durable before a kill -9.
Each test runs on one database kind (`on_kind`): the chain's tests on
PostgreSQL, the single-version cycles on SQLite.
"""

from __future__ import annotations

import filecmp
import itertools
import os
import random
import threading

import pytest

from tests.conftest import Farm
from tests.service.helpers import assert_qemu_clean
from tests.stream import rawclient as rc
from tests.stream.conftest import (
    farm_copy,
    flatten,
    lock_is_free,
    new_farm,
    on_kind,
    run,
    version_file,
    version_rows,
    wait_until,
)
from tests.stream.crashwriter import REGION, CrashWriter

VDISK = "gold"
DEVICE_TYPES = {"prod": "production", "tst": "test", "mnt": "maintenance", "mnt2": "maintenance"}
K, M = 1024, 1024 * 1024


# -- helpers -------------------------------------------------------------------


def qemu_io(target: str, *commands: str, fmt: str = "raw", read_only: bool = False) -> str:
    """Run qemu-io COMMANDS on TARGET (an NBD URI or a file); every one must succeed."""
    argv = ["qemu-io", "-f", fmt] + (["-r"] if read_only else [])
    for command in commands:
        argv += ["-c", command]
    out = run(*argv, target).stdout
    assert "failed" not in out.lower() and "error" not in out.lower(), out
    return out


def disconnect(client: rc.RawClient) -> None:
    """A clean NBD_CMD_DISC: the server ends the device's session at once."""
    client.request(rc.CMD_DISC, 0, 0)
    assert client.is_closed_by_server()
    client.close()


class Checker:
    """After each step: every store file passes qemu-img, every device reads
    exactly qemu's flattening of the version its type boots."""

    def __init__(self, farm: Farm, tmp_path) -> None:
        self.farm, self.tmp, self.count = farm, tmp_path, itertools.count()
        self.store = farm.data_dir / "store" / VDISK

    def step(self, expected: dict[str, int]) -> None:
        rows = version_rows(self.farm, VDISK)
        boots = {t: r["number"] for r in rows for t in r["boots"]}
        for device, number in expected.items():
            assert boots[DEVICE_TYPES[device]] == number, (device, rows)
        assert_qemu_clean(self.store)
        files = {r["number"]: self.store / r["file"] for r in rows}
        for number in sorted(set(expected.values())):
            flat = flatten(files[number], self.tmp / f"flat-{next(self.count)}.raw")
            for device in (d for d, n in expected.items() if n == number):
                run(
                    "qemu-img",
                    "compare",
                    "-f",
                    "raw",
                    "-F",
                    "raw",
                    self.farm.uri(device),
                    str(flat),
                )
            flat.unlink()
        if any(DEVICE_TYPES[d] == "maintenance" for d in expected):
            # a maintenance device on the open version held the lock: let it go
            wait_until(lambda: lock_is_free(self.farm, VDISK), "maintenance session ended")

    def flat(self, number: int):
        """qemu's flattening of version NUMBER now (kept for later comparisons)."""
        return flatten(
            version_file(self.farm, VDISK, number),
            self.tmp / f"ref-{number}-{next(self.count)}.raw",
        )


@pytest.fixture(scope="module")
def versions_template(db_kind, tmp_path_factory, test_image):
    """vDisk gold (standard, the test image) for prod, tst, mnt and mnt2."""
    with new_farm(db_kind, tmp_path_factory.mktemp("versions") / "data") as farm:
        farm.cli("init")
        farm.cli("vdisk", "import", VDISK, str(test_image), "--mode", "standard")
        for device, device_type in DEVICE_TYPES.items():
            farm.cli("device", "add", device, "--vdisk", VDISK, "--type", device_type)
        yield farm


# What each version of the chain template writes (qemu-io commands through mnt):
# overlapping ranges, unaligned bytes, zeroes and discards over backing data.
CHAIN_WRITES = {
    1: ("write -P 0x11 0 192k", "write -P 0x12 4160k 64k", "write -P 0x13 20M 1M"),
    2: ("write -P 0x21 64k 64k", "write -P 0x22 5000 3000", "write -P 0x23 8M 2M"),
    3: (
        "write -z 128k 64k",
        "discard 20M 512k",
        "write -P 0x31 12345 67890",
        "write -P 0x32 63M 1M",
    ),
}


def cycle(farm: Farm, commands: tuple[str, ...], to: str = "production") -> None:
    """Open a version, write COMMANDS into it through mnt, promote it TO."""
    farm.cli("version", "new", VDISK)
    qemu_io(farm.uri("mnt"), *commands, "flush")
    wait_until(lambda: lock_is_free(farm, VDISK), "mnt's session ended")
    farm.cli("version", "promote", VDISK, "--to", to)


@pytest.fixture(scope="module")
def chain_template(tmp_path_factory, versions_template):
    """gold with versions 1, 2, 3 (all production) written by a real server."""
    with farm_copy(versions_template, tmp_path_factory.mktemp("chain") / "data") as farm:
        farm.start(grace=2)
        for number in sorted(CHAIN_WRITES):
            cycle(farm, CHAIN_WRITES[number])
        farm.stop()
        yield farm


@pytest.fixture
def vfarm(tmp_path, versions_template):
    with farm_copy(versions_template, tmp_path / "data") as farm:
        farm.start(grace=2)
        yield farm


@pytest.fixture
def cfarm(tmp_path, chain_template):
    with farm_copy(chain_template, tmp_path / "data") as farm:
        farm.start(grace=2)
        yield farm


# -- the maintenance → test → production cycle ---------------------------------

MARK = ("write -P 0x5c 960k 128k", "write -P 0x5d 4195304 5000")
MARK_READ = ("read -P 0x5c 960k 128k", "read -P 0x5d 4195304 5000")


@on_kind("sqlite")
def test_maintenance_test_production_cycle(vfarm, test_image, tmp_path):
    farm, check = vfarm, Checker(vfarm, tmp_path)
    original = str(test_image)
    assert farm.cli("version", "new", VDISK).stdout.startswith("opened version 1")
    check.step({"prod": 0, "tst": 0, "mnt": 1})

    qemu_io(farm.uri("mnt"), *MARK, "flush", *MARK_READ)
    # The marker is in the maintenance version's own file (read by qemu, not us).
    v1 = version_file(farm, VDISK, 1)
    qemu_io(str(v1), *MARK_READ, fmt="qcow2", read_only=True)
    # While mnt is connected (and has written more), prod and tst read the original.
    holder = rc.RawClient(farm.port)
    holder.connect("mnt")
    assert holder.call(rc.CMD_WRITE, 32 * M, 4096, data=b"\x5e" * 4096)[0] == 0
    assert holder.call(rc.CMD_FLUSH, 0, 0)[0] == 0
    for device in ("prod", "tst"):
        run("qemu-img", "compare", "-f", "raw", "-F", "raw", farm.uri(device), original)
    assert_qemu_clean(farm.data_dir / "store" / VDISK)
    disconnect(holder)
    wait_until(lambda: lock_is_free(farm, VDISK), "mnt's session ended")
    check.step({"prod": 0, "tst": 0, "mnt": 1})

    farm.cli("version", "promote", VDISK, "--to", "test")
    qemu_io(farm.uri("tst"), *MARK_READ, "read -P 0x5e 32M 4k")
    run("qemu-img", "compare", "-f", "raw", "-F", "raw", farm.uri("prod"), original)
    check.step({"prod": 0, "tst": 1, "mnt": 1})

    farm.cli("version", "promote", VDISK, "--to", "production")
    qemu_io(farm.uri("prod"), *MARK_READ)
    check.step({"prod": 1, "tst": 1})

    assert "now test" in farm.cli("version", "revert", VDISK).stdout
    run("qemu-img", "compare", "-f", "raw", "-F", "raw", farm.uri("prod"), original)
    check.step({"prod": 0, "tst": 1})

    farm.cli("version", "promote", VDISK, "--to", "production")
    farm.cli("version", "override", VDISK, "0")
    run("qemu-img", "compare", "-f", "raw", "-F", "raw", farm.uri("prod"), original)
    check.step({"prod": 0, "tst": 1})
    farm.cli("version", "override", VDISK, "--clear")
    qemu_io(farm.uri("prod"), *MARK_READ)
    check.step({"prod": 1, "tst": 1, "mnt": 1})


@on_kind("sqlite")
def test_the_maintenance_device_holds_the_vdisk_lock(vfarm):
    farm = vfarm
    farm.cli("version", "new", VDISK)
    holder = rc.RawClient(farm.port)
    holder.connect("mnt")
    assert holder.call(rc.CMD_WRITE, 0, 4096, data=b"\x77" * 4096)[0] == 0
    assert holder.call(rc.CMD_FLUSH, 0, 0)[0] == 0
    assert not lock_is_free(farm, VDISK)

    intruder = rc.RawClient(farm.port)
    with pytest.raises(rc.NBDOptionError) as refused:
        intruder.connect("mnt2")
    assert "locked" in refused.value.message
    intruder.close()
    proc = run("qemu-io", "-f", "raw", "-c", "read 0 4k", farm.uri("mnt2"), check=False)
    assert proc.returncode != 0 and "locked" in proc.stdout + proc.stderr, proc.stderr

    store = farm.data_dir / "store" / VDISK
    before = (
        version_rows(farm, VDISK),
        sorted(n for n in os.listdir(store) if not n.startswith(".chunks-")),  # not the cache
        (store / "manifest.json").read_bytes(),
        (store / "v1.qcow2").read_bytes(),
    )
    for verb in (
        ["promote", VDISK, "--to", "test"],
        ["promote", VDISK, "--to", "production"],
        ["delete", VDISK],
    ):
        result = farm.cli("version", *verb, check=False)
        lines = result.stderr.splitlines()
        assert result.returncode != 0 and len(lines) == 1, (verb, result.stderr)
        assert lines[0].startswith("vdfarm: error: ") and "locked" in lines[0], lines[0]
        assert result.stdout == "" and "Traceback" not in result.stderr
    after = (
        version_rows(farm, VDISK),
        sorted(n for n in os.listdir(store) if not n.startswith(".chunks-")),  # not the cache
        (store / "manifest.json").read_bytes(),
        (store / "v1.qcow2").read_bytes(),
    )
    assert after == before

    disconnect(holder)
    wait_until(lambda: lock_is_free(farm, VDISK), "mnt's session ended")
    qemu_io(farm.uri("mnt2"), "read -P 0x77 0 4k")  # now mnt2 may write the version
    wait_until(lambda: lock_is_free(farm, VDISK), "mnt2's session ended")
    farm.cli("version", "promote", VDISK, "--to", "test")
    qemu_io(farm.uri("tst"), "read -P 0x77 0 4k")
    assert_qemu_clean(store)


@on_kind("sqlite")
def test_revert_to_maintenance_reopens_the_version_once_no_device_reads_it(vfarm, tmp_path):
    farm = vfarm
    cycle(farm, ("write -P 0x11 0 64k",), to="test")
    reader = rc.RawClient(farm.port)
    reader.connect("tst")
    assert reader.call(rc.CMD_READ, 0, 4096) == (0, b"\x11" * 4096)
    refused = farm.cli("version", "revert", VDISK, check=False)
    assert refused.returncode != 0 and "tst booted version 1" in refused.stderr
    disconnect(reader)
    wait_until(
        lambda: not any(r["devices"] for r in version_rows(farm, VDISK)), "tst's session ended"
    )
    assert "now maintenance" in farm.cli("version", "revert", VDISK).stdout
    qemu_io(farm.uri("mnt"), "read -P 0x11 0 64k", "write -P 0x22 32k 64k", "flush")
    wait_until(lambda: lock_is_free(farm, VDISK), "mnt's session ended")
    farm.cli("version", "promote", VDISK, "--to", "test")
    qemu_io(farm.uri("tst"), "read -P 0x11 0 32k", "read -P 0x22 32k 64k")
    Checker(farm, tmp_path).step({"prod": 0, "tst": 1, "mnt": 1})


# -- reads through a chain -----------------------------------------------------


@on_kind("postgresql")
def test_every_export_of_a_chain_matches_qemus_flattening(cfarm, tmp_path):
    farm, check = cfarm, Checker(cfarm, tmp_path)
    farm.cli("version", "override", VDISK, "1")
    farm.cli("version", "new", VDISK)  # version 4, open, on 3
    qemu_io(
        farm.uri("mnt"),
        "write -P 0x41 96k 8k",
        "discard 8M 1M",
        "write -z 4M 64k",
        "write -P 0x42 4194000 1000",
        "flush",
    )
    wait_until(lambda: lock_is_free(farm, VDISK), "mnt's session ended")
    expected = {"prod": 1, "tst": 3, "mnt": 4, "vdisk/" + VDISK: 1}
    for export, number in expected.items():
        copy, flat = tmp_path / "copy.raw", check.flat(number)
        run("nbdcopy", farm.uri(export), str(copy))
        assert filecmp.cmp(copy, flat, shallow=False), f"{export} differs from version {number}"
        copy.unlink()
        if export == "tst":
            reads_match(farm, export, flat, count=300)
    assert_qemu_clean(farm.data_dir / "store" / VDISK)


def reads_match(farm: Farm, export: str, flat, count: int) -> None:
    """COUNT reads at random offsets and lengths through EXPORT equal FLAT's bytes."""
    rng = random.Random(7)
    size = flat.stat().st_size
    client = rc.RawClient(farm.port)
    client.connect(export)
    with open(flat, "rb") as ref:
        for _ in range(count):
            length = rng.choice((1, 511, 4096, 65536, 200_000, rng.randrange(1, 1 << 20)))
            offset = rng.randrange(0, size - length)
            error, data = client.call(rc.CMD_READ, offset, length)
            assert error == 0 and data == os.pread(ref.fileno(), length, offset), (
                f"{export}: read of {length} at {offset} differs"
            )
    disconnect(client)


# -- merges under connected devices ------------------------------------------


class Reader(threading.Thread):
    """Reads EXPORT at random offsets until stopped, comparing with FLAT."""

    def __init__(self, farm: Farm, export: str, flat) -> None:
        super().__init__(daemon=True)
        self.client = rc.RawClient(farm.port)
        self.client.connect(export)
        self.export, self.flat = export, flat
        self.stop, self.reads, self.errors = threading.Event(), 0, []

    def run(self) -> None:
        rng = random.Random(self.export)
        size = self.flat.stat().st_size
        try:
            with open(self.flat, "rb") as ref:
                while not self.stop.is_set():
                    length = rng.choice((4096, 65536, 300_000))
                    offset = rng.randrange(0, size - length)
                    error, data = self.client.call(rc.CMD_READ, offset, length)
                    if error or data != os.pread(ref.fileno(), length, offset):
                        self.errors.append((offset, length, error))
                    self.reads += 1
        except (OSError, EOFError, AssertionError) as exc:  # reported by finish()
            self.errors.append(repr(exc))

    def finish(self) -> None:
        self.stop.set()
        self.join(30)
        assert not self.errors, f"{self.export}: {self.errors[:5]}"
        assert self.reads > 0


def merge(farm: Farm, *flags: str) -> dict:
    import json

    return json.loads(farm.cli("--json", "version", "merge", VDISK, *flags).stdout)


@on_kind("postgresql")
def test_merges_under_connected_devices_keep_their_reads_and_files(cfarm, tmp_path):
    farm, check = cfarm, Checker(cfarm, tmp_path)
    store = farm.data_dir / "store" / VDISK
    farm.cli("version", "override", VDISK, "2")  # prod boots the older version 2
    refs = {2: check.flat(2), 3: check.flat(3)}
    readers = {"prod": Reader(farm, "prod", refs[2]), "tst": Reader(farm, "tst", refs[3])}
    for reader in readers.values():
        reader.start()
    wait_until(lambda: all(r.reads > 10 for r in readers.values()), "reads began")

    merged = merge(farm)
    assert (merged["kept"], merged["removed"], merged["retained"]) == (2, [1], ["v1.qcow2"])
    assert (store / "v1.qcow2").exists()
    assert_qemu_clean(store)
    based = merge(farm, "--new-base")
    assert (based["kept"], based["removed"], based["new_base"]) == (2, [0], True)
    assert based["retained"] == ["base.raw"] and (store / "base.raw").exists()
    assert_qemu_clean(store)
    counts = {name: r.reads for name, r in readers.items()}
    wait_until(
        lambda: all(r.reads > counts[n] + 10 for n, r in readers.items()),
        "reads went on after the merges",
    )

    rows = version_rows(farm, VDISK)
    assert [(r["number"], r["parent"], r["file"]) for r in rows] == [
        (2, None, "v2.qcow2"),
        (3, 2, "v3.qcow2"),
    ]
    for number, ref in refs.items():  # the merges kept every version's content
        assert filecmp.cmp(check.flat(number), ref, shallow=False), number

    readers["prod"].finish()
    disconnect(readers["prod"].client)
    wait_until(
        lambda: not any("prod" in r["devices"] for r in version_rows(farm, VDISK)),
        "prod's session ended",
    )
    # tst (on version 3, connected before the merges) may still read them
    assert (store / "v1.qcow2").exists() and (store / "base.raw").exists()
    readers["tst"].finish()
    disconnect(readers["tst"].client)
    wait_until(
        lambda: not (store / "v1.qcow2").exists() and not (store / "base.raw").exists(),
        "retired files deleted once no device may read them",
    )
    check.step({"prod": 2, "tst": 3, "mnt": 3})


# -- kill -9 during a write load on the maintenance version ------------------


@on_kind("sqlite")
def test_kill_9_during_writes_keeps_every_flushed_write(vfarm, test_image, tmp_path):
    farm = vfarm
    farm.cli("version", "new", VDISK)
    writer = CrashWriter(farm.port, "mnt")
    writer.start()
    wait_until(lambda: writer.rounds >= 25 or not writer.is_alive(), "25 flushed rounds")
    farm.stop(sig_kill=True)
    writer.join(30)
    assert isinstance(writer.ended_by, (OSError, EOFError)), "the writer failed on its own"
    assert writer.model.durable, "nothing was flushed before the kill"
    original = test_image.read_bytes()[:REGION]

    v1 = version_file(farm, VDISK, 1)
    check = run("qemu-img", "check", "-f", "qcow2", str(v1), check=False)
    assert check.returncode in (0, 3), check.stdout + check.stderr  # 3: leaked clusters only
    run("qemu-img", "info", "--backing-chain", str(v1))
    flat = flatten(v1, tmp_path / "crashed.raw")
    bad = writer.model.violations(flat.read_bytes()[:REGION], original)
    assert not bad, f"qemu-img convert after the crash: {len(bad)} bad sectors: {bad[:5]}"

    farm.start(grace=2)
    client = rc.RawClient(farm.port)
    client.connect("mnt")

    chunks = [client.call(rc.CMD_READ, offset, M) for offset in range(0, REGION, M)]
    assert all(error == 0 for error, _ in chunks)
    bad = writer.model.violations(b"".join(data for _, data in chunks), original)
    assert not bad, f"reads through the restarted server: {len(bad)} bad sectors: {bad[:5]}"
    disconnect(client)
    wait_until(lambda: lock_is_free(farm, VDISK), "mnt's session ended")
    farm.cli("version", "promote", VDISK, "--to", "test")  # seals: qemu-img check passes
    run(
        "qemu-img",
        "compare",
        "-f",
        "raw",
        "-F",
        "raw",
        farm.uri("tst"),
        str(flatten(v1, tmp_path / "sealed.raw")),
    )
    assert_qemu_clean(farm.data_dir / "store" / VDISK)
