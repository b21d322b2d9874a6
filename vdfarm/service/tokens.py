"""Named REST API tokens with roles, kept hashed in the farm database.

Rules:
- A token is a name (unique, never reused, even after a revoke), a role
  ('read' < 'operator' < 'admin', or 'replica': outside that ranking, it may
  fetch version files between servers and nothing else, which `admin` may
  too) and a secret of 32 random bytes shown ONCE
  by `add`. The database keeps only the secret's sha256 (the secret is
  random, so a plain hash is enough); every server of the farm reads the same
  rows, so a token made on one server works on all of them.
- `authenticate` looks the hash up and compares it in constant time; a
  revoked or unknown secret is None. It refreshes `last_used_at` at most once
  a minute (LAST_USED_EVERY), so a busy client costs no write per request;
  a request later refused for the token's role still counts as a use.
- Adding and revoking are audited (`token.add`, `token.revoke`) in the same
  transaction; the audit row never holds the secret or its hash.
- The service gets what it needs, not the Farm: a session factory (a
  callable returning a context manager of a Session that commits on success,
  like `Farm.session`), a clock (aware UTC) and an audit writer (the
  signature of `vdfarm.service.audit.record`).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session

from vdfarm.farm.models import TOKEN_ROLES, ApiToken
from vdfarm.service.errors import Conflict, Invalid, NotFound
from vdfarm.service.validation import check_name

SECRET_BYTES = 32
LAST_USED_EVERY = timedelta(minutes=1)
RESERVED_PREFIX = "local"  # `local:<server>` names the data directory's api-token file
RANKED_ROLES = ("read", "operator", "admin")
ROLE_RANK = {role: rank for rank, role in enumerate(RANKED_ROLES)}
REPLICA = "replica"
REPLICA_HOLDERS = frozenset({REPLICA, "admin"})

SessionFactory = Callable[[], AbstractContextManager[Session]]
Clock = Callable[[], datetime]


class AuditWriter(Protocol):
    """Adds an audit row to a session (see `vdfarm.service.audit.record`)."""

    def __call__(
        self,
        session: Session,
        *,
        actor: str,
        at: datetime,
        action: str,
        target_type: str,
        target_name: str,
        before: Any,
        after: Any,
    ) -> None: ...


@dataclass(frozen=True)
class TokenInfo:
    """A token as it may be shown: everything but its secret and hash."""

    name: str
    role: str
    created_at: datetime
    created_by: str
    last_used_at: datetime | None
    revoked_at: datetime | None


@dataclass(frozen=True)
class NewToken:
    """A token just made, with its secret (shown once, stored nowhere)."""

    token: TokenInfo
    secret: str


def secret_hash(secret: str) -> str:
    """The sha256 (hex) of SECRET as the database keeps it."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def role_allows(role: str, needed: str) -> bool:
    """True if ROLE may do what needs NEEDED: NEEDED or above it (read <
    operator < admin); `replica` work needs `replica` or `admin`, and
    `replica` may do nothing else."""
    if needed == REPLICA:
        return role in REPLICA_HOLDERS
    return ROLE_RANK.get(role, -1) >= ROLE_RANK[needed]


def check_role(role: object) -> str:
    """ROLE if it is one of TOKEN_ROLES. Raises Invalid."""
    if not isinstance(role, str) or role not in TOKEN_ROLES:
        raise Invalid(f"invalid token role {role!r}: use {', '.join(TOKEN_ROLES)}")
    return role


def check_token_name(name: object) -> str:
    """NAME if it is a valid token name (not the reserved `local…`). Raises Invalid."""
    name = check_name("token", name)
    if name.lower().startswith(RESERVED_PREFIX):
        raise Invalid(
            f"invalid token name {name!r}: names starting with {RESERVED_PREFIX!r} are "
            "reserved for the servers' own api-token files"
        )
    return name


def _info(row: ApiToken) -> TokenInfo:
    return TokenInfo(
        name=row.name,
        role=row.role,
        created_at=row.created_at,
        created_by=row.created_by,
        last_used_at=row.last_used_at,
        revoked_at=row.revoked_at,
    )


def _shown(info: TokenInfo) -> dict[str, Any]:
    return {"name": info.name, "role": info.role, "revoked_at": info.revoked_at}


class TokenService:
    """Make, list, revoke and check the farm's API tokens."""

    def __init__(self, session: SessionFactory, clock: Clock, audit: AuditWriter) -> None:
        self.session = session
        self.clock = clock
        self.audit = audit

    def add(self, name: str, role: str, *, actor: str) -> NewToken:
        """Make token NAME with ROLE; the answer holds its secret (shown once).

        Raises Invalid (bad name or role), Conflict (the name exists, revoked
        or not), Unavailable.
        """
        name, role = check_token_name(name), check_role(role)
        secret = secrets.token_urlsafe(SECRET_BYTES)
        now = self.clock()
        with self.session() as session:
            if session.scalar(select(ApiToken.id).where(ApiToken.name == name)) is not None:
                raise Conflict(f"a token named {name} exists (names are never reused)")
            row = ApiToken(
                name=name,
                role=role,
                secret_sha256=secret_hash(secret),
                created_at=now,
                created_by=actor,
            )
            session.add(row)
            session.flush()
            info = _info(row)
            self.audit(
                session,
                actor=actor,
                at=now,
                action="token.add",
                target_type="token",
                target_name=name,
                before=None,
                after=_shown(info),
            )
        return NewToken(token=info, secret=secret)

    def list(self) -> list[TokenInfo]:
        """Every token, revoked ones too, by name (never a secret). Raises Unavailable."""
        with self.session() as session:
            rows = session.scalars(select(ApiToken).order_by(ApiToken.name)).all()
            return [_info(r) for r in rows]

    def revoke(self, name: str, *, actor: str) -> TokenInfo:
        """Revoke token NAME at once (every server refuses it from its next
        request); answers it revoked.

        Raises NotFound, Conflict (already revoked), Unavailable.
        """
        now = self.clock()
        with self.session() as session:
            row = session.scalars(select(ApiToken).where(ApiToken.name == name)).one_or_none()
            if row is None:
                raise NotFound(f"no token named {name}")
            if row.revoked_at is not None:
                raise Conflict(f"token {name} was already revoked")
            before = _shown(_info(row))
            row.revoked_at = now
            info = _info(row)
            self.audit(
                session,
                actor=actor,
                at=now,
                action="token.revoke",
                target_type="token",
                target_name=name,
                before=before,
                after=_shown(info),
            )
        return info

    def authenticate(self, secret: str) -> TokenInfo | None:
        """The live token whose secret is SECRET, or None (unknown or revoked).

        Raises Unavailable (database unreachable).
        """
        digest = secret_hash(secret)
        now = self.clock()
        with self.session() as session:
            row = session.scalars(
                select(ApiToken).where(ApiToken.secret_sha256 == digest)
            ).one_or_none()
            if row is None or not hmac.compare_digest(row.secret_sha256, digest):
                return None
            if row.revoked_at is not None:
                return None
            if row.last_used_at is None or now - row.last_used_at >= LAST_USED_EVERY:
                row.last_used_at = now
            return _info(row)
