"""fetch_file against real HTTP peers: a vdfarm server's API, and small
hostile peers that send wrong bytes, cut the body, answer 500, hang, or
lie in their chunk list. The receiver gives up on each (bounded by its read
timeout), finishes from a good peer, resumes where it stopped, and never
shows a file under its real name before it verified."""

from __future__ import annotations

import hashlib
import os
import re
import time

import httpx
import pytest

from tests.api.serving import serving
from tests.api.tls import make_tls_files
from tests.replication.conftest import SIZE, import_bytes
from tests.replication.fake_time import FakeTime
from tests.replication.hostile_peer import HostilePeer
from tests.store.replica_helpers import listing, tmpfs
from vdfarm.api.auth import read_token
from vdfarm.replication.fetch import (
    FetchOutcome,
    FileWant,
    Paused,
    PeerAddress,
    Progress,
    fetch_file,
)
from vdfarm.replication.pace import WINDOW_S
from vdfarm.replication.throttle import Throttle
from vdfarm.store.chunks import CHUNK_SIZE
from vdfarm.store.errors import StoreFull

# The receiver's read timeout: short where a test makes a peer go silent,
# generous elsewhere (a good peer on a loaded machine may pause for a second).
SILENT_TIMEOUT = 2.0
TIMEOUT = 30.0
WAIT_S = 30


class Watch:
    """The progress callback: keeps every report and checks, at each one,
    that nothing shows under the file's real name yet."""

    def __init__(self, real_path) -> None:
        self.real_path = real_path
        self.reports: list[Progress] = []

    def __call__(self, progress: Progress) -> None:
        assert not os.path.lexists(self.real_path), "a file showed before it verified"
        self.reports.append(progress)


def fetch(
    want,
    vdisk_dir,
    peers,
    token,
    *,
    may_run=lambda: True,
    throttle=None,
    watch=None,
    read_timeout=TIMEOUT,
    pace_window_s=WINDOW_S,
):
    watch = watch or Watch(vdisk_dir / want.file_name)
    return fetch_file(
        want,
        vdisk_dir,
        peers,
        token,
        throttle=throttle or Throttle(None),
        may_run=may_run,
        progress=watch,
        read_timeout=read_timeout,
        pace_window_s=pace_window_s,
    )


def sent_by(peer: PeerAddress, token: str) -> int:
    """What PEER's API counted as sent of w/base.raw, once it settles."""
    deadline = time.monotonic() + WAIT_S
    last = None
    while time.monotonic() < deadline:
        answer = httpx.get(
            f"{peer.base_url}/api/v1/replication/sent",
            headers={"Authorization": f"Bearer {token}"},
        )
        now = answer.json().get("w/base.raw", 0)
        if now == last:
            return now
        last = now
        time.sleep(0.2)
    raise AssertionError("the peer's count of bytes sent never settled")


def received(vdisk_dir, data):
    assert (vdisk_dir / "base.raw").read_bytes() == data
    assert sorted(p.name for p in vdisk_dir.iterdir()) == ["base.raw"]
    return True


def test_a_file_comes_whole_from_a_vdfarm_peer(want, source, vdisk_dir, data):
    peer, token = source
    watch = Watch(vdisk_dir / "base.raw")
    outcome = fetch(want, vdisk_dir, [peer], token, watch=watch)
    assert outcome == FetchOutcome(True, "good", SIZE, ())
    assert received(vdisk_dir, data)
    assert watch.reports[0].bytes_done == 0
    assert watch.reports[-1] == Progress("good", SIZE, SIZE, watch.reports[-1].rate_bps)
    assert [r.bytes_done for r in watch.reports] == sorted(r.bytes_done for r in watch.reports)
    assert sent_by(peer, token) == SIZE


