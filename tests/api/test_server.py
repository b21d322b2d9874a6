"""The API in a real uvicorn server on 127.0.0.1, run the way `vdfarm server
run` runs it (`serve_api` in an asyncio loop, stopped by cancelling), talked
to over TCP by httpx."""

from __future__ import annotations

import asyncio
import socket
import threading

import httpx
import pytest

from vdfarm.api.auth import read_token
from vdfarm.api.server import ApiServer, bind_socket, serve_api

WAIT_S = 30


class LoopThread:
    """An asyncio loop in a thread running serve_api(FARM, 127.0.0.1, 0)."""

    def __init__(self, farm) -> None:
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.port: int | None = None
        self.task: asyncio.Task | None = None
        self.thread = threading.Thread(target=self._run, args=(farm,), daemon=True)

    def _on_ready(self, port: int) -> None:
        self.port = port
        self.ready.set()

    def _run(self, farm) -> None:
        async def main() -> None:
            self.task = asyncio.current_task()
            await serve_api(farm, "127.0.0.1", 0, ready=self._on_ready, log_level="warning")

        try:
            self.loop.run_until_complete(main())
        except asyncio.CancelledError:
            pass
        finally:
            self.ready.set()
            self.loop.close()

    def start(self) -> int:
        self.thread.start()
        assert self.ready.wait(WAIT_S) and self.port, "the API did not start"
        return self.port

    def stop(self) -> None:
        if self.task is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.task.cancel)
        self.thread.join(WAIT_S)
        assert not self.thread.is_alive()


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
        assert farm.audit.list(limit=1)[0].actor == "api:127.0.0.1"
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
