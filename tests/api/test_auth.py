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
def test_access_refusal(method, host, header, allowed, says):
    refusal = auth.access_refusal(method, host, header, TOKEN)
    assert (refusal is None) is allowed
    if says:
        assert says in refusal and TOKEN not in refusal
