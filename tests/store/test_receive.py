"""A file received chunk by chunk into `.repl-<file>`: every chunk checked
before a byte is written, resumed at the first chunk that does not match,
published under its real name only when the whole file verifies, a full
disk said in one line with nothing else touched."""

from __future__ import annotations

import os

import pytest

from tests.store.replica_helpers import list_of, listing, pieces_of, tmpfs
from vdfarm.store.chunks import MIN_CHUNK_SIZE, ChunkList
from vdfarm.store.errors import BadChunk, FileMismatch, InvalidName, StoreError, StoreFull
from vdfarm.store.receive import Partial

CHUNK = MIN_CHUNK_SIZE


@pytest.fixture
def data():
    return os.urandom(4 * CHUNK + 1000)


@pytest.fixture(params=[False, True], ids=["prefixes", "older-list"])
def chunks(data, request):
    """The chunk list with prefix hashes (one hash per byte), and as an
    older vdfarm sends it (each chunk's hash, then the whole file's)."""
    return list_of(data, CHUNK, older=request.param)


@pytest.fixture
def vdisk_dir(tmp_path):
    (tmp_path / "store").mkdir()
    return tmp_path / "store" / "w"


def test_a_file_is_received_and_published(vdisk_dir, data, chunks):
    with Partial(vdisk_dir, "v1.qcow2", chunks) as partial:
        assert partial.resume_offset() == 0
        for index, piece in enumerate(pieces_of(data, CHUNK)):
            partial.write_chunk(index, piece)
            assert not (vdisk_dir / "v1.qcow2").exists()
        assert (vdisk_dir / ".repl-v1.qcow2").stat().st_size == len(data)
        partial.publish()
    assert (vdisk_dir / "v1.qcow2").read_bytes() == data
    assert [p.name for p in vdisk_dir.iterdir()] == ["v1.qcow2"]


def test_the_vdisk_directory_is_made_like_the_stores(vdisk_dir, chunks):
    with Partial(vdisk_dir, "base.raw", chunks):
        pass
    made = vdisk_dir.stat().st_mode & 0o777
    (vdisk_dir.parent / "other").mkdir()
    assert made == (vdisk_dir.parent / "other").stat().st_mode & 0o777
    assert (vdisk_dir / ".repl-base.raw").stat().st_mode & 0o777 == 0o600


def test_a_wrong_chunk_writes_nothing(vdisk_dir, data, chunks):
    pieces = pieces_of(data, CHUNK)
    with Partial(vdisk_dir, "v1.qcow2", chunks) as partial:
        partial.write_chunk(0, pieces[0])
        temp = vdisk_dir / ".repl-v1.qcow2"
        before = temp.read_bytes()
        bad = bytearray(pieces[1])
        bad[7] ^= 1
        for index, piece, message in (
            (1, bytes(bad), "does not match its sha256"),
            (1, pieces[1][:-1], "has 65535 bytes, not 65536"),
            (4, pieces[1], "has 65536 bytes, not 1000"),
            (5, pieces[1], "has no chunk 5"),
            (-1, pieces[1], "has no chunk -1"),
        ):
            with pytest.raises(BadChunk, match=message):
                partial.write_chunk(index, piece)
            assert temp.read_bytes() == before


def test_a_copy_resumes_after_the_chunks_already_there(vdisk_dir, data, chunks):
    pieces = pieces_of(data, CHUNK)
    with Partial(vdisk_dir, "v1.qcow2", chunks) as partial:
        partial.resume_offset()
        partial.write_chunk(0, pieces[0])
        partial.write_chunk(1, pieces[1])
    with open(vdisk_dir / ".repl-v1.qcow2", "ab") as fh:
        fh.write(pieces[2][:500])  # half a chunk, as a cut connection leaves it
    with Partial(vdisk_dir, "v1.qcow2", chunks) as partial:
        assert partial.resume_offset() == 2 * CHUNK
        assert (vdisk_dir / ".repl-v1.qcow2").stat().st_size == 2 * CHUNK
        for index in (2, 3, 4):
            partial.write_chunk(index, pieces[index])
        partial.publish()  # the running hash covered the re-hashed prefix
    assert (vdisk_dir / "v1.qcow2").read_bytes() == data


