"""Hypothesis strategy shared by the block layers' model tests: byte ranges
inside a disk, often on or next to block (cluster) edges, where layers that
work in blocks go wrong."""

from __future__ import annotations

from hypothesis import strategies as st


def ranges_near_edges(size: int, unit: int, small_units: int):
    """(offset, length) with 0 <= offset < offset + length <= SIZE; offsets and
    lengths often a multiple of UNIT give or take a byte or half a unit;
    lengths up to SIZE, often at most SMALL_UNITS units."""
    near_edge = st.builds(
        lambda n, nudge: n * unit + nudge,
        st.integers(0, size // unit),
        st.sampled_from([0, 0, 1, -1, unit // 2]),
    )
    offsets = st.one_of(st.integers(0, size - 1), near_edge).map(lambda o: min(max(o, 0), size - 1))
    lengths = st.one_of(st.integers(1, size), st.integers(1, small_units * unit), near_edge)
    return st.tuples(offsets, lengths).map(lambda ol: (ol[0], min(max(ol[1], 1), size - ol[0])))
