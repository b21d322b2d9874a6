"""The token file and the access rule, without the web stack."""

from __future__ import annotations

import base64
import os
import stat

import pytest

from vdfarm.api import auth


def test_ensure_token_makes_a_private_random_token_once(tmp_path):
    token = auth.ensure_token(tmp_path)
    path = tmp_path / "api-token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text() == token + "\n"
    assert len(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))) == 32
    assert auth.ensure_token(tmp_path) == token
    assert auth.read_token(tmp_path) == token
    assert sorted(os.listdir(tmp_path)) == ["api-token"]  # no temp file left


def test_tokens_differ_between_data_dirs(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    assert auth.ensure_token(tmp_path / "a") != auth.ensure_token(tmp_path / "b")


def test_existing_token_is_kept(tmp_path):
    (tmp_path / "api-token").write_text("  given-token \n")
    assert auth.ensure_token(tmp_path) == "given-token"


def test_read_token_of_a_dir_without_one(tmp_path):
    assert auth.read_token(tmp_path) is None
    assert not (tmp_path / "api-token").exists()


def test_empty_token_file_is_refused(tmp_path):
    (tmp_path / "api-token").write_text("\n")
    with pytest.raises(auth.TokenFileError, match="is empty"):
        auth.ensure_token(tmp_path)
    assert (tmp_path / "api-token").read_text() == "\n"


def test_missing_data_dir_is_an_os_error(tmp_path):
    with pytest.raises(OSError):
        auth.ensure_token(tmp_path / "nope")


@pytest.mark.parametrize(
    "header, token",
    [
        ("Bearer abc", "abc"),
        ("bearer abc", "abc"),
        ("BEARER  abc ", "abc"),
        (None, None),
        ("", None),
        ("Basic abc", None),
        ("Bearer", None),
        ("Bearer   ", None),
        ("abc", None),
    ],
)
def test_bearer_token(header, token):
    assert auth.bearer_token(header) == token


@pytest.mark.parametrize(
    "host, loopback",
    [
        ("127.0.0.1", True),
        ("127.3.2.1", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),
        ("10.0.0.1", False),
        ("192.0.2.7", False),
        ("::ffff:10.0.0.1", False),
        ("fe80::1%eth0", False),
        ("testclient", False),
        ("", False),
        (None, False),
        ("localhost", False),
    ],
)
def test_is_loopback(host, loopback):
    assert auth.is_loopback(host) is loopback


TOKEN = "s3cret"
BEARER = f"Bearer {TOKEN}"
HOLDER = auth.Principal("ops", "operator")


def find(secret):
    return HOLDER if secret == TOKEN else None


@pytest.mark.parametrize(
    "method, host, header, allowed, says",
    [
        ("GET", "127.0.0.1", None, True, None),
        ("HEAD", "::1", None, True, None),
        ("GET", "192.0.2.7", None, False, "required for reads from other hosts"),
        ("GET", "192.0.2.7", BEARER, True, None),
        ("POST", "127.0.0.1", None, False, "required for every change"),
        ("DELETE", "127.0.0.1", None, False, "required for every change"),
        ("PATCH", "192.0.2.7", BEARER, True, None),
        ("POST", "127.0.0.1", "Bearer wrong", False, "wrong API token"),
        ("GET", "127.0.0.1", "Bearer wrong", False, "wrong API token"),
        ("POST", "127.0.0.1", f"Basic {TOKEN}", False, "malformed Authorization header"),
        ("POST", "127.0.0.1", f"Bearer {TOKEN}x", False, "wrong API token"),
    ],
)
def test_identify(method, host, header, allowed, says):
    try:
        principal = auth.identify(method, host, "127.0.0.1:8080", header, find)
    except auth.AccessRefused as exc:
        assert not allowed and exc.status == 401
        assert says in exc.message and TOKEN not in exc.message
    else:
        assert allowed
        assert principal == (HOLDER if header else auth.ANONYMOUS_LOOPBACK)


@pytest.mark.parametrize(
    "host, loopback",
    [
        ("127.0.0.1", True),
        ("127.0.0.1:8080", True),
        ("localhost", True),
        ("LOCALHOST:80", True),
        ("[::1]", True),
        ("[::1]:8080", True),
        ("evil.example", False),
        ("evil.example:8080", False),
        ("127.0.0.1.evil.example", False),
        ("localhost.evil.example", False),
        ("127.0.0.2", False),
        ("127.0.0.1:", False),
        ("127.0.0.1:80:80", False),
        ("", False),
        (None, False),
    ],
)
def test_loopback_host_header(host, loopback):
    assert auth.is_loopback_host_header(host) is loopback


def test_loopback_read_with_another_host_header_needs_the_token():
    """DNS rebinding: a page from evil.example, resolved to 127.0.0.1."""
    with pytest.raises(auth.AccessRefused, match="required for reads with Host") as refused:
        auth.identify("GET", "127.0.0.1", "evil.example:8080", None, find)
    assert refused.value.status == 401
    assert auth.identify("GET", "127.0.0.1", "evil.example", BEARER, find) == HOLDER


@pytest.mark.parametrize(
    "role, needed, status",
    [
        ("read", "read", None),
        ("read", "operator", 403),
        ("operator", "operator", None),
        ("operator", "admin", 403),
        ("admin", "admin", None),
        ("admin", "read", None),
        ("replica", "replica", None),
        ("admin", "replica", None),
        ("read", "replica", 403),
        ("replica", "read", 403),
    ],
)
def test_check_role(role, needed, status):
    principal = auth.Principal("t1", role)
    if status is None:
        auth.check_role(principal, needed, "POST /x")
        return
    with pytest.raises(auth.AccessRefused) as refused:
        auth.check_role(principal, needed, "POST /x")
    assert refused.value.status == status
    assert f"token t1 has role {role}; POST /x needs role {needed}" == refused.value.message


def test_an_anonymous_loopback_reader_downloads_no_vdisk():
    with pytest.raises(auth.AccessRefused) as refused:
        auth.check_role(auth.ANONYMOUS_LOOPBACK, "replica", "GET /replication/files/w/base.raw")
    assert refused.value.status == 401 and "role replica" in refused.value.message


def test_an_anonymous_reader_is_asked_for_a_token():
    with pytest.raises(auth.AccessRefused) as refused:
        auth.check_role(auth.ANONYMOUS_LOOPBACK, "admin", "GET /tokens")
    assert refused.value.status == 401 and "role admin" in refused.value.message


def test_actors():
    assert auth.Principal("ops", "operator").actor("192.0.2.7") == "token:ops@192.0.2.7"
    assert auth.ANONYMOUS_LOOPBACK.actor("127.0.0.1") == "api:127.0.0.1"
