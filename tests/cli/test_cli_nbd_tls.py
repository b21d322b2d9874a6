"""`vdfarm server run --tls off|optional|require --tls-cert --tls-key
--tls-ca`: the settings reach the daemon, and every unusable combination or
file is one line (exit 2) before anything starts."""

from __future__ import annotations

import pytest

import vdfarm.daemon.run
from tests.cli.conftest import assert_one_line_error
from tests.stream.pki import Pki, make_pki
from vdfarm.nbd.tls import TLSPolicy
from vdfarm.nbd.tls_config import TLSSettings


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def started(monkeypatch):
    """The ServerOptions each `server run` handed to the daemon."""
    calls = []
    monkeypatch.setattr(
        vdfarm.daemon.run, "run_server", lambda farm, options: calls.append(options)
    )
    return calls


def test_the_tls_settings_reach_the_daemon(icli, pki, started):
    icli.ok("server", "run")
    files = ["--tls-cert", str(pki.cert), "--tls-key", str(pki.key)]
    icli.ok("server", "run", "--tls", "optional", *files)
    icli.ok("server", "run", "--tls", "require", *files, "--tls-ca", str(pki.ca))
    assert [o.nbd_tls for o in started] == [
        TLSSettings(),
        TLSSettings(TLSPolicy.OPTIONAL, pki.cert, pki.key),
        TLSSettings(TLSPolicy.REQUIRE, pki.cert, pki.key, pki.ca),
    ]


def test_help_shows_the_tls_flags(cli):
    out = cli.ok("server", "run", "--help", data_dir=False).stdout
    for flag in ("--tls [off|optional|require]", "--tls-cert", "--tls-key", "--tls-ca"):
        assert flag in out


def test_unusable_settings_and_files_are_one_line_before_anything_starts(
    icli, pki, started, tmp_path
):
    cert, key = str(pki.cert), str(pki.key)
    other_key = str(pki.client("pc1") / "client-key.pem")
    cases = [
        (["--tls", "require"], "--tls require needs --tls-cert and --tls-key"),
        (["--tls", "optional", "--tls-cert", cert], "needs --tls-cert and --tls-key"),
        (["--tls-cert", cert, "--tls-key", key], "given with --tls off"),
        (["--tls", "require", "--tls-cert", str(tmp_path / "no.pem"), "--tls-key", key], "no.pem"),
        (["--tls", "require", "--tls-cert", cert, "--tls-key", other_key], "certificate"),
        (["--tls", "require", "--tls-cert", cert, "--tls-key", key, "--tls-ca", key], "NBD TLS CA"),
        (["--tls", "sometimes"], "sometimes"),
    ]
    before = icli.dump()
    for args, text in cases:
        assert_one_line_error(icli("server", "run", *args), 2, text)
    assert started == [] and icli.dump() == before
