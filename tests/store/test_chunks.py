"""Chunk lists of real files: one pass gives every chunk's hash and the
whole file's, cached beside the file and recomputed when the file changes;
a chunk list from a peer is checked field by field; ranges read back."""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from tests.store.replica_helpers import list_of
from vdfarm.store import chunks as chunks_module
from vdfarm.store.chunks import (
    CHUNK_SIZE,
    MAX_CHUNK_SIZE,
    MAX_CHUNKS,
    MIN_CHUNK_SIZE,
    ChunkList,
    cache_path,
    chunk_list,
    read_range,
    zero_hash,
)
from vdfarm.store.errors import BadChunkList, StoreError
from vdfarm.store.uncached import read_block

SMALL = MIN_CHUNK_SIZE


def write_random(path, size):
    data = os.urandom(size)
    path.write_bytes(data)
    return data


def expected_list(data, chunk_size):
    return list_of(data, chunk_size)


def test_chunk_list_of_a_file_with_a_short_last_chunk(tmp_path):
    data = write_random(tmp_path / "v1.qcow2", 2 * CHUNK_SIZE + 12345)
    found = chunk_list(tmp_path / "v1.qcow2")
    assert found == expected_list(data, CHUNK_SIZE)
    assert len(found.chunks) == 3
    assert found.span(2) == (2 * CHUNK_SIZE, 12345)


def test_an_empty_file_has_no_chunks(tmp_path):
    (tmp_path / "empty").write_bytes(b"")
    found = chunk_list(tmp_path / "empty")
    assert found == ChunkList(0, hashlib.sha256(b"").hexdigest(), CHUNK_SIZE, (), prefixes=())


def test_the_list_is_cached_beside_the_file_and_used(tmp_path, monkeypatch):
    path = tmp_path / "base.raw"
    data = write_random(path, 3 * SMALL + 7)
    first = chunk_list(path, SMALL)
    cache = cache_path(path)
    assert cache.name == ".chunks-base.raw.json"
    assert cache.stat().st_mode & 0o777 == 0o600
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".new-")]

    def no_hashing(*_):
        raise AssertionError("the cache was not used")

    monkeypatch.setattr(chunks_module, "_compute", no_hashing)
    assert chunk_list(path, SMALL) == first == expected_list(data, SMALL)


def test_a_changed_file_is_hashed_again(tmp_path):
    path = tmp_path / "base.raw"
    write_random(path, 2 * SMALL)
    old = chunk_list(path, SMALL)
    data = write_random(path, 2 * SMALL)  # same size, new mtime
    os.utime(path, ns=(1, 1))
    assert chunk_list(path, SMALL) == expected_list(data, SMALL) != old
    with open(path, "ab") as fh:
        fh.write(b"more")
    assert chunk_list(path, SMALL) == expected_list(data + b"more", SMALL)


@pytest.mark.parametrize(
    "content",
    [b"not json", b"[]", b'{"key": {}, "chunks": {}}', b"{" + b" " * (1 << 20)],
)
def test_a_broken_cache_is_ignored_and_replaced(tmp_path, content):
    path = tmp_path / "base.raw"
    data = write_random(path, SMALL + 1)
    cache_path(path).write_bytes(content)
    assert chunk_list(path, SMALL) == expected_list(data, SMALL)
    assert (
        json.loads(cache_path(path).read_text())["chunks"]["sha256"]
        == expected_list(data, SMALL).sha256
    )


def test_a_cache_of_another_chunk_size_is_not_used(tmp_path):
    path = tmp_path / "base.raw"
    data = write_random(path, 3 * SMALL)
    chunk_list(path, SMALL)
    assert chunk_list(path, 2 * SMALL) == expected_list(data, 2 * SMALL)


def test_links_are_not_followed(tmp_path):
    target = tmp_path / "elsewhere"
    write_random(target, SMALL)
    (tmp_path / "base.raw").symlink_to(target)
    with pytest.raises(StoreError, match="base.raw"):
        chunk_list(tmp_path / "base.raw", SMALL)
    with pytest.raises(StoreError):
        list(read_range(tmp_path / "base.raw", 0, 10))


