"""The API in a real uvicorn server on 127.0.0.1, run the way `vdfarm server
run` runs it (`serve_api` in an asyncio loop, stopped by cancelling), talked
to over TCP by httpx."""

from __future__ import annotations

import asyncio
import socket

import httpx
import pytest

from tests.api.conftest import LOOPBACK_ACTOR
from tests.api.serving import WAIT_S, LoopThread
from vdfarm.api.auth import read_token
from vdfarm.api.server import ApiServer, bind_socket


def refuses_connections(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def test_real_server_on_loopback(farm):
    runner = LoopThread(farm)
    port = runner.start()
    try:
        token = read_token(farm.data_dir)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=WAIT_S) as client:
            assert "/api/v1/devices" in client.get("/openapi.json").json()["paths"]
            [server] = client.get("/api/v1/servers").json()
            assert server["name"] == farm.server_name
            refused = client.post("/api/v1/devices", json={"name": "pc1"})
            assert refused.status_code == 401 and farm.devices.list() == []
            added = client.post(
                "/api/v1/devices",
                json={"name": "pc1"},
                headers={"Authorization": f"Bearer {token}"},
            )
            assert added.status_code == 201, added.text
            assert client.get("/api/v1/devices/pc1").json()["name"] == "pc1"
            assert client.get("/api/v1/devices/nope").json() == {"detail": "no device named nope"}
        assert farm.audit.list(limit=1)[0].actor == LOOPBACK_ACTOR
    finally:
        runner.stop()
    assert refuses_connections(port)


def test_busy_port_is_an_os_error(farm):
    with bind_socket("127.0.0.1", 0) as taken:
        taken.listen()
        port = taken.getsockname()[1]

        async def start() -> None:
            await ApiServer(farm, "127.0.0.1", port).start()

        with pytest.raises(OSError):
            asyncio.run(start())