def test_resume_cuts_at_the_first_chunk_that_does_not_match(vdisk_dir, data, chunks):
    temp = vdisk_dir / ".repl-v1.qcow2"
    vdisk_dir.mkdir()
    spoiled = bytearray(data[: 3 * CHUNK])
    spoiled[CHUNK + 5] ^= 0xFF
    temp.write_bytes(bytes(spoiled))
    with Partial(vdisk_dir, "v1.qcow2", chunks) as partial:
        assert partial.resume_offset() == CHUNK
        assert temp.read_bytes() == data[:CHUNK]


def test_chunks_out_of_order_are_checked_whole_at_publish(vdisk_dir, data, chunks):
    pieces = pieces_of(data, CHUNK)
    with Partial(vdisk_dir, "v1.qcow2", chunks) as partial:
        for index in (4, 2, 0, 1, 3):
            partial.write_chunk(index, pieces[index])
        partial.publish()
    assert (vdisk_dir / "v1.qcow2").read_bytes() == data


def test_a_lying_chunk_list_is_caught_at_publish(vdisk_dir, data, chunks):
    lying = ChunkList(chunks.size, "0" * 64, chunks.chunk_size, chunks.chunks)
    with Partial(vdisk_dir, "v1.qcow2", lying) as partial:
        for index, piece in enumerate(pieces_of(data, CHUNK)):
            partial.write_chunk(index, piece)
        with pytest.raises(FileMismatch, match="does not match its sha256"):
            partial.publish()
        assert not (vdisk_dir / "v1.qcow2").exists()
        partial.discard()
    assert not vdisk_dir.exists()  # it made the directory, and leaves none behind


def test_a_lying_list_of_prefixes_is_caught_at_the_last_chunk(vdisk_dir, data):
    spoiled = bytearray(data)
    spoiled[CHUNK + 5] ^= 0xFF
    true = list_of(data, CHUNK)
    made_up = list_of(bytes(spoiled), CHUNK)  # right for the spoiled bytes, but for the end
    lying = ChunkList(
        true.size,
        true.sha256,
        CHUNK,
        made_up.chunks,
        prefixes=made_up.prefixes[:-1] + (true.sha256,),
    )
    pieces = pieces_of(bytes(spoiled), CHUNK)
    with Partial(vdisk_dir, "v1.qcow2", lying) as partial:
        for index in range(4):
            partial.write_chunk(index, pieces[index])
        with pytest.raises(BadChunk, match="chunk 4 .* does not match its sha256"):
            partial.write_chunk(4, pieces[4])
        with pytest.raises(FileMismatch, match="incomplete"):
            partial.publish()
    with Partial(vdisk_dir, "v1.qcow2", true) as partial:
        assert partial.resume_offset() == CHUNK  # the next peer's list cuts the lie away


def test_an_incomplete_file_is_not_published(vdisk_dir, data, chunks):
    with Partial(vdisk_dir, "v1.qcow2", chunks) as partial:
        partial.write_chunk(0, data[:CHUNK])
        with pytest.raises(FileMismatch, match="incomplete"):
            partial.publish()
    assert not (vdisk_dir / "v1.qcow2").exists()


def test_publish_replaces_a_stray_file_of_that_name_and_its_cache(vdisk_dir, data, chunks):
    vdisk_dir.mkdir()
    (vdisk_dir / "v1.qcow2").write_bytes(b"stale")
    (vdisk_dir / ".chunks-v1.qcow2.json").write_text("{}")
    with Partial(vdisk_dir, "v1.qcow2", chunks) as partial:
        for index, piece in enumerate(pieces_of(data, CHUNK)):
            partial.write_chunk(index, piece)
        partial.publish()
    assert (vdisk_dir / "v1.qcow2").read_bytes() == data
    assert not (vdisk_dir / ".chunks-v1.qcow2.json").exists()


