"""`vdfarm token add|list|revoke`, and the remote CLI's `--token-file` and
`--ca-file`: the secret is printed once and stored nowhere (only its hash);
tokens made on one server's CLI work on every server of a farm sharing one
PostgreSQL database; bad input is one error line and changes nothing."""

from __future__ import annotations

import contextlib
import json

import pytest
from sqlalchemy import text

from tests.api.serving import serving
from tests.api.tls import make_tls_files
from tests.cli.conftest import Cli, assert_one_line_error
from tests.farm.postgres import fresh_postgres_url
from vdfarm.api.auth import read_token
from vdfarm.farm import db
from vdfarm.service.context import Farm


@contextlib.contextmanager
def api_of(data_dir, **options):
    """The URL of DATA_DIR's farm served by a real ApiServer for the block."""
    with Farm.open(data_dir) as farm, serving(farm, **options) as port:
        scheme = "https" if "tls_cert" in options else "http"
        yield f"{scheme}://127.0.0.1:{port}"


def secret_file(tmp_path, secret, name="token"):
    path = tmp_path / name
    path.write_text(secret + "\n")
    path.chmod(0o600)
    return path


def test_add_list_revoke(icli):
    secret = icli.ok("token", "add", "relay", "--role", "operator").stdout.strip()
    assert len(secret) >= 43 and "\n" not in secret
    listed = icli.json("token", "list")
    assert [(t["name"], t["role"], t["revoked_at"]) for t in listed] == [
        ("relay", "operator", None)
    ]
    assert listed[0]["created_by"].startswith("cli:")
    made = icli.json("token", "add", "ro", "--role", "read")
    assert made["token"]["name"] == "ro" and made["secret"]
    table = icli.ok("token", "list").stdout
    assert "relay" in table and "operator" in table
    for shown in (table, json.dumps(icli.json("token", "list"))):
        assert secret not in shown and made["secret"] not in shown
    assert icli.ok("token", "revoke", "relay").stdout == "revoked token relay\n"
    assert icli.json("token", "list")[0]["revoked_at"] is not None
    actions = [e["action"] for e in icli.json("audit", "list")][-3:]
    assert actions == ["token.add", "token.add", "token.revoke"]


def test_bad_input_is_one_line_and_changes_nothing(icli):
    icli.ok("token", "add", "relay", "--role", "read")
    before = icli.dump()
    assert_one_line_error(icli("token", "add", "x", "--role", "root"), 2, "'root'")
    assert_one_line_error(icli("token", "add", "a b", "--role", "read"), 1, "invalid token name")
    assert_one_line_error(icli("token", "add", "local:x", "--role", "admin"), 1, "invalid")
    assert_one_line_error(icli("token", "add", "relay", "--role", "admin"), 1, "exists")
    assert_one_line_error(icli("token", "revoke", "nope"), 1, "no token named nope")
    assert icli.dump() == before


def test_only_the_hash_is_in_the_database(icli):
    secret = icli.ok("token", "add", "relay", "--role", "admin").stdout.strip()
    raw = (icli.data_dir / "farm.db").read_bytes()
    assert secret.encode() not in raw
    engine = db.make_engine(db.sqlite_url(icli.data_dir / "farm.db"))
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT * FROM api_tokens")).all()
    finally:
        engine.dispose()
    assert len(rows) == 1 and not any(secret in str(v) for v in rows[0])


def test_token_file_drives_a_remote_farm(icli, tmp_path):
    """Fails before: there was no --token-file (the token showed in `ps`)."""
    secret = icli.ok("token", "add", "desk", "--role", "operator").stdout.strip()
    token_file = secret_file(tmp_path, secret)
    remote = Cli(tmp_path / "elsewhere")  # a client with no data directory of its own
    with api_of(icli.data_dir) as url:
        remote.ok("--farm", url, "--token-file", str(token_file), "device", "add", "pc1")
        env = {"VDFARM_FARM": url, "VDFARM_TOKEN_FILE": str(token_file)}
        remote.ok("device", "set", "pc1", "--description", "lab", data_dir=False, env=env)
        before = icli.dump()
        assert_one_line_error(
            remote("--farm", url, "--token-file", str(tmp_path / "missing"), "device", "list"),
            2,
            "cannot read the token file",
        )
        empty = secret_file(tmp_path, "", "empty")
        assert_one_line_error(
            remote("--farm", url, "--token-file", str(empty), "device", "list"), 2, "is empty"
        )
        assert_one_line_error(
            remote(
                "--farm", url, "--token-file", str(token_file), "--token", "x", "device", "list"
            ),
            2,
            "give --token-file or --token, not both",
        )
        assert_one_line_error(
            remote("--farm", url, "--token-file", str(token_file), "version", "new", "w"),
            1,
            "refused: token desk has role operator; POST /vdisks/{name}/versions needs role admin",
        )
        assert icli.dump() == before
    actors = {e["actor"] for e in icli.json("audit", "list") if e["action"].startswith("device")}
    assert actors == {"token:desk@127.0.0.1"}


