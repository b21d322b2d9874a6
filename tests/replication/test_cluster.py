"""Replication between real `vdfarm server run` processes on one real
PostgreSQL: a vDisk imported on one server reaches the others by itself,
a new version moves as its delta only, copies survive a dead receiver and
a dead sender, a corrupted copy is quarantined and fetched again, a full
disk fails cleanly, the cap and the windows hold, and a promotion can wait
for the copies.

Bytes are counted by the senders (`GET /replication/sent`), states read
from `vdfarm replication status --json` (the farm database), files hashed
here with sha256.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from tests.conftest import make_test_image, sha256
from tests.farm.postgres import fresh_postgres_url
from tests.stream.cluster import Cluster, ClusterServer
from tests.stream.cluster import wait_until as cluster_wait
from vdfarm.image import sample, vm

MIB = 1 << 20
BOOT_TIMEOUT = 180


def status_rows_locked(server: ClusterServer) -> bool:
    """True while a lock of the farm is held (the maintenance device's)."""
    return any(row.get("holder") for row in server.cli_json("lock", "list"))


@pytest.fixture(scope="session")
def db_kind() -> str:
    return "postgresql"


def token_of(server: ClusterServer) -> str:
    return (server.data_dir / "api-token").read_text().strip()


def sent(server: ClusterServer) -> dict[str, int]:
    """What SERVER sent to its peers since it started, by 'vDisk/file'."""
    response = server.api(
        "GET", "/replication/sent", headers={"Authorization": f"Bearer {token_of(server)}"}
    )
    assert response.status_code == 200, response.text
    return response.json()


def status(server: ClusterServer, vdisk: str) -> dict[tuple[int, str], dict]:
    """(version, server) -> its status row, as SERVER's CLI reads the database."""
    rows = server.cli_json("replication", "status", vdisk)
    return {(row["version"], row["server"]): row for row in rows}


def present_everywhere(server: ClusterServer, vdisk: str, version: int, names) -> bool:
    rows = status(server, vdisk)
    done = all(rows.get((version, n), {}).get("state") == "present" for n in names)
    if not done:
        LAST_STATUS[vdisk] = rows  # shown if the wait gives up
    return done


LAST_STATUS: dict[str, dict] = {}


def wait_until(condition, what: str, timeout: float = 60.0):
    try:
        return cluster_wait(condition, what, timeout=timeout)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last status seen: {LAST_STATUS}") from None


def store_file(server: ClusterServer, vdisk: str, name: str) -> Path:
    return server.data_dir / "store" / vdisk / name


def version_rows(server: ClusterServer, vdisk: str) -> dict[int, dict]:
    return {row["number"]: row for row in server.cli_json("version", "list", vdisk)}


@pytest.fixture
def cluster(tmp_path):
    made: list[Cluster] = []

    def make(names=("a", "b", "c"), *extra: str) -> Cluster:
        url = stack.enter_context(fresh_postgres_url())
        farm = Cluster(tmp_path / f"farm{len(made)}", url, list(names))
        (tmp_path / f"farm{len(made)}").mkdir()
        made.append(farm)
        farm.init()
        farm.start(*extra)
        return farm

    import contextlib

    with contextlib.ExitStack() as stack:
        try:
            yield make
        finally:
            for farm in made:
                farm.stop()


@pytest.mark.vm
def test_a_new_vdisk_and_its_new_version_reach_every_server_as_deltas(cluster, tmp_path):
    """Import on a; b and c get the base by themselves. A VM writes a
    maintenance version on a; promoted, it reaches b and c as its delta
    alone; all three serve the same disk; with a stopped, a VM boots the
    version from b."""
    farm = cluster()
    a, b, c = farm.servers["a"], farm.servers["b"], farm.servers["c"]
    image = sample.build(tmp_path / "sample.raw", size_mib=64)
    a.cli("vdisk", "import", "golden", str(image), "--mode", "standard")
    a.cli("device", "add", "vmnt", "--vdisk", "golden", "--type", "maintenance")
    a.cli("device", "add", "vprod", "--vdisk", "golden")
    wait_until(lambda: present_everywhere(a, "golden", 0, "abc"), "the base on every server")
    for server in (b, c):
        assert sha256(store_file(server, "golden", "base.raw")) == sha256(image)

    a.cli("version", "new", "golden")
    top = version_rows(a, "golden")[1]["file"]
    result = vm.boot(f"nbd://127.0.0.1:{a.nbd_port}/vmnt", "maint1", timeout=BOOT_TIMEOUT)
    assert result.ok, result.serial_output
    wait_until(lambda: not status_rows_locked(a), "the maintenance session ended")
    before = {s.name: sent(s) for s in (a, b, c)}
    a.cli("version", "promote", "golden", "--to", "test")
    wait_until(lambda: present_everywhere(a, "golden", 1, "abc"), "version 1 on every server")
    after = {s.name: sent(s) for s in (a, b, c)}
    moved: dict[str, int] = {}
    for name, counts in after.items():
        for key, value in counts.items():
            moved[key] = moved.get(key, 0) + value - before[name].get(key, 0)
    delta = store_file(a, "golden", top)
    delta_size = delta.stat().st_size
    assert moved.get("golden/base.raw", 0) == 0, moved
    # b and c each received the delta once (from a, or one from the other)
    assert 0 < moved[f"golden/{top}"] <= 2 * (1.05 * delta_size + 64 * 1024), (moved, delta_size)
    for server in (b, c):
        assert sha256(store_file(server, "golden", top)) == sha256(delta)
    a.cli("version", "promote", "golden", "--to", "production")
    views = [f"nbd://127.0.0.1:{s.nbd_port}/vdisk/golden" for s in (a, b, c)]
    for other in views[1:]:
        subprocess.run(["qemu-img", "compare", views[0], other], check=True, capture_output=True)

    a.stop()
    booted = vm.boot(f"nbd://127.0.0.1:{b.nbd_port}/vprod", "prod1", timeout=BOOT_TIMEOUT)
    assert booted.ok, booted.serial_output
    shown = sample.expected_pattern("maint1").rstrip(b"\0").decode()
    assert booted.pattern_before == shown, booted.serial_output


def test_a_corrupted_copy_is_quarantined_and_fetched_again(cluster, tmp_path):
    farm = cluster(("a", "b"), "--rehash-interval", "2")
    a, b = farm.servers["a"], farm.servers["b"]
    image = make_test_image(tmp_path / "golden.raw", size=16 * MIB, seed=4)
    a.cli("vdisk", "import", "golden", str(image), "--mode", "standard")
    wait_until(lambda: present_everywhere(a, "golden", 0, "ab"), "the base on b")
    copy = store_file(b, "golden", "base.raw")
    with open(copy, "r+b") as fh:  # one byte, same size: only a re-hash sees it
        fh.seek(5 * MIB)
        byte = fh.read(1)
        fh.seek(5 * MIB)
        fh.write(bytes([byte[0] ^ 0xFF]))
    quarantine = b.data_dir / "store" / ".quarantine" / "golden"
    wait_until(lambda: quarantine.exists() and any(quarantine.iterdir()), "the copy quarantined")
    assert "content changed" in b.log()
    wait_until(lambda: present_everywhere(a, "golden", 0, "ab"), "b holds the base again")
    assert sha256(copy) == sha256(image)
    [moved] = list(quarantine.iterdir())
    assert sha256(moved) != sha256(image)


def test_a_killed_receiver_resumes_and_a_killed_sender_is_replaced(cluster, tmp_path):
    farm = cluster(("a", "b", "c"))
    a, b, c = farm.servers["a"], farm.servers["b"], farm.servers["c"]
    a.cli("store", "set", "default", "--servers", "a,c")
    image = make_test_image(tmp_path / "big.raw", size=256 * MIB, seed=5)
    a.cli("vdisk", "import", "big", str(image), "--mode", "standard")
    wait_until(lambda: present_everywhere(a, "big", 0, "ac"), "the base on c", timeout=120)
    at_start = {s.name: sent(s).get("big/base.raw", 0) for s in (a, c)}  # a sent c its copy
    # b joins the store at 40 MB/s: about 7 s for the file
    a.cli("store", "set", "default", "--servers", "all", "--max-rate", "40MB/s")

    def copying_on_b() -> dict | None:
        row = status(a, "big").get((0, "b"))
        return row if row and row["state"] == "copying" and row["bytes_done"] > 64 * MIB else None

    wait_until(copying_on_b, "b copying past 64 MiB", timeout=120)
    b.kill()
    partial = store_file(b, "big", ".repl-base.raw")
    assert partial.exists() and not store_file(b, "big", "base.raw").exists()
    b.start()
    wait_until(lambda: copying_on_b() is not None, "b copying again", timeout=120)
    senders = [s for s in (a, c) if sent(s).get("big/base.raw", 0) > 0]
    # kill the server b copies from now; the other one finishes the copy
    row = status(a, "big")[(0, "b")]
    serving = next(s for s in senders if s.name == row.get("peer")) if row.get("peer") else None
    victim = serving or senders[-1]
    sent_by_victim = sent(victim).get("big/base.raw", 0) - at_start[victim.name]
    victim.kill()
    survivor = c if victim is a else a
    wait_until(lambda: present_everywhere(survivor, "big", 0, "b"), "b done", timeout=180)
    assert sha256(store_file(b, "big", "base.raw")) == sha256(image)
    total = sent_by_victim + sent(survivor).get("big/base.raw", 0) - at_start[survivor.name]
    assert total < 1.3 * image.stat().st_size, total


def test_the_cap_holds_and_the_windows_pause_and_resume_a_copy(cluster, tmp_path):
    farm = cluster(("a", "b"))
    a = farm.servers["a"]
    a.cli("store", "set", "default", "--max-rate", "20MB/s")
    image = make_test_image(tmp_path / "big.raw", size=200 * 1000 * 1000 // MIB * MIB, seed=6)
    started = time.monotonic()
    a.cli("vdisk", "import", "big", str(image), "--mode", "standard")
    rates: list[float] = []

    def done() -> bool:
        row = status(a, "big").get((0, "b"), {})
        if row.get("state") == "copying" and row.get("rate_bps"):
            rates.append(row["rate_bps"])
        return row.get("state") == "present"

    wait_until(done, "the capped copy", timeout=120)
    took = time.monotonic() - started
    assert took >= 9, f"200 MB at 20 MB/s took {took:.1f} s"
    assert rates and max(rates) <= 1.1 * 20e6, rates

    # a window that is closed now: the next copy waits, then one that is open
    now = datetime.now()
    closed = f"{(now + timedelta(hours=2)):%H:%M}-{(now + timedelta(hours=3)):%H:%M}"
    a.cli("store", "set", "default", "--window", closed, "--max-rate", "none")
    a.cli("vdisk", "import", "later", str(image), "--mode", "standard")
    wait_until(
        lambda: status(a, "later").get((0, "b"), {}).get("reason") == "window closed",
        "the copy queued by the window",
    )
    time.sleep(3)
    assert status(a, "later")[(0, "b")]["state"] == "queued"
    a.cli("replication", "start", "later", "--now")
    wait_until(lambda: present_everywhere(a, "later", 0, "ab"), "the copy done with --now")


def test_a_full_disk_fails_the_copy_cleanly_and_it_resumes_once_freed(cluster, tmp_path):
    farm = cluster(("a", "b"))
    a, b = farm.servers["a"], farm.servers["b"]
    store = b.data_dir / "store"
    small = make_test_image(tmp_path / "small.raw", size=4 * MIB, seed=7)
    a.cli("vdisk", "import", "small", str(small), "--mode", "standard")
    wait_until(lambda: present_everywhere(a, "small", 0, "ab"), "small on b")
    # b's store moves onto a 24 MiB tmpfs
    b.stop()
    saved = tmp_path / "b-store"
    shutil.copytree(store, saved, symlinks=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=24m,mode=0700", "tmpfs", str(store)], check=True
    )
    try:
        shutil.copytree(saved, store, symlinks=True, dirs_exist_ok=True)
        held = files_of(store)
        b.start()
        big = make_test_image(tmp_path / "big.raw", size=48 * MIB, seed=8)
        a.cli("vdisk", "import", "big", str(big), "--mode", "standard")

        def failed() -> dict | None:
            row = status(a, "big").get((0, "b"), {})
            return row if row.get("state") == "failed" else None

        row = wait_until(failed, "the copy failed on a full disk")
        assert "disk full" in row["reason"].lower() or "space" in row["reason"].lower(), row
        assert {k: v for k, v in files_of(store).items() if k.parts[0] == "small"} == held
        assert not (store / "big" / "base.raw").exists()
        subprocess.run(["mount", "-o", "remount,size=128m", str(store)], check=True)
        wait_until(lambda: present_everywhere(a, "big", 0, "ab"), "the copy done after freeing")
        assert sha256(store / "big" / "base.raw") == sha256(big)
    finally:
        b.stop()
        subprocess.run(["umount", "-l", str(store)], check=False)


def files_of(root: Path) -> dict[Path, str]:
    """Every visible file under ROOT (relative path -> sha256)."""
    return {
        p.relative_to(root): sha256(p)
        for p in root.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    }


def test_promote_when_replicated_waits_for_the_last_server(cluster, tmp_path):
    farm = cluster(("a", "b"))
    a = farm.servers["a"]
    image = make_test_image(tmp_path / "golden.raw", size=16 * MIB, seed=9)
    a.cli("vdisk", "import", "golden", str(image), "--mode", "standard")
    wait_until(lambda: present_everywhere(a, "golden", 0, "ab"), "the base on b")
    a.cli("version", "new", "golden")
    top = version_rows(a, "golden")[1]["file"]
    subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", "write -P 0x33 0 12M", str(store_file(a, "golden", top))],
        check=True,
        capture_output=True,
    )
    a.cli("store", "set", "default", "--max-rate", "2MB/s")  # about 6 s for the delta
    a.cli("version", "promote", "golden", "--to", "production", "--when-replicated")
    rows = version_rows(a, "golden")
    assert rows[1]["access"] == "test"
    assert status(a, "golden").get((1, "b"), {}).get("state") != "present"
    wait_until(lambda: version_rows(a, "golden")[1]["access"] == "production", "the switch")
    assert status(a, "golden")[(1, "b")]["state"] == "present"


def chain_of(server: ClusterServer, vdisk: str) -> list[tuple[str, str]]:
    """(file, sha256) of SERVER's manifest chain of VDISK, base first."""
    manifest = json.loads((server.data_dir / "store" / vdisk / "manifest.json").read_text())
    return [(f["name"], f["sha256"]) for f in manifest["files"]]


def test_merges_and_deletes_follow_and_store_verify_finds_drift(cluster, tmp_path):
    """A merge result reaches b, which retires and removes the merged-away
    files; a deleted vDisk leaves b's store; `store verify` on b finds a
    changed file at once and the server fetches it again."""
    farm = cluster(("a", "b"))
    a, b = farm.servers["a"], farm.servers["b"]
    image = make_test_image(tmp_path / "golden.raw", size=16 * MIB, seed=10)
    a.cli("vdisk", "import", "golden", str(image), "--mode", "standard")
    a.cli("version", "new", "golden")
    top = version_rows(a, "golden")[1]["file"]
    subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", "write -P 0x44 4M 1M", str(store_file(a, "golden", top))],
        check=True,
        capture_output=True,
    )
    a.cli("version", "promote", "golden", "--to", "production")
    wait_until(lambda: present_everywhere(a, "golden", 1, "ab"), "version 1 on b")

    a.cli("version", "merge", "golden", "--new-base")
    wait_until(lambda: chain_of(b, "golden") == chain_of(a, "golden"), "b's chain is a's")
    kept = {name for name, _ in chain_of(a, "golden")}
    assert top not in kept or len(kept) == 1
    wait_until(
        lambda: {p.name for p in (b.data_dir / "store" / "golden").iterdir()
                 if not p.name.startswith(".") and p.name != "manifest.json"} == kept,
        "the merged-away files removed from b",
    )  # fmt: skip
    newest = max(version_rows(a, "golden"))
    wait_until(lambda: present_everywhere(a, "golden", newest, "ab"), "the merge result on b")
    subprocess.run(
        ["qemu-img", "compare", f"nbd://127.0.0.1:{a.nbd_port}/vdisk/golden",
         f"nbd://127.0.0.1:{b.nbd_port}/vdisk/golden"],
        check=True, capture_output=True,
    )  # fmt: skip

    # drift found by `store verify`, now
    [(name, digest)] = [chain_of(b, "golden")[0]]
    with open(store_file(b, "golden", name), "r+b") as fh:
        fh.seek(1 * MIB)
        fh.write(b"\xa5")
    verify = b.cli("store", "verify", check=False)
    assert verify.returncode == 1 and name in verify.stdout, verify.stdout + verify.stderr
    wait_until(lambda: present_everywhere(a, "golden", newest, "ab"), "b fetched it again")
    assert sha256(store_file(b, "golden", name)) == digest

    a.cli("vdisk", "delete", "golden")
    wait_until(lambda: not (b.data_dir / "store" / "golden").exists(), "golden gone from b")


