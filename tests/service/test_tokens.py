"""TokenService: named tokens with roles, only the hash of the secret in the
database, revoke, last-used refreshed at most once a minute, audited.
Built from a session factory, a clock and an audit writer (no Farm)."""

from __future__ import annotations

import hashlib

import pytest
from sqlalchemy import select

from tests.service.helpers import dump
from vdfarm.farm.models import ApiToken, AuditEvent
from vdfarm.service.audit import record
from vdfarm.service.errors import Conflict, Invalid, NotFound
from vdfarm.service.tokens import TokenService, role_allows


def test_add_shows_the_secret_once_and_stores_only_its_hash(farm):
    made = farm.tokens.add("relay", "operator", actor="cli:alice")
    assert (made.token.name, made.token.role, made.token.created_by) == (
        "relay",
        "operator",
        "cli:alice",
    )
    assert len(made.secret) >= 43  # 32 random bytes, URL-safe base64
    with farm.session() as session:
        row = session.scalars(select(ApiToken)).one()
        stored = [str(v) for v in session.execute(select(ApiToken.__table__)).one()]
        audit = [str(v) for v in session.execute(select(AuditEvent.__table__)).all()]
    assert row.secret_sha256 == hashlib.sha256(made.secret.encode()).hexdigest()
    assert not any(made.secret in value for value in stored)  # no secret in the row
    assert not any(made.secret in value or row.secret_sha256 in value for value in audit)
    assert made.secret not in repr(farm.tokens.list())
    assert farm.tokens.authenticate(made.secret).name == "relay"


def test_authenticate_refuses_unknown_and_revoked_secrets(farm, clock):
    made = farm.tokens.add("t1", "read", actor="test")
    assert farm.tokens.authenticate("nope") is None
    assert farm.tokens.authenticate(made.secret + "x") is None
    revoked = farm.tokens.revoke("t1", actor="cli:bob")
    assert revoked.revoked_at == clock()
    assert farm.tokens.authenticate(made.secret) is None
    with pytest.raises(Conflict, match="already revoked"):
        farm.tokens.revoke("t1", actor="cli:bob")
    assert [(e.action, e.actor) for e in farm.audit.list()[-2:]] == [
        ("token.add", "test"),
        ("token.revoke", "cli:bob"),
    ]


def test_last_used_is_written_at_most_once_a_minute(farm, clock):
    made = farm.tokens.add("t1", "admin", actor="test")
    start = clock()
    assert farm.tokens.authenticate(made.secret).last_used_at == start
    clock.advance(59)
    assert farm.tokens.authenticate(made.secret).last_used_at == start
    clock.advance(1)
    assert farm.tokens.authenticate(made.secret).last_used_at == clock()
    assert farm.tokens.list()[0].last_used_at == clock()


@pytest.mark.parametrize(
    "name, role, error, text",
    [
        ("bad name", "read", Invalid, "invalid token name"),
        ("", "read", Invalid, "invalid token name"),
        ("local-x", "read", Invalid, "reserved"),
        ("ok", "root", Invalid, "invalid token role 'root': use read, operator, admin"),
    ],
)
def test_bad_input_changes_nothing(farm, name, role, error, text):
    before = dump(farm)
    with pytest.raises(error, match=text):
        farm.tokens.add(name, role, actor="test")
    assert dump(farm) == before


def test_names_are_never_reused(farm):
    farm.tokens.add("t1", "read", actor="test")
    farm.tokens.revoke("t1", actor="test")
    before = dump(farm)
    with pytest.raises(Conflict, match="a token named t1 exists"):
        farm.tokens.add("t1", "read", actor="test")
    with pytest.raises(NotFound, match="no token named t2"):
        farm.tokens.revoke("t2", actor="test")
    assert dump(farm) == before


def test_the_service_needs_no_farm(farm, clock):
    written = []

    def audit(session, **row):
        written.append(row["action"])
        record(session, **row)

    tokens = TokenService(farm.session, clock, audit)
    made = tokens.add("alone", "read", actor="test")
    assert tokens.authenticate(made.secret).role == "read"
    assert [t.name for t in farm.tokens.list()] == ["alone"] and written == ["token.add"]


@pytest.mark.parametrize(
    "role, needed, allowed",
    [
        ("read", "read", True),
        ("read", "operator", False),
        ("operator", "operator", True),
        ("operator", "admin", False),
        ("admin", "operator", True),
        ("nobody", "read", False),
        # replica stands outside the ranking: its own routes, and admin's
        ("replica", "replica", True),
        ("admin", "replica", True),
        ("operator", "replica", False),
        ("read", "replica", False),
        ("replica", "read", False),
        ("replica", "operator", False),
        ("replica", "admin", False),
    ],
)
def test_role_order(role, needed, allowed):
    assert role_allows(role, needed) is allowed
