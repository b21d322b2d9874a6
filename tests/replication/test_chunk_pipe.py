"""The writer thread of a copy: chunks written in order while the next one
fills, a wrong chunk reported at the next hand-over, nothing in flight once
the block is left."""

from __future__ import annotations

import os

import pytest

from tests.store.replica_helpers import list_of, pieces_of
from vdfarm.replication.chunk_pipe import ChunkPipe
from vdfarm.store.chunks import MIN_CHUNK_SIZE
from vdfarm.store.errors import BadChunk
from vdfarm.store.receive import Partial

CHUNK = MIN_CHUNK_SIZE


@pytest.fixture
def vdisk_dir(tmp_path):
    (tmp_path / "store").mkdir()
    return tmp_path / "store" / "w"


def test_chunks_are_written_in_order(vdisk_dir):
    data = os.urandom(5 * CHUNK + 7)
    written = []
    with Partial(vdisk_dir, "v1.qcow2", list_of(data, CHUNK)) as partial:
        with ChunkPipe(partial, CHUNK, written.append) as pipe:
            for index, piece in enumerate(pieces_of(data, CHUNK)):
                pipe.buffer[: len(piece)] = piece
                pipe.submit(index, len(piece))
            pipe.settle()
        partial.publish()
    assert written == [0, 1, 2, 3, 4, 5]
    assert (vdisk_dir / "v1.qcow2").read_bytes() == data


def test_a_wrong_chunk_surfaces_at_the_next_hand_over(vdisk_dir):
    data = os.urandom(4 * CHUNK)
    pieces = pieces_of(data, CHUNK)
    pieces[1] = bytes(CHUNK)
    written = []
    with Partial(vdisk_dir, "v1.qcow2", list_of(data, CHUNK)) as partial:
        with ChunkPipe(partial, CHUNK, written.append) as pipe:
            for index in (0, 1):
                pipe.buffer[:CHUNK] = pieces[index]
                pipe.submit(index, CHUNK)
            pipe.buffer[:CHUNK] = pieces[2]
            with pytest.raises(BadChunk, match="chunk 1 of v1.qcow2"):
                pipe.submit(2, CHUNK)
        assert written == [0]
        assert partial.resume_offset() == CHUNK  # only the good chunk is there


def test_leaving_the_block_waits_for_the_write_in_flight(vdisk_dir):
    data = os.urandom(2 * CHUNK)
    with Partial(vdisk_dir, "v1.qcow2", list_of(data, CHUNK)) as partial:
        with (
            pytest.raises(RuntimeError, match="window closed"),
            ChunkPipe(partial, CHUNK, lambda _: None) as pipe,
        ):
            pipe.buffer[:CHUNK] = data[:CHUNK]
            pipe.submit(0, CHUNK)
            raise RuntimeError("window closed")
        assert (vdisk_dir / ".repl-v1.qcow2").stat().st_size == CHUNK
