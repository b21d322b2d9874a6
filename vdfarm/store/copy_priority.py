"""The CPU priority of replica copies: below the devices' streaming.

Rules:
- A thread that reads, packs, hashes or writes a replica copy, on the
  sending server as on the receiving one, runs at COPY_NICE
  (`lower_this_thread`): on a busy server the scheduler gives the devices'
  I/O (the event loop's thread) the CPU first, and an idle server still
  gives the copy all of it.
- Linux keeps a nice value per thread (setpriority on the thread's own
  id); a thread keeps it for its life and the threads it starts inherit
  it. So only threads of the copy's own are lowered, never a pooled thread
  that runs other work later (raising a priority back needs a privilege).
- Where the system refuses, nothing changes (advice, like fadvise).
"""

from __future__ import annotations

import os
import threading

COPY_NICE = 10


def lower_this_thread(nice: int = COPY_NICE) -> None:
    """Run the calling thread at NICE (if it runs at less). Raises nothing."""
    try:
        tid = threading.get_native_id()
        if os.getpriority(os.PRIO_PROCESS, tid) < nice:
            os.setpriority(os.PRIO_PROCESS, tid, nice)
    except (OSError, AttributeError):
        pass
