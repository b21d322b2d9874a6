"""Log a device in to the farm: which server to stream from, and what copy.

Job: POST {url}/api/v1/login with the device name, the servers to
avoid and, at a failover, the version the device runs (it keeps it until
it boots again, whatever was promoted meanwhile), trying each farm URL in turn (stdlib urllib: no HTTP library on a
device), and parse the answer into a frozen `LoginAnswer`.
Rules:
- Each URL gets a short timeout; an unreachable one, a busy one (429, 503)
  or one that is not a vdfarm farm is skipped for the next. An unknown
  device (404) or a refused request (400, 401) is the farm's word: it ends
  the attempt at once.
- An answer that is not a vdfarm login answer (not JSON, a field missing
  or of the wrong type) is `NotAFarm`, never a guess.
- Every error is one line, fit for `vdfarm: error: ...`.
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from vdfarm.nbd.text import printable

LOGIN_PATH = "/api/v1/login"
MAX_ANSWER = 1 << 20  # bytes of a login answer we read


class LoginError(Exception):
    """Logging in failed; the message is one line."""


class UnknownDevice(LoginError):
    """The farm does not know the device (404)."""


class LoginRefused(LoginError):
    """The farm refused the request (400, 401, 422)."""


class NotAFarm(LoginError):
    """The URL answered, but not as a vdfarm farm."""


class FarmUnreachable(LoginError):
    """No URL answered at all."""


class NoServer(LoginError):
    """The farm answered, but no server can serve the device now (503, 429)."""


@dataclass(frozen=True)
class ServerRef:
    """Where a server streams: its name, NBD host and port."""

    name: str
    host: str
    nbd_port: int
    api_port: int | None


@dataclass(frozen=True)
class LoginAnswer:
    """The farm's answer: the server to use and the copy it must serve."""

    url: str  # the farm URL that answered
    device: str
    vdisk: str
    version: int
    sha256: str | None  # None: the version has no fixed hash (written, maintenance)
    size: int
    write_cache_type: str
    failover: bool  # False: stay on this server (private, maintenance, server-side cache)
    server: ServerRef
    alternatives: tuple[ServerRef, ...]
    reason: str


def _field(obj: dict[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    value = obj.get(key)
    if not isinstance(value, kind) or isinstance(value, bool) and kind is int:
        raise NotAFarm(f"the login answer has no valid {key!r}")
    return value


def _server(obj: Any) -> ServerRef:
    if not isinstance(obj, dict):
        raise NotAFarm("the login answer's server is not an object")
    port = obj.get("nbd_port")
    if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
        raise NotAFarm(f"server {printable(str(obj.get('name')))} has no NBD port")
    api_port = obj.get("api_port")
    return ServerRef(
        name=_field(obj, "name", str),
        host=_field(obj, "host", str),
        nbd_port=port,
        api_port=api_port if isinstance(api_port, int) else None,
    )


def parse_answer(url: str, obj: Any) -> LoginAnswer:
    """The LoginAnswer in OBJ (parsed JSON). Raises NotAFarm."""
    if not isinstance(obj, dict):
        raise NotAFarm("the login answer is not a JSON object")
    if "sha256" not in obj:
        raise NotAFarm("the login answer has no 'sha256'")
    sha256 = obj["sha256"]
    if sha256 is not None and (
        not isinstance(sha256, str)
        or len(sha256) != 64
        or any(ch not in "0123456789abcdefABCDEF" for ch in sha256)
    ):
        raise NotAFarm("the login answer's sha256 is not a SHA-256")
    alternatives = obj.get("alternatives")
    if not isinstance(alternatives, list):
        raise NotAFarm("the login answer has no valid 'alternatives'")
    return LoginAnswer(
        url=url,
        device=_field(obj, "device", str),
        vdisk=_field(obj, "vdisk", str),
        version=_field(obj, "version", int),
        sha256=sha256.lower() if sha256 is not None else None,
        size=_field(obj, "size", int),
        write_cache_type=_field(obj, "write_cache_type", str),
        failover=_field(obj, "failover", bool),
        server=_server(obj.get("server")),
        alternatives=tuple(_server(alt) for alt in alternatives),
        reason=str(obj.get("reason", "")),
    )


def _detail(body: bytes) -> str:
    try:
        detail = json.loads(body).get("detail")
    except (ValueError, AttributeError):
        detail = None
    return printable(str(detail)) if detail else "no detail"


def login_once(
    url: str,
    device: str,
    exclude: list[str],
    context: ssl.SSLContext | None,
    timeout: float,
    version: int | None = None,
) -> LoginAnswer:
    """One login at URL; VERSION: the version the running device keeps
    (None: a boot). Raises a LoginError (FarmUnreachable when nothing answered)."""
    fields: dict[str, Any] = {"device": device, "exclude": sorted(exclude)}
    if version is not None:
        fields["version"] = version
    body = json.dumps(fields).encode()
    request = urllib.request.Request(
        url.rstrip("/") + LOGIN_PATH,
        data=body,
        headers={"Content-Type": "application/json", "Accept": "application/json"},
        method="POST",
    )
    where = printable(url)
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
            raw = response.read(MAX_ANSWER + 1)
    except urllib.error.HTTPError as exc:
        raw = exc.read(MAX_ANSWER)
        detail = _detail(raw)
        if exc.code == 404 and detail not in ("no detail", "Not Found"):  # not a bare 404
            raise UnknownDevice(f"{where}: {detail}") from exc
        if exc.code in (400, 401, 403, 422) and detail != "no detail":
            raise LoginRefused(f"{where}: {detail}") from exc
        if exc.code in (429, 503) and detail != "no detail":
            raise NoServer(f"{where}: {detail}") from exc
        raise NotAFarm(f"{where} is not a vdfarm farm (HTTP {exc.code} to a login)") from exc
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise FarmUnreachable(f"{where}: {printable(str(reason))}") from exc
    if len(raw) > MAX_ANSWER:
        raise NotAFarm(f"{where} answered a login with over {MAX_ANSWER} bytes")
    try:
        obj = json.loads(raw)
    except ValueError as exc:
        raise NotAFarm(f"{where} is not a vdfarm farm (its login answer is not JSON)") from exc
    try:
        return parse_answer(url, obj)
    except NotAFarm as exc:
        raise NotAFarm(f"{where} is not a vdfarm farm: {exc}") from exc


def login(
    urls: list[str],
    device: str,
    exclude: list[str] | None = None,
    ca_file: str | None = None,
    timeout: float = 2.0,
    version: int | None = None,
) -> LoginAnswer:
    """Log DEVICE in at the first URL that answers (VERSION: the version the
    running device keeps; None at boot). Raises UnknownDevice or
    LoginRefused at once; else, when no URL gave an answer, the most telling
    error: NoServer, then NotAFarm, then FarmUnreachable."""
    context = ssl.create_default_context(cafile=ca_file) if ca_file else None
    errors: list[LoginError] = []
    for url in urls:
        try:
            return login_once(url, device, exclude or [], context, timeout, version)
        except (UnknownDevice, LoginRefused):
            raise
        except LoginError as exc:
            errors.append(exc)
    for kind in (NoServer, NotAFarm, FarmUnreachable):
        for error in errors:
            if isinstance(error, kind):
                raise error
    raise FarmUnreachable("no farm URL given")
