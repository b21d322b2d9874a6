"""Login against a stub farm over real HTTP: the answer parsed, the next URL
tried, one-line errors for an unknown device and for what is no farm."""

from __future__ import annotations

import pytest

from tests.agent.stub_farm import StubFarm, login_answer
from tests.conftest import free_port
from vdfarm.agent.login import (
    FarmUnreachable,
    NotAFarm,
    UnknownDevice,
    login,
    parse_answer,
)

SERVER = {"name": "s1", "host": "127.0.0.1", "nbd_port": 10809, "api_port": 8080}
SHA = "ab" * 32


@pytest.fixture
def farm():
    stub = StubFarm(lambda body: (200, login_answer(body["device"], SERVER, SHA, 4096)))
    yield stub
    stub.close()


def test_login_parses_the_answer_and_sends_the_exclusions(farm):
    dead = f"http://127.0.0.1:{free_port()}"
    answer = login([dead, farm.url], "pc1", exclude=["s3", "s2"])
    assert answer.url == farm.url and answer.server.name == "s1" and answer.failover
    assert (answer.size, answer.sha256, answer.write_cache_type) == (4096, SHA, "server-disk")
    path, body, _ = farm.requests[0]
    assert path == "/api/v1/login" and body == {"device": "pc1", "exclude": ["s2", "s3"]}


def test_a_failover_login_sends_the_version_the_device_keeps(farm):
    login([farm.url], "pc1", exclude=["s2"], version=0)
    _, body, _ = farm.requests[0]
    assert body == {"device": "pc1", "exclude": ["s2"], "version": 0}


def test_an_unknown_device_is_one_line():
    stub = StubFarm(lambda body: (404, {"detail": "no device named 'pc9'"}))
    try:
        with pytest.raises(UnknownDevice, match="no device named"):
            login([stub.url], "pc9")
    finally:
        stub.close()


@pytest.mark.parametrize(
    "status, payload",
    [
        (200, b"<html>hello</html>"),
        (404, b"<html>not found</html>"),
        (200, {"device": "pc1"}),  # a field missing: today's servers lack sha256
        (200, [1, 2]),
    ],
)
def test_what_is_no_farm_is_said_so(status, payload):
    stub = StubFarm(lambda body: (status, payload))
    try:
        with pytest.raises(NotAFarm) as caught:
            login([stub.url], "pc1")
        assert "\n" not in str(caught.value)
    finally:
        stub.close()


def test_no_reachable_farm():
    with pytest.raises(FarmUnreachable):
        login([f"http://127.0.0.1:{free_port()}"], "pc1", timeout=1)


def test_the_parser_refuses_missing_and_mistyped_fields():
    good = login_answer("pc1", SERVER, SHA, 4096)
    assert parse_answer("u", good).server.nbd_port == 10809
    for key, value in [("sha256", "xyz"), ("failover", "yes"), ("size", True), ("server", {})]:
        with pytest.raises(NotAFarm):
            parse_answer("u", {**good, key: value})
    without = dict(good)
    del without["write_cache_type"]
    with pytest.raises(NotAFarm):
        parse_answer("u", without)


def test_a_version_without_a_fixed_hash_has_sha256_none():
    answer = parse_answer("u", login_answer("pc1", SERVER, None, 4096, failover=False))
    assert answer.sha256 is None and not answer.failover