def settled(server: ClusterServer) -> bool:
    """True if SERVER's sent bytes stood still for a second."""
    before = sent(server)
    time.sleep(1)
    return sent(server) == before


def test_a_window_closing_pauses_a_running_copy_and_opening_resumes_it(cluster, tmp_path):
    farm = cluster(("a", "b"))
    a = farm.servers["a"]
    a.cli("store", "set", "default", "--max-rate", "8MB/s")
    image = make_test_image(tmp_path / "big.raw", size=64 * MIB, seed=11)
    a.cli("vdisk", "import", "big", str(image), "--mode", "standard")

    def copying() -> dict | None:
        row = status(a, "big").get((0, "b"), {})
        return row if row.get("state") == "copying" and row["bytes_done"] >= 8 * MIB else None

    wait_until(copying, "the copy under way")
    now = datetime.now()
    closed = f"{(now + timedelta(hours=2)):%H:%M}-{(now + timedelta(hours=3)):%H:%M}"
    a.cli("store", "set", "default", "--window", closed)

    def paused() -> dict | None:
        row = status(a, "big").get((0, "b"), {})
        return row if row.get("state") == "queued" and row["reason"] == "window closed" else None

    held = wait_until(paused, "the copy paused by the window")
    assert store_file(farm.servers["b"], "big", ".repl-base.raw").exists()
    # what was in flight when b stopped reading is counted once the cut
    # connection ends; from then on nothing moves while the window is shut
    wait_until(lambda: settled(a), "the cut connection ended")
    sent_then = sent(a).get("big/base.raw", 0)
    time.sleep(3)
    assert sent(a).get("big/base.raw", 0) == sent_then, "bytes kept going with the window closed"
    assert status(a, "big")[(0, "b")]["state"] == "queued", held
    a.cli("store", "set", "default", "--no-window", "--max-rate", "none")
    wait_until(lambda: present_everywhere(a, "big", 0, "ab"), "the copy resumed and done")
    assert sent(a).get("big/base.raw", 0) < 1.1 * image.stat().st_size


