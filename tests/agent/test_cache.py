"""DeviceCache: the three kinds fill up with ENOSPC on exactly the write that
does not fit, RAM-overflow spills and promotes, fills, zero blocks, plans."""

import errno
import logging
import random

import pytest

from vdfarm.agent.cache import BLOCK, make_cache

from .plan_check import assemble

SIZE = 64 * BLOCK
UPSTREAM = random.Random(7).randbytes(SIZE)


def block_bytes(n):
    """Distinct non-zero content for block N."""
    return random.Random(1000 + n).randbytes(BLOCK)


def read(cache, offset, length):
    return assemble(cache.read_plan(offset, length), offset, length, UPSTREAM)


def fills_for(cache, offset, length):
    return {o: UPSTREAM[o : o + n] for o, n in cache.needs_fill(offset, length)}


# kind, ram blocks, disk blocks; capacity 6 blocks each
KINDS = [
    ("device-ram", 6, 0),
    ("device-disk", 0, 6),
    ("device-ram-overflow", 2, 4),
]


@pytest.fixture(params=KINDS, ids=[k[0] for k in KINDS])
def full_cache(request, tmp_path):
    """A cache of 6 blocks with blocks 0, 2, 4, 6, 8, 10 written: exactly full."""
    kind, ram, disk = request.param
    cache = make_cache(kind, SIZE, ram * BLOCK, tmp_path / "cache", disk * BLOCK)
    for n in range(6):
        cache.write(2 * n * BLOCK, block_bytes(2 * n), {})
        assert cache.stats()["full"] is False
    yield cache
    cache.close()


def earlier_writes_intact(cache):
    for n in range(6):
        assert read(cache, 2 * n * BLOCK, BLOCK) == block_bytes(2 * n)


def test_the_write_that_overflows_gets_enospc_and_nothing_is_lost(full_cache, caplog):
    stats = full_cache.stats()
    assert stats["blocks"] == 6 and stats["capacity_bytes"] == 6 * BLOCK
    assert stats["ram_bytes"] + stats["disk_bytes"] == 6 * BLOCK
    with (
        caplog.at_level(logging.ERROR, logger="vdfarm.agent"),
        pytest.raises(OSError) as refused,
    ):
        full_cache.write(20 * BLOCK, block_bytes(20), {})
    assert refused.value.errno == errno.ENOSPC
    assert [r.levelno for r in caplog.records] == [logging.ERROR]
    assert "WRITE CACHE FULL" in caplog.records[0].getMessage()
    assert full_cache.stats()["full"] is True
    assert full_cache.stats()["refused_writes"] == 1
    earlier_writes_intact(full_cache)
    assert full_cache.read_plan(20 * BLOCK, BLOCK) == [(20 * BLOCK, BLOCK, None)]


def test_a_refused_write_stores_none_of_its_blocks(full_cache):
    # blocks 10 (cached: an overwrite), 11 and 12 (new): two more than fit
    payload = b"\x5a" * (3 * BLOCK)
    with pytest.raises(OSError) as refused:
        full_cache.write(10 * BLOCK, payload, {})
    assert refused.value.errno == errno.ENOSPC
    earlier_writes_intact(full_cache)
    assert full_cache.read_plan(11 * BLOCK, 2 * BLOCK) == [(11 * BLOCK, 2 * BLOCK, None)]


def test_a_full_cache_still_takes_overwrites_and_zeroes_give_room_back(full_cache):
    with pytest.raises(OSError):
        full_cache.write(30 * BLOCK, block_bytes(30), {})
    full_cache.write(4 * BLOCK + 100, b"new", fills_for(full_cache, 4 * BLOCK + 100, 3))
    assert full_cache.stats()["full"] is False  # the last write fitted
    full_cache.zero(0, BLOCK, {})
    assert full_cache.stats()["blocks"] == 5
    full_cache.write(30 * BLOCK, block_bytes(30), {})
    assert read(full_cache, 30 * BLOCK, BLOCK) == block_bytes(30)
    assert read(full_cache, 0, BLOCK) == bytes(BLOCK)
    expected = bytearray(block_bytes(4))
    expected[100:103] = b"new"
    assert read(full_cache, 4 * BLOCK, BLOCK) == expected


