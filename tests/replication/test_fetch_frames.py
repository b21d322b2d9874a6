"""Compressed chunks on the wire: a receiver asks for frames only for the
chunks the list calls packable, gets the same bytes for fewer, checks every
chunk on its unpacked bytes; a peer that sends a bomb or garbage is dropped
with memory bounded, and an older peer (no prefixes, no frames) still
serves a whole, verified copy."""

from __future__ import annotations

import os
import re
import tracemalloc

import pytest

from tests.api.serving import serving
from tests.replication.conftest import import_bytes
from tests.replication.fake_time import FakeTime
from tests.replication.hostile_peer import BOMB_MIB, HostilePeer
from tests.replication.test_fetch import fetch, received, sent_by
from vdfarm.api.auth import read_token
from vdfarm.replication.fetch import PeerAddress
from vdfarm.replication.throttle import Throttle
from vdfarm.store.chunks import CHUNK_SIZE


def tables(size: int = CHUNK_SIZE) -> bytes:
    """qcow2-table-like bytes: mostly zeroes, an entry every 4 KiB."""
    found = bytearray(size)
    for at in range(0, size, 4096):
        found[at : at + 8] = os.urandom(8)
    return bytes(found)


@pytest.fixture
def mixed():
    """A random chunk, a chunk of tables, a random chunk, a short tail."""
    return os.urandom(CHUNK_SIZE) + tables() + os.urandom(CHUNK_SIZE) + os.urandom(4096)


@pytest.fixture
def mixed_source(farm, tmp_path, mixed):
    want = import_bytes(farm, tmp_path, mixed)
    with serving(farm) as port:
        yield want, PeerAddress("good", f"http://127.0.0.1:{port}"), read_token(farm.data_dir)


def test_packable_chunks_come_packed_and_the_rest_plain(mixed_source, vdisk_dir, mixed):
    want, peer, token = mixed_source
    outcome = fetch(want, vdisk_dir, [peer], token)
    assert outcome.published and received(vdisk_dir, mixed)
    random_bytes = 2 * CHUNK_SIZE + 4096
    assert random_bytes < outcome.bytes_received < random_bytes + CHUNK_SIZE // 8
    assert sent_by(peer, token) == outcome.bytes_received  # the wire's bytes, both sides


@pytest.mark.parametrize(
    ("mode", "why"),
    [
        ("bomb", "sent a bad frame .*does not inflate to its 1048576 bytes"),
        ("garbage", "sent a bad frame .*does not inflate"),
    ],
)
def test_a_bomb_or_garbage_drops_the_peer_with_memory_bounded(
    mixed_source, vdisk_dir, mixed, mode, why
):
    want, good, token = mixed_source
    with HostilePeer(mixed, CHUNK_SIZE, mode) as evil:
        tracemalloc.start()
        try:
            outcome = fetch(want, vdisk_dir, [PeerAddress("evil", evil.base_url)], token)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert not outcome.published
    assert len(outcome.failures) == 1
    assert outcome.failures[0].startswith("peer evil: ")
    assert re.search(why, outcome.failures[0]), outcome.failures[0]
    assert peak < 24 * (1 << 20) < BOMB_MIB * (1 << 20)  # two chunk buffers and change
    assert not (vdisk_dir / "base.raw").exists()
    kept = (vdisk_dir / ".repl-base.raw").stat().st_size
    assert kept == CHUNK_SIZE  # the verified chunk before the bad frame stays
    assert fetch(want, vdisk_dir, [good], token).published and received(vdisk_dir, mixed)


def test_an_older_peer_serves_plain_bytes_that_verify(farm, tmp_path, vdisk_dir, mixed):
    want = import_bytes(farm, tmp_path, mixed)
    with HostilePeer(mixed, CHUNK_SIZE, "older") as old:
        outcome = fetch(want, vdisk_dir, [PeerAddress("old", old.base_url)], "any")
        assert not [r for r in old.requests if "frames" in r.lower()]
        assert old.sent == len(old.chunk_list) + len(mixed)  # plain bytes, once
    assert outcome.published and outcome.failures == ()
    assert received(vdisk_dir, mixed)


def test_the_cap_is_paid_for_the_unpacked_bytes(mixed_source, vdisk_dir, mixed):
    """A packed chunk costs the throttle what it unpacks to: the cap spares
    the disks at both ends, not only the link."""
    want, peer, token = mixed_source
    fake = FakeTime()
    rate = CHUNK_SIZE
    outcome = fetch(want, vdisk_dir, [peer], token, throttle=Throttle(rate, fake.clock, fake.sleep))
    assert outcome.published and received(vdisk_dir, mixed)
    assert outcome.bytes_received < len(mixed) - CHUNK_SIZE // 2  # the tables came packed
    assert fake.now - 100.0 >= len(mixed) / rate - 1e-6  # yet all of it was paid for
