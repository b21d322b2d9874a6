"""The request-body cap: a body over it is refused with 413 (one line,
nothing changed) — by its Content-Length before anything is read, or as
soon as a chunked body passes it — and a 200 MB body costs the server no
memory (a real server, the body streamed from a generator)."""

from __future__ import annotations

import os

import httpx
import pytest
from fastapi.testclient import TestClient

from tests.api.conftest import OTHER_HOST, error_of, unchanged
from tests.api.serving import WAIT_S, serving
from vdfarm.api.app import create_app
from vdfarm.api.limits import MIB, ApiLimits

CHUNK = b"x" * (64 * 1024)
HUGE = 200 * MIB
RSS_SLACK = 8 * MIB


def chunks(total: int):
    for _ in range(total // len(CHUNK)):
        yield CHUNK


def rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.fixture
def small(farm, token):
    app = create_app(farm, limits=ApiLimits(max_body_bytes=1000))
    return TestClient(app, client=OTHER_HOST, headers={"Authorization": f"Bearer {token}"})


def test_a_body_over_the_cap_is_413_and_changes_nothing(small, farm):
    with unchanged(farm):
        body = b'{"name": "pc1", "description": "' + b"y" * 2000 + b'"}'
        response = small.post(
            "/api/v1/devices", content=body, headers={"Content-Type": "application/json"}
        )
        assert error_of(response, 413) == "request body too large: at most 1000 bytes"
        assert response.headers["connection"] == "close"
        chunked = small.post(
            "/api/v1/devices",
            content=iter([b'{"name": "pc1", "description": "', b"y" * 2000, b'"}']),
            headers={"Content-Type": "application/json"},
        )
        assert error_of(chunked, 413) == "request body too large: at most 1000 bytes"
        error_of(small.post("/api/v1/login", content=b"{" * 1001), 413)
    assert small.post("/api/v1/devices", json={"name": "pc1"}).status_code == 201


def test_the_default_cap_is_one_mib(farm):
    assert ApiLimits().max_body_bytes == MIB
    assert create_app(farm).state.limits.max_body_bytes == MIB


@pytest.mark.parametrize("path", ["/api/v1/login", "/api/v1/devices"])
@pytest.mark.parametrize("sized", [True, False], ids=["content-length", "chunked"])
def test_a_200_mb_body_costs_the_server_no_memory(farm, token, path, sized):
    """Fails before: the server read the whole body (+150 MB RSS for 200 MB)."""
    headers = {
        "Content-Type": "application/json",
        "Authorization": f"Bearer {token}",
    }
    if sized:
        headers["Content-Length"] = str(HUGE)
    with serving(farm) as port, httpx.Client(timeout=WAIT_S) as client:
        client.get(f"http://127.0.0.1:{port}/api/v1/servers")  # warm up
        before = rss()
        response = client.post(
            f"http://127.0.0.1:{port}{path}", content=chunks(HUGE), headers=headers
        )
        grown = rss() - before
    assert response.status_code == 413, response.text
    assert response.json() == {"detail": f"request body too large: at most {MIB} bytes"}
    assert grown < RSS_SLACK, f"RSS grew by {grown / MIB:.1f} MiB"
    assert farm.devices.list() == []