@pytest.mark.parametrize(
    ("mode", "why"),
    [
        ("wrong-chunk", r"sent a wrong chunk \(chunk 1 of base.raw does not match its sha256\)"),
        ("truncate", "(broke off the answer|short body)"),
        ("error-500", "answered 500 to bytes 0-12587007: the disk is on fire"),
        ("hang", f"sent nothing for {SILENT_TIMEOUT:g} s"),
        ("stall", f"sent nothing for {SILENT_TIMEOUT:g} s"),
        ("list-differs", "chunk list differs from the database"),
        (
            "lying-list",
            r"the received base.raw does not match its sha256 \(its chunk list lied\)",
        ),
        ("lying-prefixes", r"sent a wrong chunk \(chunk 3 of base.raw does not match its sha256\)"),
        ("frames-unasked", r"answered frames \('zlib'\) it was not asked for"),
        ("whole-file", r"answered the whole file \(200\) to bytes 0-12587007"),
        ("trickle", r"too slow: sent [0-9.]+ KiB/s over [0-9]+ s of waiting"),
    ],
)
def test_a_bad_peer_is_dropped_and_a_good_one_finishes(want, source, vdisk_dir, data, mode, why):
    good, token = source
    with HostilePeer(data, CHUNK_SIZE, mode) as evil:
        silent = mode in ("hang", "stall")
        outcome = fetch(
            want,
            vdisk_dir,
            [PeerAddress("evil", evil.base_url), good],
            token,
            read_timeout=SILENT_TIMEOUT if silent else TIMEOUT,
            pace_window_s=1.0 if mode == "trickle" else WINDOW_S,
        )
    assert outcome.published and outcome.peer == "good", outcome
    assert len(outcome.failures) == 1
    assert outcome.failures[0].startswith("peer evil: ")
    assert re.search(why, outcome.failures[0]), outcome.failures[0]
    assert received(vdisk_dir, data)
    from_good = sent_by(good, token)
    if mode in ("wrong-chunk", "truncate"):
        assert from_good <= SIZE - CHUNK_SIZE  # the verified prefix from evil stayed
    if mode == "lying-list":
        assert from_good == SIZE  # what the liar sent was thrown away
    if mode == "lying-prefixes":
        assert from_good == SIZE - CHUNK_SIZE  # the good list cut the lie at chunk 1


def test_when_every_peer_fails_nothing_is_published(want, vdisk_dir, data, source):
    _, token = source
    with (
        HostilePeer(data, CHUNK_SIZE, "truncate") as cut,
        HostilePeer(data, CHUNK_SIZE, "error-500") as broken,
    ):
        peers = [PeerAddress("cut", cut.base_url), PeerAddress("broken", broken.base_url)]
        outcome = fetch(want, vdisk_dir, peers, token)
    assert not outcome.published and outcome.peer is None
    assert [f.split(":")[0] for f in outcome.failures] == ["peer cut", "peer broken"]
    assert not (vdisk_dir / "base.raw").exists()
    kept = (vdisk_dir / ".repl-base.raw").stat().st_size
    assert kept > 0 and kept % CHUNK_SIZE == 0  # whole verified chunks only


def test_unreachable_and_refusing_peers(want, vdisk_dir, source, data):
    good, token = source
    closed = PeerAddress("down", "http://127.0.0.1:9")
    refusing = PeerAddress("refusing", good.base_url)
    outcome = fetch(want, vdisk_dir, [closed], token)
    assert "peer down: cannot connect" in outcome.failures[0]
    outcome = fetch(want, vdisk_dir, [refusing], "not-the-token")
    assert outcome.failures == ("peer refusing: answered 401 to the chunk list: wrong API token",)
    assert fetch(want, vdisk_dir, [good], token).published


def test_a_paused_copy_resumes_where_it_stopped(farm, tmp_path, vdisk_dir):
    data = os.urandom(5 * CHUNK_SIZE + 512)
    want = import_bytes(farm, tmp_path, data, "w")
    window = {"open": True}

    def progress(report: Progress) -> None:
        assert not (vdisk_dir / "base.raw").exists()
        if report.bytes_done >= 2 * CHUNK_SIZE:
            window["open"] = False  # the window closes mid-copy

    with serving(farm) as port:
        token = read_token(farm.data_dir)
        peer = PeerAddress("good", f"http://127.0.0.1:{port}")
        with pytest.raises(Paused) as paused:
            fetch_file(
                want,
                vdisk_dir,
                [peer],
                token,
                throttle=Throttle(None),
                may_run=lambda: window["open"],
                progress=progress,
            )
        assert paused.value.bytes_received >= 2 * CHUNK_SIZE
        kept = (vdisk_dir / ".repl-base.raw").stat().st_size  # whole chunks, checked
        assert kept % CHUNK_SIZE == 0 and 2 * CHUNK_SIZE <= kept < len(data)
        with pytest.raises(Paused) as closed:  # still closed: not a byte moves
            fetch(want, vdisk_dir, [peer], token, may_run=lambda: False)
        assert closed.value.bytes_received == 0

        remaining = len(data) - kept
        outcome = fetch(want, vdisk_dir, [peer], token)
    assert outcome.published
    assert outcome.bytes_received < remaining + CHUNK_SIZE
    assert outcome.bytes_received == remaining
    assert received(vdisk_dir, data)


