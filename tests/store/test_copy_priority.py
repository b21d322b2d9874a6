"""A copy's thread runs at the copy priority, lowered once and never raised
back; other threads keep theirs."""

from __future__ import annotations

import os
import threading

from vdfarm.store.copy_priority import COPY_NICE, lower_this_thread


def nice_in_a_thread(before: int | None = None) -> tuple[int, int]:
    """(nice of a new thread after lower_this_thread, nice of this thread),
    the new thread set to BEFORE first if given."""
    seen: list[int] = []

    def run() -> None:
        tid = threading.get_native_id()
        if before is not None:
            os.setpriority(os.PRIO_PROCESS, tid, before)
        lower_this_thread()
        seen.append(os.getpriority(os.PRIO_PROCESS, tid))

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    return seen[0], os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


def test_a_copy_thread_is_lowered_and_no_other():
    mine = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    assert nice_in_a_thread() == (max(COPY_NICE, mine), mine)


def test_a_thread_already_lower_stays_as_it_is():
    assert nice_in_a_thread(before=COPY_NICE + 5)[0] == COPY_NICE + 5
