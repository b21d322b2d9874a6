"""The API's bearer token and who may do what without it.

Rules:
- The token lives in DATA_DIR/api-token (mode 0600): 32 random bytes,
  URL-safe base64, one line. It is made once (at `vdfarm init`, or at the
  API's first start) and never rewritten; to rotate it, delete the file and
  restart the server.
- Every change (any method but GET/HEAD/OPTIONS) needs
  `Authorization: Bearer <token>`. Reads need it too, except from a
  loopback address (127.0.0.0/8, ::1, ::ffff:127.x). A token that is given
  must be right, even for a read from loopback.
- Pure logic and plain file I/O only (no FastAPI here): `vdfarm init` may call
  `ensure_token` without loading the web stack.
"""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import os
import secrets
from pathlib import Path

TOKEN_FILE = "api-token"
TOKEN_BYTES = 32
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
BEARER = "bearer"


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


def access_refusal(
    method: str, client_host: str | None, authorization: str | None, expected: str
) -> str | None:
    """Why a request may not proceed (one line), or None if it may.

    METHOD is the HTTP method, CLIENT_HOST the peer address, AUTHORIZATION the
    header value (or None), EXPECTED the farm's token.
    """
    if authorization is not None:
        given = bearer_token(authorization)
        if given is None:
            return "malformed Authorization header: use 'Authorization: Bearer <token>'"
        if not token_matches(given, expected):
            return "wrong API token"
        return None
    if method.upper() in READ_METHODS and is_loopback(client_host):
        return None
    needed = "reads from other hosts" if method.upper() in READ_METHODS else "every change"
    return (
        f"the API token is required for {needed}: send 'Authorization: Bearer <token>' "
        f"with the token from {TOKEN_FILE} in the server's data directory"
    )