def test_https_farm_with_a_private_ca(icli, tmp_path):
    """Fails before: --farm https:// had no way to trust a private CA (and the
    server no TLS)."""
    tls = make_tls_files(tmp_path / "tls")
    token_file = secret_file(tmp_path, read_token(icli.data_dir))
    remote = Cli(tmp_path / "elsewhere")
    with api_of(icli.data_dir, tls_cert=tls.cert, tls_key=tls.key) as url:
        common = ["--farm", url, "--token-file", str(token_file)]
        remote.ok(*common, "--ca-file", str(tls.ca), "device", "add", "pc1")
        listed = remote.ok(*common, "--json", "device", "list", env={"VDFARM_CA_FILE": str(tls.ca)})
        assert [d["name"] for d in json.loads(listed.stdout)] == ["pc1"]
        before = icli.dump()
        assert_one_line_error(
            remote(*common, "--ca-file", str(tls.other_ca), "device", "add", "pc2"),
            1,
            "CERTIFICATE_VERIFY_FAILED",
        )
        assert_one_line_error(
            remote(*common, "--ca-file", str(tmp_path / "nope.pem"), "device", "list"),
            1,
            "cannot use the CA file",
        )
        assert icli.dump() == before


@pytest.fixture
def two_servers(tmp_path):
    """Two data dirs (srv1, srv2) initialised on one fresh PostgreSQL database."""
    with fresh_postgres_url() as url:
        one, two = Cli(tmp_path / "srv1"), Cli(tmp_path / "srv2")
        one.ok("--db", url, "init", "--name", "srv1")
        two.ok("--db", url, "init", "--name", "srv2")
        yield one, two, url


def test_a_token_made_on_one_server_works_on_another(two_servers, tmp_path):
    """Fails before: the only token was each data directory's own file."""
    one, two, url = two_servers
    secret = one.ok("token", "add", "ops", "--role", "operator").stdout.strip()
    token_file = secret_file(tmp_path, secret)
    client = Cli(tmp_path / "client")
    with api_of(one.data_dir) as url1, api_of(two.data_dir) as url2:
        for n, api in enumerate((url1, url2)):
            client.ok("--farm", api, "--token-file", str(token_file), "device", "add", f"pc{n}")
        assert [d["name"] for d in two.json("device", "list")] == ["pc0", "pc1"]
        two.ok("token", "revoke", "ops")  # revoked on srv2's CLI: refused by srv1 at once
        for api in (url1, url2):
            assert_one_line_error(
                client("--farm", api, "--token-file", str(token_file), "device", "list"),
                1,
                "refused the API token (wrong API token)",
            )
    engine = db.make_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT * FROM api_tokens")).all()
    finally:
        engine.dispose()
    assert len(rows) == 1 and not any(secret in str(v) for v in rows[0])


def test_token_verbs_through_the_api_need_an_admin(icli, tmp_path):
    admin_file = secret_file(tmp_path, read_token(icli.data_dir), "admin")
    remote = Cli(tmp_path / "elsewhere")
    with api_of(icli.data_dir) as url:
        as_admin = ["--farm", url, "--token-file", str(admin_file)]
        secret = remote.ok(*as_admin, "token", "add", "ops", "--role", "operator").stdout.strip()
        listed = json.loads(remote.ok(*as_admin, "--json", "token", "list").stdout)
        assert [(t["name"], t["created_by"]) for t in listed] == [
            ("ops", "token:local:srv1@127.0.0.1")
        ]
        ops_file = secret_file(tmp_path, secret, "ops")
        remote.ok("--farm", url, "--token-file", str(ops_file), "device", "list")  # last use
        before = icli.dump()
        assert_one_line_error(
            remote(
                "--farm", url, "--token-file", str(ops_file), "token", "add", "x", "--role", "admin"
            ),
            1,
            "POST /tokens needs role admin",
        )
        assert icli.dump() == before
        assert remote.ok(*as_admin, "token", "revoke", "ops").stdout == "revoked token ops\n"