def boot_file_of(server: ClusterServer, path: str) -> bytes | None:
    """What SERVER's GET /boot/files/PATH answers (None unless 200)."""
    import httpx

    answer = httpx.get(f"http://127.0.0.1:{server.api_port}/boot/files/{path}", timeout=10)
    return answer.content if answer.status_code == 200 else None


def test_boot_files_travel_with_their_version_and_follow_a_change(cluster, tmp_path):
    """Boot files given on a reach b (listed in its manifest, served by its
    /boot/files); a replaced kernel replaces b's copy and the old one goes;
    a corrupted copy on b is quarantined and fetched again."""
    farm = cluster(("a", "b"), "--rehash-interval", "2")
    a, b = farm.servers["a"], farm.servers["b"]
    a.cli("vdisk", "import", "golden", str(make_test_image(tmp_path / "g.raw", 8 * MIB, seed=6)))
    kernel, kernel2, initrd = tmp_path / "vmlinuz", tmp_path / "vmlinuz2", tmp_path / "initrd"
    for path, size in ((kernel, 3 * MIB), (kernel2, 2 * MIB), (initrd, 6 * MIB)):
        make_test_image(path, size, seed=size)
    a.cli("vdisk", "boot", "golden", "--kernel", str(kernel), "--initrd", str(initrd))
    wait_until(
        lambda: (
            boot_file_of(b, "golden/0/initrd") == initrd.read_bytes()
            and boot_file_of(b, "golden/0/kernel") == kernel.read_bytes()
        ),
        "b serves the boot files",
    )
    old = json.loads(store_file(b, "golden", "manifest.json").read_text())["boot_files"]
    assert {f["kind"] for f in old} == {"kernel", "initrd"}

    a.cli("vdisk", "boot", "golden", "--kernel", str(kernel2))
    wait_until(lambda: boot_file_of(b, "golden/0/kernel") == kernel2.read_bytes(), "the new kernel")
    old_kernel = next(f["name"] for f in old if f["kind"] == "kernel")
    wait_until(lambda: not store_file(b, "golden", old_kernel).exists(), "the old kernel gone on b")

    initrd_copy = store_file(b, "golden", next(f["name"] for f in old if f["kind"] == "initrd"))
    with open(initrd_copy, "r+b") as fh:  # one byte, same size: only a re-hash sees it
        fh.seek(MIB)
        fh.write(b"\xff")
    quarantine = b.data_dir / "store" / ".quarantine" / "golden"
    wait_until(lambda: quarantine.exists() and any(quarantine.iterdir()), "the copy quarantined")
    wait_until(lambda: boot_file_of(b, "golden/0/initrd") == initrd.read_bytes(), "fetched again")
    assert sha256(initrd_copy) == sha256(initrd)
