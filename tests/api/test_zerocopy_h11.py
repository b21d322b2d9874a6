"""The API's HTTP protocol with zero-copy sends, on a real socket under
both event loops the API runs in (asyncio's in tests, uvloop in the
daemon): a body sent from a file reaches a slow reader whole and the
connection stays usable; offset and count are honoured; a client that
leaves, a file shorter than promised, a count over Content-Length, and a
file not in the page cache; with TLS the extension is not offered."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import os
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from urllib.parse import parse_qs

import pytest
import uvloop

from tests.api.serving import WAIT_S
from tests.api.tls import make_tls_files
from vdfarm.api import zerocopy_h11
from vdfarm.api.server import ApiServer
from vdfarm.api.zerocopy_h11 import ZEROCOPY_SEND

SIZE = 8 << 20  # more than a loopback socket takes at once
LOOPS = {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


class FileApp:
    """An ASGI app that answers GET ?offset=&count=&length= with bytes of
    PATH (Content-Length LENGTH, default COUNT), zero-copy when offered."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.offered: list[bool] = []
        self.finished: list[str] = []

    async def __call__(self, scope, receive, send) -> None:
        query = {k: int(v[0]) for k, v in parse_qs(scope["query_string"].decode()).items()}
        offset = query.get("offset", 0)
        count = query.get("count", os.path.getsize(self.path) - offset)
        length = query.get("length", count)
        offered = ZEROCOPY_SEND in scope.get("extensions", {})
        self.offered.append(offered)
        headers = [(b"content-length", str(length).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        try:
            with open(self.path, "rb") as file:
                if offered:
                    message = {"file": file, "offset": offset, "count": count}
                    await send({"type": ZEROCOPY_SEND, **message, "more_body": False})
                else:
                    body = os.pread(file.fileno(), count, offset)
                    await send({"type": "http.response.body", "body": body})
        except BaseException as exc:
            self.finished.append(type(exc).__name__)
            raise
        self.finished.append("sent")


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "file"
    path.write_bytes(os.urandom(SIZE))
    return path


@contextlib.contextmanager
def served(app, loop_name: str, **options) -> Iterator[int]:
    """The port of APP served by ApiServer in a thread running LOOP_NAME."""
    loop = LOOPS[loop_name]()
    api = ApiServer(None, "127.0.0.1", 0, app=app, log_level="critical", **options)  # type: ignore[arg-type]
    ready = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(api.start())
            ready.set()
            loop.run_until_complete(api.wait())
        finally:
            ready.set()
            loop.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(WAIT_S) and api.port
    try:
        yield api.port
    finally:
        asyncio.run_coroutine_threadsafe(api.stop(), loop).result(WAIT_S)
        thread.join(WAIT_S)
        assert not thread.is_alive()


def until(check, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


@pytest.mark.parametrize("loop_name", sorted(LOOPS))
def test_a_slow_reader_gets_every_byte_and_the_connection_goes_on(data, loop_name, monkeypatch):
    waits = []
    wait = zerocopy_h11.ZeroCopyH11Protocol._until_writable

    async def counted(self, loop, fd):
        waits.append(fd)
        await wait(self, loop, fd)

    monkeypatch.setattr(zerocopy_h11.ZeroCopyH11Protocol, "_until_writable", counted)
    app = FileApp(str(data))
    expected = data.read_bytes()
    with served(app, loop_name) as port:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT_S)
        conn.request("GET", "/")
        answer = conn.getresponse()
        head = answer.read(65536)
        time.sleep(0.3)  # the socket fills: the server waits for it
        assert head + answer.read() == expected
        conn.request("GET", "/?offset=1000&count=5000")  # same connection
        assert conn.getresponse().read() == expected[1000:6000]
        conn.close()
    assert app.offered == [True, True] and app.finished == ["sent", "sent"]
    assert waits  # the socket was full at least once


@pytest.mark.parametrize("loop_name", sorted(LOOPS))
def test_a_client_that_leaves_ends_the_send_quietly(data, loop_name):
    app = FileApp(str(data))
    with served(app, loop_name) as port:
        with socket.create_connection(("127.0.0.1", port), WAIT_S) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            sock.recv(65536)
        until(lambda: app.finished, "the send never ended")
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT_S)
        conn.request("GET", "/?count=10")
        assert conn.getresponse().read() == data.read_bytes()[:10]  # the server goes on
    assert app.finished == ["sent", "sent"]


def test_the_server_stops_while_a_client_reads_nothing(data):
    app = FileApp(str(data))
    sock = None
    try:
        with served(app, "uvloop") as port:
            sock = socket.create_connection(("127.0.0.1", port), WAIT_S)
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            sock.recv(1)
        # served() has stopped the server (after its grace period), the answer unsent
    finally:
        if sock is not None:
            sock.close()
    assert app.finished == ["CancelledError"]


@pytest.mark.parametrize("loop_name", sorted(LOOPS))
def test_a_file_shorter_than_promised_closes_the_connection(data, loop_name):
    app = FileApp(str(data))
    with served(app, loop_name) as port:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT_S)
        conn.request("GET", f"/?offset={SIZE - 100}&count=200")
        with pytest.raises(http.client.IncompleteRead) as short:
            conn.getresponse().read()
        assert short.value.partial == data.read_bytes()[-100:]
        until(lambda: app.finished, "the send never ended")
        assert app.finished == ["OSError"]
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT_S)
        conn.request("GET", "/?count=10")
        assert conn.getresponse().status == 200


def test_a_count_over_the_content_length_sends_no_body(data):
    app = FileApp(str(data))
    with served(app, "uvloop") as port:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT_S)
        conn.request("GET", "/?count=100&length=10")
        answer = conn.getresponse()
        with pytest.raises(http.client.IncompleteRead) as short:
            answer.read()
        assert short.value.partial == b""
        until(lambda: app.finished, "the send never ended")
        assert app.finished == ["LocalProtocolError"]


@pytest.mark.parametrize("loop_name", sorted(LOOPS))
def test_a_file_not_in_the_page_cache_is_read_in_a_thread(data, loop_name, monkeypatch):
    monkeypatch.setattr(zerocopy_h11, "probably_cached", lambda ranges: False)
    app = FileApp(str(data))
    with served(app, loop_name) as port:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT_S)
        conn.request("GET", "/?offset=7")
        answer = conn.getresponse()
        head = answer.read(65536)
        time.sleep(0.3)
        assert head + answer.read() == data.read_bytes()[7:]
    assert app.offered == [True] and app.finished == ["sent"]


def test_no_zero_copy_through_tls(data, tmp_path):
    tls = make_tls_files(tmp_path / "tls")
    app = FileApp(str(data))
    with served(app, "uvloop", tls_cert=tls.cert, tls_key=tls.key) as port:
        context = ssl.create_default_context(cafile=str(tls.ca))
        conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=WAIT_S, context=context)
        conn.request("GET", "/?count=100000")
        assert conn.getresponse().read() == data.read_bytes()[:100000]
    assert app.offered == [False]
