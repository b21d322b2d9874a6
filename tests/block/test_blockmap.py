"""BlockMap (states per block, runs, counts) and split_range (alignment)."""

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vdfarm.block.blockmap import BELOW, CACHED, ZERO, BlockMap, Piece, split_range


def states_of(bmap: BlockMap) -> list[int]:
    return [bmap.state(i) for i in range(bmap.block_count)]


def test_new_map_is_all_below():
    bmap = BlockMap(10)
    assert states_of(bmap) == [BELOW] * 10
    assert bmap.cached_count == 0
    assert bmap.runs(0, 10) == [(BELOW, 0, 10)]
    assert bmap.uniform_state(0, 10) == BELOW


def test_set_runs_and_counts():
    bmap = BlockMap(10)
    bmap.set(2, 5, CACHED)
    bmap.set(4, 6, ZERO)
    bmap.set(9, 10, CACHED)
    assert states_of(bmap) == [0, 0, 1, 1, 2, 2, 0, 0, 0, 1]
    assert bmap.cached_count == 3
    assert bmap.runs(0, 10) == [
        (BELOW, 0, 2),
        (CACHED, 2, 4),
        (ZERO, 4, 6),
        (BELOW, 6, 9),
        (CACHED, 9, 10),
    ]
    assert bmap.runs(3, 5) == [(CACHED, 3, 4), (ZERO, 4, 5)]
    assert bmap.count(CACHED, 0, 10) == 3
    assert bmap.count(ZERO, 5, 6) == 1
    assert bmap.uniform_state(2, 4) == CACHED
    assert bmap.uniform_state(2, 5) is None
    assert bmap.uniform_state(9, 10) == CACHED


def test_cached_count_follows_every_change():
    bmap = BlockMap(8)
    bmap.set(0, 8, CACHED)
    assert bmap.cached_count == 8
    bmap.set(3, 4, ZERO)
    bmap.set(6, 8, BELOW)
    assert bmap.cached_count == 5
    bmap.set(0, 8, CACHED)
    assert bmap.cached_count == 8
    bmap.set(5, 5, ZERO)  # empty range: no change
    assert bmap.cached_count == 8


def test_reset_forgets_everything():
    bmap = BlockMap(1000)
    bmap.set(10, 900, CACHED)
    bmap.set(950, 960, ZERO)
    bmap.reset()
    assert bmap.cached_count == 0
    assert bmap.runs(0, 1000) == [(BELOW, 0, 1000)]


def test_empty_map_and_bad_count():
    assert BlockMap(0).block_count == 0
    with pytest.raises(ValueError):
        BlockMap(-1)


@given(
    st.lists(
        st.tuples(st.integers(0, 63), st.integers(0, 63), st.sampled_from([BELOW, CACHED, ZERO])),
        max_size=30,
    ),
    st.integers(0, 63),
    st.integers(1, 64),
)
def test_map_agrees_with_a_list(ops, first, span):
    end = min(first + span, 64)
    bmap = BlockMap(64)
    model = [BELOW] * 64
    for a, b, state in ops:
        a, b = min(a, b), max(a, b)
        bmap.set(a, b, state)
        model[a:b] = [state] * (b - a)
    assert states_of(bmap) == model
    assert bmap.cached_count == model.count(CACHED)
    runs = bmap.runs(first, end)
    assert [s for state, a, b in runs for s in [state] * (b - a)] == model[first:end]
    assert all(x[0] != y[0] for x, y in itertools.pairwise(runs))
    uniform = bmap.uniform_state(first, end)
    assert uniform == (model[first] if len(set(model[first:end])) == 1 else None)


@pytest.mark.parametrize(
    "offset, length, disk, expected",
    [
        (0, 4096, 8192, [Piece(0, 1, 0, 4096, True)]),
        (0, 8192, 8192, [Piece(0, 2, 0, 8192, True)]),
        (100, 50, 8192, [Piece(0, 1, 100, 150, False)]),
        (100, 3996, 8192, [Piece(0, 1, 100, 4096, False)]),
        (100, 4000, 8192, [Piece(0, 1, 100, 4096, False), Piece(1, 2, 4096, 4100, False)]),
        (
            4000,
            8192,
            16384,
            [
                Piece(0, 1, 4000, 4096, False),
                Piece(1, 2, 4096, 8192, True),
                Piece(2, 3, 8192, 12192, False),
            ],
        ),
        (4000, 12384, 16384, [Piece(0, 1, 4000, 4096, False), Piece(1, 4, 4096, 16384, True)]),
        (4096, 100, 8192, [Piece(1, 2, 4096, 4196, False)]),
        # a short last block (disk 10000 bytes) is whole when the range reaches the end
        (8192, 1808, 10000, [Piece(2, 3, 8192, 10000, True)]),
        (4096, 5904, 10000, [Piece(1, 3, 4096, 10000, True)]),
        (8200, 1800, 10000, [Piece(2, 3, 8200, 10000, False)]),
        (8192, 1000, 10000, [Piece(2, 3, 8192, 9192, False)]),
        (0, 0, 8192, []),
    ],
)
def test_split_range_table(offset, length, disk, expected):
    assert split_range(offset, length, 4096, disk) == expected


@given(st.data(), st.sampled_from([512, 4096]), st.integers(1, 40000))
def test_split_range_covers_the_range_exactly(data, block_size, disk):
    offset = data.draw(st.integers(0, disk - 1))
    length = data.draw(st.integers(1, disk - offset))
    pieces = split_range(offset, length, block_size, disk)
    assert pieces[0].start == offset and pieces[-1].stop == offset + length
    assert all(a.stop == b.start and a.end == b.first for a, b in itertools.pairwise(pieces))
    assert len(pieces) <= 3
    for piece in pieces:
        block_start = piece.first * block_size
        block_stop = min(piece.end * block_size, disk)
        assert block_start <= piece.start < piece.stop <= block_stop
        if piece.whole:
            assert (piece.start, piece.stop) == (block_start, block_stop)
        else:
            assert piece.end == piece.first + 1
            assert (piece.start, piece.stop) != (block_start, block_stop)