def test_zero_chunks_stay_holes(vdisk_dir):
    data = bytes(3 * CHUNK) + b"end"
    chunks = list_of(data, CHUNK)
    with Partial(vdisk_dir, "base.raw", chunks) as partial:
        for index in range(3):
            partial.write_zero_chunk(index)
        with pytest.raises(BadChunk, match="not all zeroes"):
            partial.write_zero_chunk(3)
        partial.write_chunk(3, b"end")
        partial.publish()
    published = vdisk_dir / "base.raw"
    assert published.read_bytes() == data
    assert published.stat().st_blocks * 512 < CHUNK


def test_a_second_copy_of_the_same_file_is_refused(vdisk_dir, chunks):
    with (
        Partial(vdisk_dir, "v1.qcow2", chunks),
        pytest.raises(StoreError, match="another copy of v1.qcow2 is running"),
    ):
        Partial(vdisk_dir, "v1.qcow2", chunks)
    with Partial(vdisk_dir, "v1.qcow2", chunks):  # free again once closed
        pass


def test_planted_temporaries_and_links_are_refused(vdisk_dir, tmp_path, chunks):
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    vdisk_dir.mkdir()
    (vdisk_dir / ".repl-a").symlink_to(victim)
    (vdisk_dir / ".repl-b").mkdir()
    os.mkfifo(vdisk_dir / ".repl-c")
    (vdisk_dir / ".repl-d").write_bytes(b"")
    os.chown(vdisk_dir / ".repl-d", 12345, 12345)
    for name, message in (
        ("a", "cannot open"),
        ("b", "cannot open"),
        ("c", "not a regular file of ours"),
        ("d", "not a regular file of ours"),
    ):
        with pytest.raises(StoreError, match=message):
            Partial(vdisk_dir, name, chunks)
    assert victim.read_text() == "keep me"
    (tmp_path / "store" / "linked").symlink_to(vdisk_dir)
    with pytest.raises(StoreError, match="cannot use the vDisk directory"):
        Partial(tmp_path / "store" / "linked", "x", chunks)


@pytest.mark.parametrize("name", ["../x", ".hidden", "a/b", "", "manifest.json"])
def test_names_are_plain(vdisk_dir, chunks, name):
    with pytest.raises(InvalidName):
        Partial(vdisk_dir, name, chunks)
    assert not vdisk_dir.exists()


def test_a_full_disk_is_said_in_one_line_and_touches_nothing_else(tmp_path):
    with tmpfs(tmp_path / "small", "8m") as root:
        vdisk_dir = root / "w"
        vdisk_dir.mkdir()
        (vdisk_dir / "base.raw").write_bytes(os.urandom(3 << 20))
        before = listing(root)
        data = os.urandom(8 << 20)
        chunks = list_of(data, 1 << 20)
        with Partial(vdisk_dir, "v1.qcow2", chunks) as partial:
            with pytest.raises(StoreFull, match="the store's disk is full") as caught:
                partial.ensure_space(partial.resume_offset())
            assert "\n" not in str(caught.value)
            with pytest.raises(StoreFull) as caught:
                for index, piece in enumerate(pieces_of(data, 1 << 20)):
                    partial.write_chunk(index, piece)
            assert "cannot receive v1.qcow2" in str(caught.value)
            written = (vdisk_dir / ".repl-v1.qcow2").stat().st_size
            assert written % (1 << 20) == 0  # cut back to whole chunks
            partial.discard()
        assert listing(root) == before


def test_enough_room_passes_the_space_check(tmp_path):
    with tmpfs(tmp_path / "small", "8m") as root:
        data = bytes(16 << 20) + os.urandom(1 << 20)  # mostly holes: 1 MiB to write
        chunks = list_of(data, 1 << 20)
        with Partial(root / "w", "base.raw", chunks) as partial:
            partial.ensure_space(partial.resume_offset())
            for index, piece in enumerate(pieces_of(data, 1 << 20)):
                if chunks.is_zero(index):
                    partial.write_zero_chunk(index)
                else:
                    partial.write_chunk(index, piece)
            partial.publish()
        assert (root / "w" / "base.raw").stat().st_size == len(data)
