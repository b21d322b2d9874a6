"""A stub farm for the agent's tests: a tiny http.server answering
POST /api/v1/login (and recording failover reports), with the login answer
fields the server side is adding (sha256, size, write_cache_type, failover).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Answer = Callable[[dict[str, Any]], tuple[int, Any]]


class StubFarm:
    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.requests: list[tuple[str, dict[str, Any], dict[str, str]]] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])) or b"{}")
                stub.requests.append((self.path, body, dict(self.headers)))
                if self.path == "/api/v1/login":
                    status, payload = stub.answer(body)
                else:
                    status, payload = 200, {"ok": True}
                raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def login_answer(device: str, server: dict[str, Any], sha256: str, size: int, **extra: Any):
    answer = {
        "device": device,
        "vdisk": "golden",
        "version": 1,
        "server": server,
        "alternatives": [],
        "reason": "test",
        "sha256": sha256,
        "size": size,
        "write_cache_type": "server-disk",
        "failover": True,
    }
    answer.update(extra)
    return answer
