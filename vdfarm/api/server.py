"""Running the API inside an asyncio loop that is already running (the NBD server's).

Rules:
- uvicorn serves the app on a socket we bind ourselves (so a bind failure is
  an OSError, never uvicorn's `sys.exit`, and port 0 works). No event-loop
  setup, no signal handlers, no logging config: the owner of the loop (the
  `vdfarm server run` process) keeps those. uvicorn >= 0.36 `Server.serve`
  makes no loop of its own; `capture_signals` is switched off here.
- Stop by `ApiServer.stop()` (or by cancelling `serve_api`): stop accepting,
  finish the requests in flight (up to GRACEFUL_SHUTDOWN_S), close.
- HTTP/1.1 is h11's, through uvicorn's h11 protocol with zero-copy sends
  (`zerocopy_h11`: boot files go out with sendfile(2) on plain TCP).
- The client address is the TCP peer (proxy headers are ignored), so only a
  real loopback peer gets the open reads (and only with a loopback Host
  header). Serve TLS natively (`tls_cert`, `tls_key`: PEM files; TLS 1.2 or
  newer) rather than through a proxy on the same host, behind which every
  request looks local.
- The certificate and key are checked when the ApiServer is made (an
  ApiTlsError says which file and why), and loaded once: a renewed
  certificate takes effect at the next start.

The server process runs it as its `api` task (vdfarm/daemon/farm_tasks.py):
`start()` after the NBD listener, `wait()` as the task's life, `stop()`
before the device sessions end.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Callable, Iterator
from pathlib import Path

import uvicorn
from fastapi import FastAPI

from vdfarm.api.app import create_app
from vdfarm.api.limits import ApiLimits
from vdfarm.api.zerocopy_h11 import ZeroCopyH11Protocol
from vdfarm.service.context import Farm

DEFAULT_API_PORT = 8080
GRACEFUL_SHUTDOWN_S = 5
START_POLL_S = 0.01
BACKLOG = 128
TLS_MINIMUM = ssl.TLSVersion.TLSv1_2


class ApiTlsError(ValueError):
    """The API's TLS certificate or key cannot be used (one line says why)."""


def check_tls_files(cert: str | Path, key: str | Path | None) -> None:
    """Load CERT (PEM, with KEY, or the key inside CERT if KEY is None) once.

    Raises ApiTlsError (missing, unreadable, not PEM, key not matching).
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(str(cert), None if key is None else str(key))
    except OSError as exc:  # ssl.SSLError is one too
        reason = str(exc) if isinstance(exc, ssl.SSLError) else (exc.strerror or str(exc))
        shown = f"{cert}" + (f" / key {key}" if key is not None else "")
        raise ApiTlsError(f"cannot use the API TLS certificate {shown}: {reason}") from exc


class _EmbeddedServer(uvicorn.Server):
    """uvicorn's server without its signal handlers (the loop's owner has its own)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def bind_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to HOST:PORT (IPv4 or IPv6; port 0: any free one).

    Raises OSError (address in use, unknown host, no permission).
    """
    family, kind, proto, _name, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except BaseException:
        sock.close()
        raise
    return sock


class ApiServer:
    """The API of FARM on HOST:PORT, served in the running asyncio loop."""

    def __init__(
        self,
        farm: Farm,
        host: str = "127.0.0.1",
        port: int = DEFAULT_API_PORT,
        *,
        app: FastAPI | None = None,
        log_level: str = "info",
        tls_cert: str | Path | None = None,
        tls_key: str | Path | None = None,
        limits: ApiLimits | None = None,
        transfer_dir: str | Path | None = None,
    ) -> None:
        """TLS_CERT/TLS_KEY (PEM) make it serve HTTPS only; LIMITS (body cap,
        login rate, reservation cap) default to ApiLimits(); TRANSFER_DIR
        confines import and export files (default DATA_DIR/transfer).

        Raises ApiTlsError (unusable certificate or key, a key without a
        certificate), auth.TokenFileError, OSError (token file), Invalid
        (unusable transfer directory).
        """
        if tls_key is not None and tls_cert is None:
            raise ApiTlsError("an API TLS key needs its certificate (tls_cert)")
        if tls_cert is not None:
            check_tls_files(tls_cert, tls_key)
        self.host, self.requested_port = host, port
        self.tls = tls_cert is not None
        self.app = (
            app if app is not None else create_app(farm, limits=limits, transfer_dir=transfer_dir)
        )
        self.config = uvicorn.Config(
            self.app,
            http=ZeroCopyH11Protocol,
            ws="none",
            lifespan="off",
            log_config=None,
            log_level=log_level,
            proxy_headers=False,
            server_header=False,
            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
            backlog=BACKLOG,
            ssl_certfile=None if tls_cert is None else str(tls_cert),
            ssl_keyfile=None if tls_key is None else str(tls_key),
        )
        self.server = _EmbeddedServer(self.config)
        self.port: int | None = None
        self._sock: socket.socket | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> int:
        """Listen and serve in the background; return the bound port.

        Raises OSError (cannot bind), RuntimeError (uvicorn stopped at start).
        """
        if self._task is not None:
            raise RuntimeError("the API server is already started")
        if not self.config.loaded:
            self.config.load()
        if self.config.ssl is not None:
            self.config.ssl.minimum_version = TLS_MINIMUM
        self._sock = bind_socket(self.host, self.requested_port)
        self.port = self._sock.getsockname()[1]
        self._task = asyncio.get_running_loop().create_task(
            self.server.serve(sockets=[self._sock]), name="vdfarm-api"
        )
        while not self.server.started:
            if self._task.done():
                self._close_socket()
                error = None if self._task.cancelled() else self._task.exception()
                raise RuntimeError(f"the API server did not start: {error!r}") from error
            await asyncio.sleep(START_POLL_S)
        return self.port

    async def wait(self) -> None:
        """Until the server stops (a cancel of the waiter does not stop it)."""
        if self._task is not None:
            await asyncio.shield(self._task)

    async def stop(self) -> None:
        """Stop accepting, let requests in flight finish, close. Safe to call twice."""
        if self._task is None:
            return
        self.server.should_exit = True
        try:
            await asyncio.shield(self._task)
        finally:
            self._close_socket()

    def _close_socket(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


async def serve_api(
    farm: Farm,
    host: str = "127.0.0.1",
    port: int = DEFAULT_API_PORT,
    *,
    ready: Callable[[int], None] | None = None,
    log_level: str = "info",
    tls_cert: str | Path | None = None,
    tls_key: str | Path | None = None,
    limits: ApiLimits | None = None,
    transfer_dir: str | Path | None = None,
) -> None:
    """Serve the API of FARM on HOST:PORT until cancelled; READY(port) is
    called once it listens. Cancel the task to stop it cleanly. TLS_CERT,
    TLS_KEY, LIMITS and TRANSFER_DIR as for ApiServer.

    Raises OSError (cannot bind), RuntimeError (uvicorn stopped at start),
    auth.TokenFileError (unusable api-token file), ApiTlsError.
    """
    api = ApiServer(
        farm,
        host,
        port,
        log_level=log_level,
        tls_cert=tls_cert,
        tls_key=tls_key,
        limits=limits,
        transfer_dir=transfer_dir,
    )
    bound = await api.start()
    try:
        if ready is not None:
            ready(bound)
        await api.wait()
    finally:
        await api.stop()
