"""FileRangeResponse as an ASGI app: a zero-copy send of exactly its range
where the server offers one, else the range's bytes in blocks; a
Content-Length of the range unless given; the file closed either way."""

from __future__ import annotations

import asyncio

import pytest

from vdfarm.api import file_response
from vdfarm.api.file_response import FileRangeResponse
from vdfarm.api.zerocopy_h11 import ZEROCOPY_SEND

DATA = bytes(range(256)) * 40
START, END = 3, len(DATA) - 5


def answer(path, extensions, headers=None):
    """The messages FileRangeResponse sends for bytes START..END-1 of PATH."""
    sent = []
    file = open(path, "rb", buffering=0)  # noqa: SIM115 - the response closes it

    async def receive():
        await asyncio.sleep(3600)  # the client never leaves

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http",
        "method": "GET",
        "extensions": extensions,
        "asgi": {"spec_version": "2.4"},
    }
    response = FileRangeResponse(file, START, END, 206, headers, "application/octet-stream")
    asyncio.run(response(scope, receive, send))
    assert file.closed
    return sent


@pytest.fixture
def path(tmp_path, monkeypatch):
    monkeypatch.setattr(file_response, "READ_BLOCK", 1000)
    p = tmp_path / "f"
    p.write_bytes(DATA)
    return p


def test_zero_copy_where_the_server_offers_it(path):
    start, zero_copy = answer(path, {ZEROCOPY_SEND: {}})
    assert start["status"] == 206
    assert (b"content-length", str(len(DATA) - 8).encode()) in start["headers"]
    assert zero_copy["type"] == ZEROCOPY_SEND and not zero_copy["more_body"]
    assert (zero_copy["offset"], zero_copy["count"]) == (3, len(DATA) - 8)


def test_blocks_elsewhere(path):
    start, *body = answer(path, {}, headers={"Content-Length": str(len(DATA) - 8)})
    assert [v for k, v in start["headers"] if k == b"content-length"] == [b"10232"]
    assert all(len(m["body"]) <= 1000 for m in body)
    assert b"".join(m["body"] for m in body) == DATA[3:-5]