def test_a_planted_cache_link_is_neither_read_nor_written_through(tmp_path):
    path = tmp_path / "base.raw"
    data = write_random(path, SMALL)
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    cache_path(path).symlink_to(victim)
    assert chunk_list(path, SMALL) == expected_list(data, SMALL)
    assert victim.read_text() == "keep me"
    assert not cache_path(path).is_symlink()


def test_a_directory_is_not_listed(tmp_path):
    (tmp_path / "dir").mkdir()
    with pytest.raises(StoreError):
        chunk_list(tmp_path / "dir", SMALL)


def good_dict(size=2 * SMALL + 1, chunk_size=SMALL):
    count = -(-size // chunk_size)
    return {
        "size": size,
        "sha256": "a" * 64,
        "chunk_size": chunk_size,
        "chunks": ["b" * 64] * count,
        "prefixes": ["d" * 64] * (count - 1) + ["a" * 64],
        "packable": [1],
    }


def test_a_chunk_list_round_trips():
    found = ChunkList.from_dict(good_dict())
    assert ChunkList.from_dict(found.to_dict()) == found
    assert len(found.chunks) == 3


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: [d], "not a JSON object"),
        (lambda d: d | {"size": -1}, "bad size"),
        (lambda d: d | {"size": True}, "bad size"),
        (lambda d: d | {"size": "3"}, "bad size"),
        (lambda d: d | {"sha256": "A" * 64}, "bad sha256"),
        (lambda d: d | {"sha256": "a" * 63}, "bad sha256"),
        (lambda d: d | {"sha256": None}, "bad sha256"),
        (lambda d: d | {"chunk_size": 0}, "bad chunk size"),
        (lambda d: d | {"chunk_size": MIN_CHUNK_SIZE - 1}, "bad chunk size"),
        (lambda d: d | {"chunk_size": MAX_CHUNK_SIZE + 1}, "bad chunk size"),
        (lambda d: d | {"chunks": d["chunks"][:-1]}, "should hold 3"),
        (lambda d: d | {"chunks": d["chunks"] + ["b" * 64]}, "should hold 3"),
        (lambda d: d | {"chunks": "b" * 64}, "should hold 3"),
        (lambda d: d | {"chunks": ["b" * 64, "b" * 64, "../x"]}, "not a sha256"),
        (lambda d: d | {"chunks": ["b" * 64, "b" * 64, 7]}, "not a sha256"),
        (lambda d: d | {"size": (MAX_CHUNKS + 1) * SMALL}, "too large"),
    ],
)
def test_a_bad_chunk_list_is_refused(change, message):
    with pytest.raises(BadChunkList, match=message):
        ChunkList.from_dict(change(good_dict()))


def test_zero_chunks_are_known_by_their_hash():
    found = ChunkList(SMALL + 5, "a" * 64, SMALL, (zero_hash(SMALL), zero_hash(4)))
    assert found.is_zero(0)
    assert not found.is_zero(1)  # the last chunk has 5 bytes, not 4
    assert zero_hash(SMALL) == hashlib.sha256(bytes(SMALL)).hexdigest()


def test_read_range_gives_the_bytes_in_blocks(tmp_path):
    path = tmp_path / "base.raw"
    data = write_random(path, 5 * SMALL + 3)
    blocks = list(read_range(path, 100, 3 * SMALL, block=SMALL))
    assert [len(b) for b in blocks] == [SMALL, SMALL, SMALL]
    assert b"".join(blocks) == data[100 : 100 + 3 * SMALL]
    assert b"".join(read_range(path, 0, len(data))) == data
    assert list(read_range(path, len(data), 0)) == []


def test_read_range_past_the_end_fails(tmp_path):
    path = tmp_path / "base.raw"
    write_random(path, SMALL)
    blocks = read_range(path, SMALL - 10, 20)
    assert len(next(blocks)) == 10
    with pytest.raises(StoreError, match="ends at"):
        next(blocks)


