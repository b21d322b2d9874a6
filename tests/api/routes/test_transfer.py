"""Import and export through the API are confined to the transfer directory
(issue 9, hole 4): `..`, absolute paths outside, symbolic links anywhere
inside, an existing file and a file outside are refused with a 4xx and one
line, and nothing is written; a legitimate import and export work, the
export is a new 0600 file, and both are audited with the token and the path."""

from __future__ import annotations

import os
import stat

import pytest
from fastapi.testclient import TestClient

from tests.api.conftest import OTHER_ACTOR, OTHER_HOST, error_of, unchanged
from tests.service.helpers import make_raw
from vdfarm.api.app import create_app


@pytest.fixture
def transfer(tmp_path):
    return tmp_path / "transfer"


@pytest.fixture
def outside(tmp_path):
    """A directory beside the transfer directory (stands for /etc, /root/.ssh)."""
    path = tmp_path / "outside"
    path.mkdir()
    return path


@pytest.fixture
def admin(farm, transfer, token):
    app = create_app(farm, transfer_dir=transfer)
    return TestClient(app, client=OTHER_HOST, headers={"Authorization": f"Bearer {token}"})


@pytest.fixture
def token(farm):
    from vdfarm.api.auth import ensure_token

    return ensure_token(farm.data_dir)


@pytest.fixture
def golden(farm, tmp_path):
    farm.vdisks.import_image("w", make_raw(tmp_path / "golden.raw"))
    return farm


def export(client, path, fmt="raw"):
    return client.post("/api/v1/vdisks/w/export", json={"path": str(path), "format": fmt})


def listing(*dirs):
    return {str(d): sorted(os.listdir(d)) for d in dirs}


def test_transfer_dir_made_private(admin, transfer):
    assert stat.S_IMODE(transfer.stat().st_mode) == 0o700


def test_default_transfer_dir_is_in_the_data_dir(farm):
    create_app(farm)
    made = farm.data_dir / "transfer"
    assert made.is_dir() and stat.S_IMODE(made.stat().st_mode) == 0o700


@pytest.mark.parametrize(
    "named, says",
    [
        ("../../etc/x", "'..' is not allowed"),
        ("../outside/x.raw", "'..' is not allowed"),
        ("sub/../../outside/x.raw", "'..' is not allowed"),
        ("{outside}/authorized_keys", "is outside the transfer directory"),
        ("{transfer}/../outside/x.raw", "'..' is not allowed"),
        ("/etc/vdfarm-test-x", "is outside the transfer directory"),
        ("link/x.raw", "is a symbolic link"),
        ("{transfer}/link/x.raw", "is a symbolic link"),
        ("filelink", "is a symbolic link"),
        ("deep/link/x.raw", "is a symbolic link"),
        ("nodir/x.raw", "does not exist"),
        ("{transfer}", "the transfer directory itself"),
    ],
)
def test_export_outside_is_refused(admin, golden, farm, transfer, outside, named, says):
    (transfer / "deep").mkdir()
    (transfer / "link").symlink_to(outside)
    (transfer / "deep" / "link").symlink_to(outside)
    (transfer / "filelink").symlink_to(outside / "planted")
    before = listing(transfer, transfer / "deep", outside)
    with unchanged(farm):
        detail = error_of(export(admin, named.format(outside=outside, transfer=transfer)), 400)
    assert says in detail
    assert listing(transfer, transfer / "deep", outside) == before
    assert not os.path.exists("/etc/vdfarm-test-x")


def test_export_never_overwrites(admin, golden, farm, transfer, outside):
    (transfer / "taken.raw").write_bytes(b"keep me")
    (transfer / "dangling").symlink_to(outside / "authorized_keys")
    with unchanged(farm):
        assert "already exists" in error_of(export(admin, "taken.raw"), 409)
        assert "is a symbolic link" in error_of(export(admin, "dangling"), 400)
    assert (transfer / "taken.raw").read_bytes() == b"keep me"
    assert os.listdir(outside) == []
    assert sorted(os.listdir(transfer)) == ["dangling", "taken.raw"]


