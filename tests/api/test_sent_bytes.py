"""The counter of bytes sent to peers: a block counts once the next one is
asked for, so a download stopped early counts what went out."""

from __future__ import annotations

import threading

from vdfarm.api.sent_bytes import SentBytes


def test_blocks_count_once_handed_on():
    sent = SentBytes()
    blocks = sent.counting("w/base.raw", iter([b"ab", b"cde", b"f"]))
    assert next(blocks) == b"ab"
    assert sent.snapshot() == {}
    assert next(blocks) == b"cde"
    assert sent.snapshot() == {"w/base.raw": 2}
    assert list(blocks) == [b"f"]
    assert sent.snapshot() == {"w/base.raw": 6}


def test_a_stopped_download_closes_its_source():
    closed = []

    def source():
        try:
            yield b"x" * 10
            yield b"y" * 10
        finally:
            closed.append(True)

    sent = SentBytes()
    blocks = sent.counting("w/v1.qcow2", source())
    next(blocks)
    blocks.close()
    assert closed == [True] and sent.snapshot() == {}


def test_threads_count_together():
    sent = SentBytes()

    def download():
        for _ in sent.counting("w/base.raw", iter([b"z"] * 1000)):
            pass

    threads = [threading.Thread(target=download) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sent.snapshot() == {"w/base.raw": 8000}
