"""The client's HTTP side: farm URLs, and every failure as one service error."""

from __future__ import annotations

import socket

import pytest

from tests.conftest import free_port
from vdfarm.client.http import (
    FarmHttp,
    RemoteError,
    TokenRefused,
    Unreachable,
    check_url,
    error_for,
)
from vdfarm.service.errors import Conflict, Invalid, NotFound, Unavailable

URL = "http://127.0.0.1:8080"


@pytest.mark.parametrize(
    "url, expected",
    [
        ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
        ("https://farm.example:443/", "https://farm.example:443"),
    ],
)
def test_good_urls(url, expected):
    assert check_url(url) == expected


@pytest.mark.parametrize("url", ["127.0.0.1:8080", "ftp://farm", "http://", "http://[::1"])
def test_bad_urls(url):
    with pytest.raises(Invalid, match="bad farm URL"):
        check_url(url)


@pytest.mark.parametrize(
    "status, kind",
    [
        (400, Invalid),
        (404, NotFound),
        (409, Conflict),
        (422, Invalid),
        (503, Unavailable),
    ],
)
def test_statuses_map_to_service_errors(status, kind):
    error = error_for(status, '{"detail": "no vDisk named w"}', URL, token_given=True)
    assert type(error) is kind and error.message == "no vDisk named w"


def test_token_errors_say_how_to_give_it():
    missing = error_for(401, '{"detail": "the API token is required"}', URL, token_given=False)
    wrong = error_for(401, '{"detail": "wrong API token"}', URL, token_given=True)
    assert isinstance(missing, TokenRefused) and isinstance(wrong, TokenRefused)
    assert "needs the API token" in missing.message and "--token-file" in missing.message
    assert "refused the API token (wrong API token)" in wrong.message
    assert "VDFARM_TOKEN" in wrong.message and "api-token" in wrong.message


def test_unknown_answers_are_remote_errors_of_one_line():
    error = error_for(500, "Internal Server Error\ntraceback...", URL, token_given=False)
    assert isinstance(error, RemoteError)
    assert error.message == f"the farm at {URL} answered HTTP 500: Internal Server Error"
    assert error_for(502, "", URL, False).message.endswith("HTTP 502: HTTP 502")


def test_connection_refused_is_unreachable():
    port = free_port()  # closed again: nothing listens
    http = FarmHttp(f"http://127.0.0.1:{port}")
    with pytest.raises(Unreachable, match=f"cannot reach farm http://127.0.0.1:{port}: "):
        http.request("GET", "/servers")
    http.close()


def test_no_answer_in_time_is_unreachable():
    with socket.socket() as listener:  # accepts, never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        http = FarmHttp(f"http://127.0.0.1:{port}", timeout=0.2)
        with pytest.raises(Unreachable, match="did not answer in time"):
            http.request("GET", "/servers")
        http.close()