def test_a_write_of_whole_zero_blocks_fits_a_full_cache(full_cache):
    full_cache.write(40 * BLOCK, bytes(3 * BLOCK), {})
    full_cache.trim(50 * BLOCK, 10 * BLOCK, {})
    assert full_cache.stats()["blocks"] == 6
    assert read(full_cache, 40 * BLOCK, 20 * BLOCK) == bytes(3 * BLOCK) + UPSTREAM[
        43 * BLOCK : 50 * BLOCK
    ] + bytes(10 * BLOCK)


def test_a_zero_over_part_of_a_block_can_overflow(full_cache):
    # the partial head block keeps upstream bytes: it needs room, there is none
    offset = 20 * BLOCK + 10
    with pytest.raises(OSError) as refused:
        full_cache.zero(offset, 2 * BLOCK, fills_for(full_cache, offset, 2 * BLOCK))
    assert refused.value.errno == errno.ENOSPC
    assert read(full_cache, 20 * BLOCK, 3 * BLOCK) == UPSTREAM[20 * BLOCK : 23 * BLOCK]


# ---- RAM-overflow: spill and promote ----


def test_ram_overflow_spills_the_least_recently_used_and_promotes_on_read(tmp_path):
    cache = make_cache("device-ram-overflow", SIZE, 2 * BLOCK, tmp_path / "cache", 4 * BLOCK)
    for n in range(3):
        cache.write(n * BLOCK, block_bytes(n), {})
    stats = cache.stats()
    assert (stats["ram_bytes"], stats["disk_bytes"]) == (2 * BLOCK, BLOCK)  # block 0 spilled

    assert read(cache, 0, BLOCK) == block_bytes(0)
    assert (cache.stats()["ram_hits"], cache.stats()["disk_hits"]) == (0, 1)
    assert read(cache, 0, BLOCK) == block_bytes(0)  # promoted: now from RAM
    assert (cache.stats()["ram_hits"], cache.stats()["disk_hits"]) == (1, 1)

    # block 1 was the least recently used: it went to disk for block 0
    assert read(cache, BLOCK, BLOCK) == block_bytes(1)
    assert cache.stats()["disk_hits"] == 2
    stats = cache.stats()
    assert (stats["ram_bytes"], stats["disk_bytes"], stats["blocks"]) == (2 * BLOCK, BLOCK, 3)
    for n in range(3):
        assert read(cache, n * BLOCK, BLOCK) == block_bytes(n)
    cache.close()


def test_ram_overflow_keeps_hot_blocks_in_ram(tmp_path):
    cache = make_cache("device-ram-overflow", SIZE, 4 * BLOCK, tmp_path / "cache", 16 * BLOCK)
    for n in range(16):
        cache.write(n * BLOCK, block_bytes(n), {})
    hot = [0, 1]
    for n in hot:  # first touch may come from disk
        read(cache, n * BLOCK, BLOCK)
    before = cache.stats()
    rounds = 40
    for i in range(rounds):
        for n in hot:
            assert read(cache, n * BLOCK, BLOCK) == block_bytes(n)
        cold = 2 + i % 14
        assert read(cache, cold * BLOCK, BLOCK) == block_bytes(cold)
    after = cache.stats()
    ram_hits = after["ram_hits"] - before["ram_hits"]
    disk_hits = after["disk_hits"] - before["disk_hits"]
    # every hot read from RAM; the cold ones cycle through 14 blocks, so
    # (with 2 RAM slots left for them) each is on disk when it comes round
    assert ram_hits == rounds * len(hot)
    assert disk_hits == rounds
    assert after["blocks"] == 16
    cache.close()


def test_a_read_across_tiers_counts_each_block_once(tmp_path):
    cache = make_cache("device-ram-overflow", SIZE, 2 * BLOCK, tmp_path / "cache", 8 * BLOCK)
    cache.write(0, b"".join(block_bytes(n) for n in range(6)), {})  # 4 spilled
    assert (
        read(cache, 0, 8 * BLOCK)
        == b"".join(block_bytes(n) for n in range(6)) + UPSTREAM[6 * BLOCK : 8 * BLOCK]
    )
    stats = cache.stats()
    # a scan longer than RAM pushes out each block just before it comes
    # round: all six from disk, each counted once
    assert (stats["ram_hits"], stats["disk_hits"]) == (0, 6)
    assert (stats["ram_bytes"], stats["disk_bytes"]) == (2 * BLOCK, 4 * BLOCK)
    cache.close()


# ---- fills ----


