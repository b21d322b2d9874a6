"""Who a request is (its token, or an anonymous reader on loopback) and the
data directory's own token file.

Rules:
- Tokens are the farm's (`vdfarm token add`, kept hashed in the database,
  with a role), plus this server's DATA_DIR/api-token file (mode 0600, 32
  random bytes, URL-safe base64, one line), which is an `admin` token named
  `local:<server name>`. The file is made once (at `vdfarm init`, or at the
  API's first start) and never rewritten; to rotate it, delete the file and
  restart the server.
- Every change (any method but GET/HEAD/OPTIONS) needs
  `Authorization: Bearer <token>`. Reads need it too, except from a
  loopback peer (127.0.0.0/8, ::1, ::ffff:127.x) whose Host header names
  loopback (127.0.0.1, localhost, [::1], any port): a browser on the server
  tricked by DNS rebinding sends another Host. A token that is given must be
  right, even for a read from loopback. Then the token's role must reach the
  route's (`vdfarm.api.roles`).
- Pure logic and plain file I/O only (no FastAPI here): `vdfarm init` may call
  `ensure_token` without loading the web stack.
"""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import os
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from vdfarm.service.tokens import role_allows

TOKEN_FILE = "api-token"
TOKEN_BYTES = 32
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
BEARER = "bearer"
LOOPBACK_HOST = re.compile(r"(127\.0\.0\.1|localhost|\[::1\])(:[0-9]{1,5})?")


class TokenFileError(Exception):
    """The token file exists but cannot be used (unreadable or empty)."""


def token_path(data_dir: str | Path) -> Path:
    """Where the API token of DATA_DIR is kept."""
    return Path(data_dir) / TOKEN_FILE


def new_token() -> str:
    """A fresh random token (32 bytes, URL-safe base64)."""
    return secrets.token_urlsafe(TOKEN_BYTES)


def read_token(data_dir: str | Path) -> str | None:
    """The token of DATA_DIR, or None if it has none yet.

    Raises TokenFileError (unreadable or empty file).
    """
    path = token_path(data_dir)
    try:
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise TokenFileError(f"cannot read the API token {path}: {exc}") from exc
    if not text:
        raise TokenFileError(f"the API token {path} is empty; delete it to make a new one")
    return text


def ensure_token(data_dir: str | Path) -> str:
    """The token of DATA_DIR, made (mode 0600, atomically) if it has none.

    Two processes racing here end with the same token. Raises TokenFileError,
    OSError (directory not writable).
    """
    existing = read_token(data_dir)
    if existing is not None:
        return existing
    path = token_path(data_dir)
    temp = path.with_name(f".{TOKEN_FILE}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as fh:
            fh.write(new_token() + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        with contextlib.suppress(FileExistsError):
            os.link(temp, path)  # never replaces a token another process made
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
    token = read_token(data_dir)
    assert token is not None
    return token


def bearer_token(authorization: str | None) -> str | None:
    """The token in an `Authorization: Bearer <token>` header value, or None
    (no header, another scheme, or no token after the scheme)."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != BEARER or not token:
        return None
    return token


def token_matches(given: str, expected: str) -> bool:
    """True if GIVEN is EXPECTED (compared in constant time)."""
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


def is_loopback(host: str | None) -> bool:
    """True if HOST is a loopback IP address (IPv4, IPv6, or IPv4-mapped IPv6)."""
    if not host:
        return False
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


def is_loopback_host_header(host: str | None) -> bool:
    """True if the Host header HOST names this machine's loopback: 127.0.0.1,
    localhost or [::1], with or without a port. A page a browser loaded from
    another name (DNS rebinding) sends that name, so it never matches."""
    if not host:
        return False
    return LOOPBACK_HOST.fullmatch(host.strip().lower()) is not None


@dataclass(frozen=True)
class Principal:
    """Who a request is: a token's name and role, or (name None) an
    anonymous reader on loopback."""

    name: str | None
    role: str

    def actor(self, peer: str) -> str:
        """The audit actor: token:NAME@PEER, or api:PEER without a token."""
        return f"token:{self.name}@{peer}" if self.name else f"api:{peer}"


ANONYMOUS_LOOPBACK = Principal(None, "read")


class AccessRefused(Exception):
    """A request may not proceed: STATUS 401 (who are you) or 403 (not you)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def identify(
    method: str,
    peer: str | None,
    host_header: str | None,
    authorization: str | None,
    find: Callable[[str], Principal | None],
) -> Principal:
    """Who the request is. METHOD is the HTTP method, PEER the TCP peer
    address, HOST_HEADER the Host header, AUTHORIZATION the header value (or
    None); FIND(secret) is the token holder of a secret, or None.

    Raises AccessRefused (401: no token where one is needed, malformed,
    unknown or revoked token), what FIND raises.
    """
    if authorization is not None:
        given = bearer_token(authorization)
        if given is None:
            raise AccessRefused(
                401, "malformed Authorization header: use 'Authorization: Bearer <token>'"
            )
        principal = find(given)
        if principal is None:
            raise AccessRefused(401, "wrong API token")
        return principal
    is_read = method.upper() in READ_METHODS
    if is_read and is_loopback(peer):
        if is_loopback_host_header(host_header):
            return ANONYMOUS_LOOPBACK
        raise AccessRefused(
            401,
            f"the API token is required for reads with Host {host_header!r}: reads without "
            "it are open on loopback only to Host 127.0.0.1, localhost or [::1]",
        )
    needed = "reads from other hosts" if is_read else "every change"
    raise AccessRefused(
        401,
        f"the API token is required for {needed}: send 'Authorization: Bearer <token>' "
        f"with a token from `vdfarm token add` or {TOKEN_FILE} in the server's data directory",
    )


def check_role(principal: Principal, needed: str, what: str) -> None:
    """Let PRINCIPAL do WHAT (e.g. 'DELETE /vdisks/{name}') if its role is
    NEEDED or above.

    Raises AccessRefused (401 for an anonymous reader: a token is needed;
    403 for a token whose role is too low).
    """
    if role_allows(principal.role, needed):
        return
    if principal.name is None:
        raise AccessRefused(401, f"the API token (role {needed}) is required for {what}")
    raise AccessRefused(
        403, f"token {principal.name} has role {principal.role}; {what} needs role {needed}"
    )
