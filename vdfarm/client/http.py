"""The HTTP side of the farm client: one request to a farm's REST API, and
its failures as the service layer's errors.

Rules:
- The farm URL is `http(s)://HOST:PORT` (the server's `--api-port`); every
  path is under /api/v1. The token, when given, goes with every request
  (reads from another host need it too). With https, the server's
  certificate is checked against the system's CAs, or only against
  CA_FILE when one is given (a private CA); a certificate that does not
  verify is Unreachable, never ignored.
- Every failure is a ServiceError with one line, so the CLI prints it as it
  prints a local failure: 400/422 Invalid, 404 NotFound, 409 Conflict,
  413 Invalid, 429/503 Unavailable with the server's own `detail`; 401
  TokenRefused (says how to give the token); 403 RoleRefused; no connection Unreachable ("cannot reach farm
  URL: ..."); anything else RemoteError.
- `error_for` (status + body → error) is pure.
"""

from __future__ import annotations

import json
import ssl
from pathlib import Path
from typing import Any

import httpx

from vdfarm.service.errors import Conflict, Invalid, NotFound, ServiceError, Unavailable

API_PREFIX = "/api/v1"
TIMEOUT_S = 60.0
TOKEN_HINT = (
    "give --token-file PATH (or VDFARM_TOKEN_FILE; --token TOKEN also works) with a token "
    "from `vdfarm token add` or DATA_DIR/api-token of that server"
)


class TokenRefused(ServiceError):
    """The farm refused the API token (missing, malformed or wrong)."""

    http_status = 401


class RoleRefused(ServiceError):
    """The farm knows the token, but its role may not do this."""

    http_status = 403


class Unreachable(Unavailable):
    """No answer from the farm's URL (refused, unknown host, timed out)."""


class RemoteError(ServiceError):
    """An answer this client does not understand (a status it has no meaning
    for, or a body that is not what the API documents)."""

    http_status = 502


STATUS_ERRORS: dict[int, type[ServiceError]] = {
    400: Invalid,
    404: NotFound,
    409: Conflict,
    413: Invalid,
    422: Invalid,
    429: Unavailable,
    503: Unavailable,
}


def check_url(url: str) -> str:
    """URL without a trailing slash, if it is http(s)://HOST[:PORT]. Raises Invalid."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as exc:
        raise Invalid(f"bad farm URL {url!r}: {exc}") from exc
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise Invalid(f"bad farm URL {url!r}: give http://HOST:PORT (the API port of a server)")
    return str(url).rstrip("/")


def detail_of(status: int, body: str) -> str:
    """The one-line `detail` of an error answer (or its first line of text)."""
    try:
        detail = json.loads(body).get("detail")
    except (ValueError, AttributeError):
        detail = None
    if not isinstance(detail, str) or not detail.strip():
        lines = [line.strip() for line in body.splitlines() if line.strip()]
        detail = lines[0] if lines else f"HTTP {status}"
    return " ".join(detail.split())


def error_for(status: int, body: str, url: str, token_given: bool) -> ServiceError:
    """The ServiceError for an error answer STATUS with BODY from the farm at URL."""
    detail = detail_of(status, body)
    if status == 401:
        if token_given:
            return TokenRefused(f"the farm at {url} refused the API token ({detail}); {TOKEN_HINT}")
        return TokenRefused(f"the farm at {url} needs the API token for this; {TOKEN_HINT}")
    if status == 403:
        return RoleRefused(f"the farm at {url} refused: {detail}")
    kind = STATUS_ERRORS.get(status)
    if kind is not None:
        return kind(detail)
    return RemoteError(f"the farm at {url} answered HTTP {status}: {detail}")


def tls_context(ca_file: str | Path | None) -> ssl.SSLContext:
    """The context that checks a farm's certificate: against CA_FILE (PEM)
    only, or the system's CAs if None. TLS 1.2 or newer.

    Raises Invalid (CA file missing, unreadable or not PEM).
    """
    try:
        context = ssl.create_default_context(cafile=None if ca_file is None else str(ca_file))
    except OSError as exc:  # ssl.SSLError is one too
        reason = str(exc) if isinstance(exc, ssl.SSLError) else (exc.strerror or str(exc))
        raise Invalid(f"cannot use the CA file {ca_file}: {reason}") from exc
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


class FarmHttp:
    """Requests to the REST API of the farm at URL (with TOKEN if given).

    HTTP is an httpx.Client to use instead of a new one (tests pass a
    FastAPI TestClient); it is closed by `close` only if this made it.
    CA_FILE: trust only this CA (PEM) for an https URL.

    Raises Invalid (bad URL, unusable CA file).
    """

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        http: httpx.Client | None = None,
        timeout: float = TIMEOUT_S,
        ca_file: str | Path | None = None,
    ) -> None:
        self.url = check_url(url)
        self.token_given = bool(token)
        self._owned = http is None
        if http is None:
            verify = tls_context(ca_file)
            http = httpx.Client(base_url=self.url, timeout=timeout, verify=verify)
        self.http = http
        if token:
            self.http.headers["Authorization"] = f"Bearer {token}"

    def request(
        self, method: str, path: str, *, body: Any = None, params: dict[str, Any] | None = None
    ) -> Any:
        """The parsed JSON answer of METHOD PATH (under /api/v1).

        Raises TokenRefused, Unreachable, Invalid, NotFound, Conflict,
        Unavailable, RemoteError.
        """
        try:
            response = self.http.request(method, API_PREFIX + path, json=body, params=params)
        except httpx.TimeoutException as exc:
            raise Unreachable(f"the farm at {self.url} did not answer in time ({exc})") from exc
        except httpx.TransportError as exc:
            raise Unreachable(f"cannot reach farm {self.url}: {exc}") from exc
        if response.status_code >= 400:
            raise error_for(response.status_code, response.text, self.url, self.token_given)
        try:
            return response.json()
        except ValueError as exc:
            raise RemoteError(
                f"the farm at {self.url} answered {method} {path} with something that is not JSON"
            ) from exc

    def close(self) -> None:
        """Close the connections (only those this object opened)."""
        if self._owned:
            self.http.close()