def test_needs_fill_names_partial_blocks_not_here_yet(tmp_path):
    cache = make_cache("device-ram", SIZE, 8 * BLOCK, None, 0)
    assert cache.needs_fill(0, 3 * BLOCK) == []
    assert cache.needs_fill(BLOCK + 1, 10) == [(BLOCK, BLOCK)]
    assert cache.needs_fill(BLOCK + 1, 3 * BLOCK) == [(BLOCK, BLOCK), (4 * BLOCK, BLOCK)]
    cache.write(BLOCK, block_bytes(1), {})
    cache.zero(4 * BLOCK, BLOCK, {})
    assert cache.needs_fill(BLOCK + 1, 3 * BLOCK) == []
    cache.close()


def test_the_short_last_block_is_filled_by_its_own_length():
    size = 3 * BLOCK + 100
    cache = make_cache("device-ram", size, 8 * BLOCK, None, 0)
    assert cache.needs_fill(3 * BLOCK, 50) == [(3 * BLOCK, 100)]
    assert cache.needs_fill(3 * BLOCK, 100) == []  # reaches the end: whole
    cache.write(3 * BLOCK, b"x" * 50, {3 * BLOCK: b"u" * 100})
    assert cache.read_plan(3 * BLOCK, 100) == [(3 * BLOCK, 100, b"x" * 50 + b"u" * 50)]
    cache.close()


def test_a_write_without_its_fill_is_a_programming_error():
    cache = make_cache("device-ram", SIZE, 8 * BLOCK, None, 0)
    with pytest.raises(ValueError):
        cache.write(10, b"abc", {})
    with pytest.raises(ValueError):
        cache.write(10, b"abc", {0: b"short"})
    assert cache.stats()["blocks"] == 0
    cache.close()


def test_a_fill_for_a_block_cached_meanwhile_is_ignored():
    cache = make_cache("device-ram", SIZE, 8 * BLOCK, None, 0)
    fills = fills_for(cache, 10, 3)  # the session reads upstream ...
    cache.write(0, block_bytes(0), {})  # ... while another write lands
    cache.write(10, b"abc", fills)
    expected = bytearray(block_bytes(0))
    expected[10:13] = b"abc"
    assert read(cache, 0, BLOCK) == expected
    cache.close()


def test_ranges_off_the_disk_are_programming_errors():
    cache = make_cache("device-ram", SIZE, 8 * BLOCK, None, 0)
    for call in (
        lambda: cache.needs_fill(SIZE - 1, 2),
        lambda: cache.write(SIZE, b"x", {}),
        lambda: cache.zero(-1, 1, {}),
        lambda: cache.read_plan(0, SIZE + 1),
    ):
        with pytest.raises(ValueError):
            call()
    cache.close()


# ---- zero blocks and plans ----


def test_zero_blocks_cost_no_capacity_and_read_as_zeroes():
    cache = make_cache("device-ram", SIZE, 1 * BLOCK, None, 0)
    cache.trim(0, SIZE, {})
    cache.write(5 * BLOCK, bytes(2 * BLOCK), {})
    cache.write(9 * BLOCK + 7, bytes(3), fills_for(cache, 9 * BLOCK + 7, 3))
    assert cache.stats()["blocks"] == 0
    assert cache.read_plan(0, SIZE) == [(0, SIZE, bytes(SIZE))]
    cache.close()


def test_a_plan_merges_neighbours_and_names_upstream_ranges():
    cache = make_cache("device-ram", SIZE, 8 * BLOCK, None, 0)
    cache.write(2 * BLOCK, block_bytes(2), {})
    cache.zero(3 * BLOCK, BLOCK, {})
    cache.write(4 * BLOCK, block_bytes(4), {})
    plan = cache.read_plan(100, 8 * BLOCK)
    assert [(o, n, d is None) for o, n, d in plan] == [
        (100, 2 * BLOCK - 100, True),
        (2 * BLOCK, 3 * BLOCK, False),
        (5 * BLOCK, 3 * BLOCK + 100, True),
    ]
    assert plan[1][2] == block_bytes(2) + bytes(BLOCK) + block_bytes(4)
    assert cache.read_plan(0, 0) == []
    cache.close()


def test_make_cache_refuses_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="unknown"):
        make_cache("device-tape", SIZE, BLOCK, None, 0)
    with pytest.raises(ValueError, match="disk path"):
        make_cache("device-disk", SIZE, 0, None, BLOCK)
    with pytest.raises(ValueError):
        make_cache("device-ram", SIZE, -1, None, 0)
