"""The range reader against canned answers: a plain body lands in the
caller's buffer, a chunked framed one decodes whole however it is cut,
and every broken, oversized or unasked answer is a PeerFailed in one line
(the hostile peers of test_fetch cover the rest: silence, cuts, 500s)."""

from __future__ import annotations

import socket
import ssl
import threading

import pytest

from vdfarm.replication.peer_http import PeerFailed
from vdfarm.replication.range_get import MAX_HEAD, get_range_into

BODY = bytes(range(256)) * 64  # 16 KiB
TIMEOUT = 5.0


class Canned:
    """A one-shot server on 127.0.0.1 that answers the first request with
    ANSWER, sent in pieces of STEP bytes, then closes; keeps the request."""

    def __init__(self, answer: bytes, step: int = 1 << 20) -> None:
        self.answer, self.step = answer, step
        self.request = b""
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.listener.getsockname()[1]}"

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        with conn:
            while b"\r\n\r\n" not in self.request:
                more = conn.recv(4096)
                if not more:
                    return
                self.request += more
            for at in range(0, len(self.answer), self.step):
                conn.sendall(self.answer[at : at + self.step])

    def __enter__(self) -> Canned:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.listener.close()
        self.thread.join(10)


def head(status: str, *headers: str) -> bytes:
    return ("\r\n".join([f"HTTP/1.1 {status}", *headers]) + "\r\n\r\n").encode()


def plain(body: bytes = BODY, start: int = 0) -> bytes:
    last = start + len(body) - 1
    return (
        head(
            "206 Partial Content",
            f"Content-Range: bytes {start}-{last}/{len(BODY)}",
            f"Content-Length: {len(body)}",
        )
        + body
    )


