"""CheckedStack: every range and flag error, raised before any layer runs."""

import dataclasses
import errno

import pytest

from vdfarm.block.layer import Capabilities, Extent, Layer
from vdfarm.block.memory import MemoryDisk
from vdfarm.block.stack import CheckedStack

SIZE = 8192
ALL = Capabilities(
    read_only=False,
    can_flush=True,
    can_fua=True,
    can_trim=True,
    can_zero=True,
    can_fast_zero=True,
    can_cache=True,
    can_extents=True,
    can_multi_conn=True,
)
NONE = Capabilities()
READ_ONLY = dataclasses.replace(
    ALL, read_only=True, can_fua=False, can_trim=False, can_zero=False, can_fast_zero=False
)


class Spy(Layer):
    """A layer that records every call and answers from a MemoryDisk."""

    def __init__(self, caps: Capabilities):
        super().__init__(MemoryDisk(SIZE, initial=b"\x11" * SIZE))
        self.caps = caps
        self.calls = []

    def capabilities(self):
        return self.caps

    def __getattribute__(self, name):
        if name in {"pread", "pwrite", "flush", "trim", "zero", "extents", "cache"}:
            method = super().__getattribute__(name)

            def record(*args):
                self.calls.append((name, *args))
                return method(*args)

            return record
        return super().__getattribute__(name)


def stack(caps=ALL):
    spy = Spy(caps)
    return CheckedStack(spy), spy


ERRORS = [
    # (capabilities, call, errno)
    (ALL, lambda s: s.pread(-1, 10), errno.EINVAL),
    (ALL, lambda s: s.pread(0, -1), errno.EINVAL),
    (ALL, lambda s: s.pread(SIZE - 1, 2), errno.EINVAL),
    (ALL, lambda s: s.pread(SIZE + 1, 0), errno.EINVAL),
    (ALL, lambda s: s.pwrite(-1, b"x"), errno.EINVAL),
    (ALL, lambda s: s.pwrite(SIZE - 1, b"xy"), errno.ENOSPC),
    (ALL, lambda s: s.pwrite(SIZE, b"x"), errno.ENOSPC),
    (ALL, lambda s: s.zero(SIZE - 10, 11), errno.ENOSPC),
    (ALL, lambda s: s.zero(-5, 1), errno.EINVAL),
    (ALL, lambda s: s.zero(0, -1), errno.EINVAL),
    (ALL, lambda s: s.trim(SIZE - 10, 11), errno.EINVAL),
    (ALL, lambda s: s.trim(-1, 1), errno.EINVAL),
    (ALL, lambda s: s.cache(SIZE, 1), errno.EINVAL),
    (ALL, lambda s: s.cache(0, -1), errno.EINVAL),
    (ALL, lambda s: s.extents(SIZE - 1, 2), errno.EINVAL),
    (ALL, lambda s: s.extents(0, 0), errno.EINVAL),
    (ALL, lambda s: s.extents(-1, 1), errno.EINVAL),
    (READ_ONLY, lambda s: s.pwrite(0, b"x"), errno.EPERM),
    (READ_ONLY, lambda s: s.pwrite(SIZE, b"x"), errno.EPERM),  # EPERM wins over range
    (READ_ONLY, lambda s: s.trim(0, 10), errno.EPERM),
    (READ_ONLY, lambda s: s.zero(0, 10), errno.EPERM),
    (READ_ONLY, lambda s: s.zero(0, 10, fast=True), errno.EPERM),
    (NONE, lambda s: s.flush(), errno.EINVAL),
    (NONE, lambda s: s.trim(0, 1), errno.EINVAL),
    (NONE, lambda s: s.zero(0, 1), errno.EINVAL),
    (NONE, lambda s: s.cache(0, 1), errno.EINVAL),
    (NONE, lambda s: s.extents(0, 1), errno.EINVAL),
    (NONE, lambda s: s.pwrite(0, b"x", fua=True), errno.EINVAL),
    (NONE, lambda s: s.trim(0, 1, fua=True), errno.EINVAL),
    (
        dataclasses.replace(ALL, can_fast_zero=False),
        lambda s: s.zero(0, 1, fast=True),
        errno.ENOTSUP,
    ),
    (dataclasses.replace(ALL, can_fua=False), lambda s: s.zero(0, 1, fua=True), errno.EINVAL),
]


@pytest.mark.parametrize("caps, call, err", ERRORS)
def test_errors_stop_at_the_top(caps, call, err):
    checked, spy = stack(caps)
    with pytest.raises(OSError) as exc:
        call(checked)
    assert exc.value.errno == err
    assert spy.calls == []
    assert spy.next.pread(0, SIZE) == b"\x11" * SIZE


def test_valid_calls_pass_through_unchanged():
    checked, spy = stack()
    assert checked.pread(SIZE - 4, 4) == b"\x11" * 4
    checked.pwrite(SIZE - 2, b"ab", fua=True)
    checked.zero(0, 10, may_trim=True, fua=True, fast=True)
    checked.trim(100, 10, fua=True)
    checked.flush()
    checked.cache(0, SIZE)
    assert checked.extents(0, SIZE) == [Extent(SIZE, 0)]
    assert spy.calls == [
        ("pread", SIZE - 4, 4),
        ("pwrite", SIZE - 2, b"ab", True),
        ("zero", 0, 10, True, True, True),
        ("trim", 100, 10, True),
        ("flush",),
        ("cache", 0, SIZE),
        ("extents", 0, SIZE),
    ]


def test_zero_length_does_nothing_but_is_not_an_error():
    checked, spy = stack()
    assert checked.pread(SIZE, 0) == b""
    checked.pwrite(SIZE, b"")
    checked.zero(SIZE, 0)
    checked.trim(0, 0)
    checked.cache(5, 0)
    assert spy.calls == []


def test_read_only_stack_still_reads_and_flushes():
    checked, spy = stack(READ_ONLY)
    assert checked.pread(0, 2) == b"\x11\x11"
    checked.flush()
    assert [c[0] for c in spy.calls] == ["pread", "flush"]


def test_size_and_capabilities_read_once():
    checked, spy = stack()
    spy.caps = NONE
    assert checked.capabilities() == ALL
    assert checked.size == SIZE
