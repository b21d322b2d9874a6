"""The helpers every layer shares (vdfarm.block.layer): extent merging, the
one loop that asks the layer below for its extents, file capabilities."""

from __future__ import annotations

import errno

import pytest

from vdfarm.block.layer import (
    EXTENT_HOLE,
    EXTENT_ZERO,
    Extent,
    Layer,
    add_extent,
    add_extents_below,
    file_capabilities,
)
from vdfarm.block.memory import MemoryDisk

HOLE = EXTENT_HOLE | EXTENT_ZERO


def test_add_extent_merges_equal_flags_only():
    out: list[Extent] = []
    add_extent(out, 10, 0)
    add_extent(out, 5, 0)
    add_extent(out, 7, HOLE)
    add_extent(out, 1, 0)
    assert out == [Extent(15, 0), Extent(7, HOLE), Extent(1, 0)]


class Scripted(Layer):
    """Answers extents from a fixed list, whatever is asked; records asks."""

    def __init__(self, answers: list[list[Extent]]) -> None:
        super().__init__(MemoryDisk(1 << 20))
        self.answers = answers
        self.asked: list[tuple[int, int]] = []

    def extents(self, offset: int, length: int) -> list[Extent]:
        self.asked.append((offset, length))
        return self.answers.pop(0)


def test_add_extents_below_asks_again_clips_and_merges():
    below = Scripted([[Extent(100, 0)], [Extent(50, 0), Extent(500, HOLE)]])
    out = [Extent(7, 0)]
    add_extents_below(out, below, 1000, 1200)
    assert below.asked == [(1000, 200), (1100, 100)]
    assert out == [Extent(157, 0), Extent(50, HOLE)]


def test_add_extents_below_without_an_answer_is_eio():
    below = Scripted([[]])
    with pytest.raises(OSError) as exc:
        add_extents_below([], below, 0, 10)
    assert exc.value.errno == errno.EIO


def test_file_capabilities():
    writable = file_capabilities(read_only=False, fast_zero=False)
    assert not writable.read_only and writable.can_trim and writable.can_fua
    assert not writable.can_fast_zero
    read_only = file_capabilities(read_only=True, fast_zero=True)
    assert read_only.read_only and not read_only.can_zero and not read_only.can_fast_zero
    assert read_only.can_flush and read_only.can_extents and read_only.can_multi_conn


def test_a_bottom_layer_has_no_file_ranges():
    assert MemoryDisk(4096).file_ranges(0, 4096) is None
    assert Layer(MemoryDisk(4096)).file_ranges(0, 4096) is None