def test_zero_chunks_are_not_fetched(farm, tmp_path, vdisk_dir):
    data = os.urandom(CHUNK_SIZE) + bytes(3 * CHUNK_SIZE) + os.urandom(1024)
    want = import_bytes(farm, tmp_path, data, "w")
    with serving(farm) as port:
        token = read_token(farm.data_dir)
        peer = PeerAddress("good", f"http://127.0.0.1:{port}")
        outcome = fetch(want, vdisk_dir, [peer], token)
        assert sent_by(peer, token) == CHUNK_SIZE + 1024
    assert outcome.published and outcome.bytes_received == CHUNK_SIZE + 1024
    assert received(vdisk_dir, data)
    assert (vdisk_dir / "base.raw").stat().st_blocks * 512 < 2 * CHUNK_SIZE + 1024


def test_the_throttle_is_paid_for_every_byte(want, source, vdisk_dir, data):
    peer, token = source
    fake = FakeTime()
    rate = 4 * 1024 * 1024
    outcome = fetch(want, vdisk_dir, [peer], token, throttle=Throttle(rate, fake.clock, fake.sleep))
    assert outcome.published
    assert fake.now - 100.0 >= (SIZE - rate) / rate  # all but the first second's burst waited


def test_a_full_disk_fails_before_a_byte_and_touches_nothing(want, source, tmp_path):
    peer, token = source
    with tmpfs(tmp_path / "small", "8m") as root:
        (root / "other").mkdir()
        (root / "other" / "base.raw").write_bytes(b"x" * 1000)
        before = listing(root)
        with pytest.raises(StoreFull, match="the store's disk is full"):
            fetch(want, root / "w", [peer], token)
        assert listing(root) == before


def test_a_disk_that_fills_during_the_copy_gives_the_room_back(want, source, tmp_path):
    peer, token = source
    with tmpfs(tmp_path / "small", "16m") as root:
        (root / "other").mkdir()
        (root / "other" / "base.raw").write_bytes(b"x" * 1000)
        before = listing(root)

        def fill_the_disk(report: Progress) -> None:
            if report.bytes_done >= CHUNK_SIZE and not (root / "filler").exists():
                (root / "filler").write_bytes(bytes(7 << 20))  # someone else writes

        with pytest.raises(StoreFull, match="cannot receive base.raw"):
            fetch(want, root / "w", [peer], token, watch=fill_the_disk)
        assert listing(root) == sorted([*before, ("filler", 7 << 20)])


def test_https_with_the_farm_ca(farm, want, tmp_path, vdisk_dir, data):
    tls = make_tls_files(tmp_path / "tls")
    with serving(farm, tls_cert=tls.cert, tls_key=tls.key) as port:
        token = read_token(farm.data_dir)
        peer = PeerAddress("tls", f"https://127.0.0.1:{port}")
        wrong = fetch_file(
            want,
            vdisk_dir,
            [peer],
            token,
            throttle=Throttle(None),
            may_run=lambda: True,
            progress=lambda _: None,
            ca_file=tls.other_ca,
        )
        assert "CERTIFICATE_VERIFY_FAILED" in wrong.failures[0]
        outcome = fetch_file(
            want,
            vdisk_dir,
            [peer],
            token,
            throttle=Throttle(None),
            may_run=lambda: True,
            progress=lambda _: None,
            ca_file=tls.ca,
        )
    assert outcome.published and received(vdisk_dir, data)


def test_a_want_the_database_does_not_match_is_never_published(want, source, vdisk_dir):
    peer, token = source
    other = FileWant(want.vdisk, want.file_name, want.size, hashlib.sha256(b"x").hexdigest())
    outcome = fetch(other, vdisk_dir, [peer], token)
    assert outcome.failures == ("peer good: chunk list differs from the database",)
    assert not (vdisk_dir / "base.raw").exists()
