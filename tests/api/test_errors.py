"""Errors as HTTP answers: 422 for unparsable requests (one line), 503 when
the farm database is down (whether the service translated the error or not),
and nothing changed by either."""

from __future__ import annotations

import contextlib
import shutil

import pytest

from tests.api.conftest import error_of, unchanged
from vdfarm.api.errors import problem_line, validation_message


@contextlib.contextmanager
def database_replaced(farm, tmp_path, make_broken):
    """Take the SQLite files away, put MAKE_BROKEN(path) where farm.db was,
    and put everything back afterwards."""
    farm.engine.dispose()
    hidden = tmp_path / "hidden-db"
    hidden.mkdir()
    for path in farm.data_dir.glob("farm.db*"):
        path.rename(hidden / path.name)
    db_path = farm.data_dir / "farm.db"
    make_broken(db_path)
    try:
        yield
    finally:
        farm.engine.dispose()
        for path in farm.data_dir.glob("farm.db*"):
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
        for path in hidden.iterdir():
            path.rename(farm.data_dir / path.name)


def as_directory(path):
    path.mkdir()  # sqlite: "unable to open database file" (OperationalError)


def as_garbage(path):
    path.write_bytes(b"this is not an SQLite database" * 200)  # DatabaseError


@pytest.mark.parametrize("make_broken", [as_directory, as_garbage])
def test_database_down_is_503_and_changes_nothing(
    admin, local, farm, populated, tmp_path, make_broken
):
    with unchanged(farm), database_replaced(farm, tmp_path, make_broken):
        for response in (
            local.get("/api/v1/vdisks"),
            admin.post("/api/v1/devices", json={"name": "pc2", "vdisk": "w"}),
            admin.patch("/api/v1/vdisks/w", json={"description": "x"}),
            admin.delete("/api/v1/devices/pc1"),
        ):
            assert error_of(response, 503).startswith("farm database error: ")
    assert local.get("/api/v1/devices/pc1").status_code == 200  # and back once it is back


def test_malformed_json_is_422_with_a_message(admin, farm):
    with unchanged(farm):
        response = admin.post(
            "/api/v1/devices",
            content=b'{"name": "pc2",',
            headers={"Content-Type": "application/json"},
        )
        detail = error_of(response, 422)
    assert detail.startswith("invalid request: malformed JSON in the request body")
    assert response.json()["errors"][0]["type"] == "json_invalid"


@pytest.mark.parametrize(
    "body, says",
    [
        ({}, "body field name: Field required"),
        ({"name": "pc2", "colour": "red"}, "body field colour: Extra inputs are not permitted"),
        ({"name": "pc2", "device_type": "boss"}, "body field device_type: Input should be"),
        ({"name": ["pc2"]}, "body field name: Input should be a valid string"),
        ([1, 2], "Input should be a valid dictionary"),
    ],
)
def test_bad_fields_are_422_one_line_each(admin, farm, body, says):
    with unchanged(farm):
        detail = error_of(admin.post("/api/v1/devices", json=body), 422)
    assert says in detail


def test_bad_query_is_422(local):
    assert "query field limit" in error_of(local.get("/api/v1/audit?limit=zero"), 422)


def test_problem_lines():
    assert (
        problem_line(
            {"type": "json_invalid", "loc": ("body", 3), "ctx": {"error": "Expecting value"}}
        )
        == "malformed JSON in the request body: Expecting value"
    )
    assert (
        problem_line({"type": "missing", "loc": ("path", "name"), "msg": "Field required"})
        == "path field name: Field required"
    )
    assert problem_line({"loc": ("x",), "msg": "bad"}) == "x: bad"
    assert validation_message([]) == "invalid request"
    assert (
        validation_message([{"loc": ("a",), "msg": "m"}, {"loc": ("b",), "msg": "n"}])
        == "invalid request: a: m; b: n"
    )