def test_export_inside_works_and_is_audited(admin, golden, farm, transfer):
    (transfer / "out").mkdir()
    response = export(admin, "out/w.qcow2", "qcow2")
    assert response.status_code == 201, response.text
    written = transfer / "out" / "w.qcow2"
    assert response.json()["path"] == str(written)
    assert stat.S_IMODE(written.stat().st_mode) == 0o600 and written.stat().st_nlink == 1
    assert os.listdir(transfer / "out") == ["w.qcow2"]  # no temporary left
    absolute = export(admin, transfer / "w.raw")
    assert absolute.status_code == 201, absolute.text
    assert (transfer / "w.raw").read_bytes() == farm.store.path_of("w").read_bytes()
    entries = [e for e in farm.audit.list() if e.action == "vdisk.export"]
    assert [(e.actor, e.target_name, e.after["path"]) for e in entries] == [
        (OTHER_ACTOR, "w", str(written)),
        (OTHER_ACTOR, "w", str(transfer / "w.raw")),
    ]


def test_import_from_outside_is_refused(admin, farm, transfer, outside):
    make_raw(outside / "secret.raw")
    (transfer / "link").symlink_to(outside)
    (transfer / "file.raw").symlink_to(outside / "secret.raw")
    os.link(outside / "secret.raw", transfer / "hard.raw")
    cases = [
        (str(outside / "secret.raw"), "is outside the transfer directory"),
        ("../outside/secret.raw", "'..' is not allowed"),
        ("link/secret.raw", "is a symbolic link"),
        ("file.raw", "is a symbolic link"),
        ("hard.raw", "other hard links"),
        ("/etc/passwd", "is outside the transfer directory"),
    ]
    with unchanged(farm):
        for named, says in cases:
            response = admin.post("/api/v1/vdisks", json={"name": "x", "source_path": named})
            assert says in error_of(response, 400), named
    assert farm.vdisks.list() == []


def test_import_inside_works_and_is_audited(admin, farm, transfer):
    (transfer / "in").mkdir()
    make_raw(transfer / "in" / "img.raw")
    response = admin.post("/api/v1/vdisks", json={"name": "x", "source_path": "in/img.raw"})
    assert response.status_code == 201, response.text
    [entry] = [e for e in farm.audit.list() if e.action == "vdisk.import"]
    assert entry.actor == OTHER_ACTOR
    assert entry.after["source"] == str(transfer / "in" / "img.raw")
    assert entry.after["name"] == "x"


def test_import_refusal_names_the_callers_path(admin, farm, transfer):
    (transfer / "empty.raw").write_bytes(b"")
    with unchanged(farm):
        detail = error_of(
            admin.post("/api/v1/vdisks", json={"name": "x", "source_path": "empty.raw"}), 400
        )
    assert str(transfer / "empty.raw") in detail and "/proc/" not in detail


def test_a_file_appearing_during_the_export_is_not_overwritten(
    admin, golden, farm, transfer, monkeypatch
):
    """The early existence check is only for a quick answer: the name is
    taken with link(2), so a file made meanwhile wins and is kept."""
    from vdfarm.service import transfer as transfer_module

    def racing_check(dir_fd, name, shown):
        (transfer / "race.raw").write_bytes(b"made meanwhile")

    monkeypatch.setattr(transfer_module, "_check_new", racing_check)
    assert "already exists" in error_of(export(admin, "race.raw"), 409)
    assert (transfer / "race.raw").read_bytes() == b"made meanwhile"
    assert sorted(os.listdir(transfer)) == ["race.raw"]  # no temporary left
    assert [e for e in farm.audit.list() if e.action == "vdisk.export"] == []


def test_api_server_takes_the_transfer_dir(farm, tmp_path):
    from vdfarm.api.server import ApiServer

    server = ApiServer(farm, "127.0.0.1", 0, transfer_dir=tmp_path / "xfer")
    assert (tmp_path / "xfer").is_dir()
    assert server.app.state.transfers.transfer.root == (tmp_path / "xfer").resolve()
