"""A real uvicorn API server on 127.0.0.1 in a thread of the test process,
run the way `vdfarm server run` runs it (`serve_api` in an asyncio loop,
stopped by cancelling)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator

from vdfarm.api.server import serve_api

WAIT_S = 30


class LoopThread:
    """An asyncio loop in a thread running serve_api(FARM, 127.0.0.1, 0, **OPTIONS)."""

    def __init__(self, farm, **options) -> None:
        self.options = options
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
            await serve_api(
                farm, "127.0.0.1", 0, ready=self._on_ready, log_level="warning", **self.options
            )

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


@contextlib.contextmanager
def serving(farm, **options) -> Iterator[int]:
    """The port of FARM's API served (with OPTIONS) for the block."""
    runner = LoopThread(farm, **options)
    port = runner.start()
    try:
        yield port
    finally:
        runner.stop()