def test_read_block_reads_cached_and_uncached_pages_alike(tmp_path):
    path = tmp_path / "f"
    data = write_random(path, 3 * SMALL)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert read_block(fd, 0, 3 * SMALL) == data  # just written: in the cache
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        assert read_block(fd, SMALL, 3 * SMALL) == data[SMALL:]  # short at the end
        assert read_block(fd, 3 * SMALL, 10) == b""
    finally:
        os.close(fd)


def test_the_list_has_the_prefix_hashes_and_the_packable_chunks(tmp_path):
    table = bytearray(SMALL)
    table[:16] = os.urandom(16)  # mostly zeroes: worth packing
    data = os.urandom(SMALL) + bytes(table) + bytes(SMALL) + os.urandom(100)
    (tmp_path / "v1.qcow2").write_bytes(data)
    found = chunk_list(tmp_path / "v1.qcow2", SMALL)
    assert found.prefixes == tuple(
        hashlib.sha256(data[: min(len(data), (i + 1) * SMALL)]).hexdigest() for i in range(4)
    )
    assert found.prefixes[-1] == found.sha256
    assert found.packable == (1,)  # the zero chunk is a hole, never fetched: not listed
    assert [found.is_packable(i) for i in range(4)] == [False, True, False, False]


def test_a_cache_of_the_older_form_is_computed_again(tmp_path):
    path = tmp_path / "base.raw"
    data = write_random(path, 2 * SMALL)
    chunk_list(path, SMALL)
    cached = json.loads(cache_path(path).read_text())
    older = {"key": cached["key"], "chunks": list_of(data, SMALL, older=True).to_dict()}
    cache_path(path).write_text(json.dumps(older))
    assert chunk_list(path, SMALL) == expected_list(data, SMALL)
    assert json.loads(cache_path(path).read_text())["form"] == chunks_module.CACHE_FORM


def test_an_older_peers_list_is_taken_without_prefixes():
    older = {k: v for k, v in good_dict().items() if k not in ("prefixes", "packable")}
    found = ChunkList.from_dict(older)
    assert found.prefixes is None and found.packable == ()
    assert "prefixes" not in found.to_dict()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d | {"prefixes": d["prefixes"][:-1]}, "3 prefix hashes"),
        (lambda d: d | {"prefixes": "a" * 64}, "3 prefix hashes"),
        (lambda d: d | {"prefixes": [7, *d["prefixes"][1:]]}, "prefix hash .* not a sha256"),
        (lambda d: d | {"prefixes": [*d["prefixes"][:-1], "c" * 64]}, "last prefix hash"),
        (lambda d: d | {"packable": [2, 1]}, "ascending"),
        (lambda d: d | {"packable": [1, 1]}, "ascending"),
        (lambda d: d | {"packable": [3]}, "ascending"),
        (lambda d: d | {"packable": [True]}, "ascending"),
        (lambda d: d | {"packable": "1"}, "ascending"),
    ],
)
def test_bad_prefixes_or_packable_chunks_are_refused(change, message):
    with pytest.raises(BadChunkList, match=message):
        ChunkList.from_dict(change(good_dict()))


def test_the_largest_list_fits_the_caps_on_the_wire_and_in_the_cache():
    from vdfarm.replication.peer_http import MAX_LIST_BYTES
    from vdfarm.store.chunks import MAX_CACHE_BYTES

    count = 1000
    top = MAX_CHUNKS - 1  # the widest index a list can hold
    listed = ChunkList(
        count * SMALL,
        "a" * 64,
        SMALL,
        ("b" * 64,) * count,
        prefixes=("c" * 63 + "d",) * (count - 1) + ("a" * 64,),
        packable=tuple(range(top - count + 1, top + 1)),
    ).to_dict()
    listed["packable"] = [top] * count  # width, not order, is what is measured
    per_chunk = len(json.dumps(listed, separators=(",", ":"))) / count
    assert per_chunk * MAX_CHUNKS + 4096 <= MAX_CACHE_BYTES
    assert per_chunk * MAX_CHUNKS * 1.05 <= MAX_LIST_BYTES  # a peer's spaces too