def chunked(payload: bytes, pieces: int = 3, frames: str = "zlib") -> bytes:
    cut = max(1, len(payload) // pieces)
    chunks = b"".join(
        b"%x\r\n%s\r\n" % (len(payload[at : at + cut]), payload[at : at + cut])
        for at in range(0, len(payload), cut)
    )
    return (
        head(
            "206 Partial Content",
            f"Content-Range: bytes 0-{len(BODY) - 1}/{len(BODY)}",
            "Transfer-Encoding: chunked",
            f"X-Vdfarm-Frames: {frames}",
        )
        + chunks
        + b"0\r\n\r\n"
    )


def read_all(url: str, *, frames: bool = False, size: int = len(BODY)) -> bytes:
    got = bytearray()
    view = memoryview(bytearray(5000))
    context = ssl.create_default_context()
    with get_range_into(
        url, "tok", context, TIMEOUT, "w", "base.raw", 0, size, len(BODY), frames=frames
    ) as answer:
        while n := answer.read_into(view):
            got += view[:n]
    return bytes(got)


@pytest.mark.parametrize("step", [1, 7, 1 << 20])
def test_a_plain_body_arrives_whole_however_it_is_cut(step):
    with Canned(plain(), step) as peer:
        assert read_all(peer.url) == BODY
    request = peer.request.decode()
    assert request.startswith("GET /api/v1/replication/files/w/base.raw HTTP/1.1\r\n")
    assert "Authorization: Bearer tok\r\n" in request
    assert f"Range: bytes=0-{len(BODY) - 1}\r\n" in request
    assert "X-Vdfarm-Frames" not in request


@pytest.mark.parametrize("step", [1, 5, 1 << 20])
def test_a_chunked_framed_body_is_decoded(step):
    payload = b"frames" * 1000  # what the frames are is the Unframer's business
    with Canned(chunked(payload), step) as peer:
        assert read_all(peer.url, frames=True) == payload
    assert "X-Vdfarm-Frames: zlib\r\n" in peer.request.decode()


def test_a_framed_body_may_have_a_length_and_a_plain_one_chunks():
    payload = b"frames" * 1000
    sized = chunked(payload, 1)
    sized = sized[: sized.index(b"\r\n\r\n") + 4].replace(
        b"Transfer-Encoding: chunked", b"Content-Length: %d" % len(payload)
    )
    with Canned(sized + payload) as peer:
        assert read_all(peer.url, frames=True) == payload
    unframed = chunked(BODY).replace(b"X-Vdfarm-Frames: zlib\r\n", b"")
    with Canned(unframed) as peer:
        assert read_all(peer.url) == BODY


def test_a_cut_connection_ends_the_body_short():
    with Canned(plain()[: -len(BODY) // 2]) as peer:
        assert read_all(peer.url) == BODY[: len(BODY) - len(BODY) // 2]
    with Canned(chunked(b"x" * 3000)[:-40]) as peer:
        assert len(read_all(peer.url, frames=True)) < 3000


@pytest.mark.parametrize(
    ("answer", "frames", "says"),
    [
        (head("200 OK", f"Content-Length: {len(BODY)}") + BODY, False, "the whole file"),
        (
            head("503 Busy", "Content-Length: 24") + b'{"detail": "ask again"}\n',
            False,
            "answered 503 to bytes 0-16383: ask again",
        ),
        (
            head("404 Not Found", "Transfer-Encoding: chunked") + b"4\r\noops\r\n0\r\n\r\n",
            False,
            "answered 404 to bytes 0-16383: oops",
        ),  # fmt: skip
        (plain(start=1), False, "another range"),
        (plain(BODY[:-1]).replace(b"16383/", b"16382/"), False, "another range"),
        (plain().replace(b"Content-Length: 16384", b"Content-Length: 99"), False, "'99' bytes"),
        (chunked(b"abc"), False, "not asked for"),
        (chunked(b"abc", frames="lz4"), True, "not asked for"),
        (
            plain().replace(b"Content-Length: 16384", b"Content-Length: 99999"),
            False,
            "'99999' bytes",
        ),
        (chunked(b"abc", 1).replace(b"3\r\nabc", b"zz\r\nabc"), True, "broken chunk size"),
        (chunked(b"abc", 1).replace(b"abc\r\n", b"abcXY"), True, "without its CRLF"),
        (chunked(b"abc", 1).replace(b"3\r\nabc", b"ffffff\r\nabc"), True, "more than the bytes"),
        (b"SPDY/3 200 OK\r\n\r\n", False, "broken status line"),
        (head("206 Partial Content", "no colon here"), False, "broken header line"),
        (b"HTTP/1.1 206 Partial Content\r\n" + b"X: " + b"y" * MAX_HEAD, False, "head over"),
        (b"HTTP/1.1 206 Par", False, "before its head ended"),
    ],
    ids=[
        "whole-file",
        "refused",
        "refused-chunked",
        "other-start",
        "other-size",
        "other-length",
        "frames-unasked",
        "unknown-frames",
        "too-long",
        "bad-size-line",
        "no-crlf",
        "oversized-chunk",
        "not-http",
        "bad-header",
        "huge-head",
        "cut-head",
    ],
)
def test_broken_or_refused_answers_fail_in_one_line(answer, frames, says):
    with Canned(answer) as peer, pytest.raises(PeerFailed, match=says) as failed:
        read_all(peer.url, frames=frames)
    assert "\n" not in str(failed.value)


def test_nobody_listening_cannot_connect():
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
    with pytest.raises(PeerFailed, match="cannot connect"):
        read_all(f"http://127.0.0.1:{port}")


def test_silence_is_named():
    with socket.create_server(("127.0.0.1", 0)) as quiet:
        url = f"http://127.0.0.1:{quiet.getsockname()[1]}"
        context = ssl.create_default_context()
        with (
            pytest.raises(PeerFailed, match="sent nothing for 0.3 s"),
            get_range_into(url, "t", context, 0.3, "w", "base.raw", 0, 10, 10),
        ):
            pass
