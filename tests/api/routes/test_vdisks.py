"""/api/v1/vdisks: import, list, show, change, delete, verify, export — and
every refusal leaves the farm as it was."""

from __future__ import annotations

import threading

import pytest

from tests.api.conftest import OTHER_ACTOR, error_of, unchanged
from tests.service.helpers import make_raw
from tests.store import hostile


def import_body(source, name="w2", **extra):
    return {"name": name, "source_path": str(source), **extra}


def test_import_list_show(admin, local, farm, raw_image):
    response = admin.post(
        "/api/v1/vdisks",
        json=import_body(
            raw_image,
            mode="private",
            write_cache="device-ram",
            cache_limit_mb=64,
            description="golden",
        ),
    )
    assert response.status_code == 201, response.text
    info = response.json()
    assert (info["name"], info["access_mode"], info["write_cache_type"]) == (
        "w2",
        "private",
        "device-ram",
    )
    assert (info["size"], info["write_cache_limit_mb"], info["in_store"]) == (1 << 20, 64, True)
    assert info["devices"] == [] and info["created_at"].startswith("2030-01-01T12:00:00")
    assert farm.vdisks.show("w2").sha256 == info["sha256"]
    assert [v["name"] for v in local.get("/api/v1/vdisks").json()] == ["w2"]
    assert local.get("/api/v1/vdisks/w2").json() == info
    [entry] = [e for e in farm.audit.list() if e.action == "vdisk.import"]
    assert entry.actor == OTHER_ACTOR


def test_import_defaults(admin, raw_image):
    info = admin.post("/api/v1/vdisks", json=import_body(raw_image)).json()
    assert (info["access_mode"], info["write_cache_type"], info["write_cache_limit_mb"]) == (
        "standard",
        "server-disk",
        None,
    )


@pytest.mark.parametrize(
    "body, status, says",
    [
        ({"name": "w", "source_path": "{src}"}, 409, "vDisk w already exists"),
        ({"name": "w2", "source_path": "/no/such.raw"}, 400, "outside the transfer directory"),
        ({"name": "w2", "source_path": "{folder}/no/such.raw"}, 400, "does not exist"),
        ({"name": "bad name!", "source_path": "{src}"}, 400, "bad name!"),
        ({"name": "w2", "source_path": "{folder}/data"}, 400, "is not a file"),
        ({"name": "w2", "source_path": "relative.raw"}, 400, "does not exist"),
        ({"name": "w2", "source_path": ""}, 422, "transfer directory"),
        ({"name": "w2", "source_path": "{src}", "mode": "shared"}, 422, "body field mode"),
        ({"name": "w2", "source_path": "{src}", "cache_limit_mb": 0}, 422, "cache_limit_mb"),
        ({"source_path": "{src}"}, 422, "body field name: Field required"),
    ],
)
def test_import_refusals_change_nothing(
    admin, farm, populated, tmp_path, raw_image, body, status, says
):
    body = {
        k: v.format(src=raw_image, folder=tmp_path) if isinstance(v, str) else v
        for k, v in body.items()
    }
    with unchanged(farm):
        assert says in error_of(admin.post("/api/v1/vdisks", json=body), status)


def test_import_of_a_source_naming_a_host_file_is_refused(admin, farm, populated, tmp_path):
    secret = hostile.host_file(tmp_path / "secret.bin")
    source = hostile.qcow2_with_data_file(tmp_path / "ext.qcow2", secret)
    with unchanged(farm):
        says = error_of(admin.post("/api/v1/vdisks", json=import_body(source)), 400)
    assert "external data file" in says
    with unchanged(farm):
        body = import_body(source, source_format="vdi")
        assert "invalid source format 'vdi'" in error_of(
            admin.post("/api/v1/vdisks", json=body), 400
        )


def test_import_with_source_format_raw_reads_raw_bytes(admin, farm, tmp_path):
    secret = hostile.host_file(tmp_path / "secret.bin")
    header = hostile.qcow2_with_data_file(tmp_path / "h.qcow2", secret)
    source = hostile.raw_looking_like(tmp_path / "disk.raw", header)
    response = admin.post("/api/v1/vdisks", json=import_body(source, source_format="raw"))
    assert response.status_code == 201, response.text
    assert farm.store.path_of("w2").read_bytes() == source.read_bytes()


def test_concurrent_imports_of_one_name_one_wins(admin, farm, tmp_path):
    sources = [make_raw(tmp_path / f"s{i}.raw", fill=bytes([i + 1])) for i in range(4)]
    statuses = []

    def post(source):
        statuses.append(admin.post("/api/v1/vdisks", json=import_body(source, "race")).status_code)

    threads = [threading.Thread(target=post, args=(s,)) for s in sources]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(statuses) == [201, 409, 409, 409]
    assert [v.name for v in farm.vdisks.list()] == ["race"]
    assert farm.vdisks.verify("race").ok
    assert [e.action for e in farm.audit.list()].count("vdisk.import") == 1


def test_show_unknown_is_404(local):
    assert error_of(local.get("/api/v1/vdisks/nope"), 404) == "no vDisk named nope"


def test_patch_changes_and_clears(admin, farm, populated):
    info = admin.patch(
        "/api/v1/vdisks/w",
        json={"description": "golden", "cache_limit_mb": 32, "write_cache": "device-disk"},
    ).json()
    assert (info["description"], info["write_cache_limit_mb"], info["write_cache_type"]) == (
        "golden",
        32,
        "device-disk",
    )
    info = admin.patch("/api/v1/vdisks/w", json={"cache_limit_mb": None}).json()
    assert (info["description"], info["write_cache_limit_mb"]) == ("golden", None)
    info = admin.patch("/api/v1/vdisks/w", json={"max_versions": 3, "mode": "private"}).json()
    assert (info["max_versions"], info["access_mode"]) == (3, "private")
    assert farm.vdisks.show("w").access_mode == "private"


def test_patch_require_tls(admin, local, farm, populated):
    assert local.get("/api/v1/vdisks/w").json()["require_tls"] is False
    info = admin.patch("/api/v1/vdisks/w", json={"require_tls": True}).json()
    assert info["require_tls"] is True and farm.vdisks.show("w").require_tls
    entry = farm.audit.list()[-1]
    assert (entry.action, entry.actor) == ("vdisk.set", OTHER_ACTOR)
    assert (entry.before["require_tls"], entry.after["require_tls"]) == (False, True)
    info = admin.patch("/api/v1/vdisks/w", json={"require_tls": False, "description": "d"}).json()
    assert (info["require_tls"], info["description"]) == (False, "d")


@pytest.mark.parametrize(
    "name, body, status, says",
    [
        ("w", {}, 400, "nothing to change"),
        ("w", {"max_versions": 1}, 400, "max"),
        ("nope", {"description": "x"}, 404, "no vDisk named nope"),
        ("w", {"mdoe": "private"}, 422, "body field mdoe"),
        ("w", {"mode": "exclusive"}, 422, "body field mode"),
        ("w", {"require_tls": "yes"}, 422, "body field require_tls"),
        ("w", {"require_tls": 1}, 422, "body field require_tls"),
        ("w", {"require_tls": True, "subnet_affinity": "fixed"}, 422, "cannot also change"),
        ("nope", {"require_tls": True}, 404, "no vDisk named nope"),
    ],
)
def test_patch_refusals_change_nothing(admin, farm, populated, name, body, status, says):
    with unchanged(farm):
        assert says in error_of(admin.patch(f"/api/v1/vdisks/{name}", json=body), status)


def test_delete(admin, local, farm, populated):
    with unchanged(farm):
        assert "assigned to device(s) pc1" in error_of(admin.delete("/api/v1/vdisks/w"), 409)
    farm.devices.delete("pc1")
    response = admin.delete("/api/v1/vdisks/w")
    assert response.status_code == 200 and response.json()["name"] == "w"
    assert not (farm.store.root / "w").exists()
    error_of(local.get("/api/v1/vdisks/w"), 404)
    error_of(admin.delete("/api/v1/vdisks/w"), 404)


def test_verify_reports_problems_as_an_answer(admin, farm, populated):
    assert admin.post("/api/v1/vdisks/w/verify").json() == {
        "vdisk": "w",
        "ok": True,
        "problems": [],
    }
    with open(farm.store.path_of("w"), "r+b") as fh:
        fh.write(b"\x00" * 16)
    report = admin.post("/api/v1/vdisks/w/verify").json()
    assert report["ok"] is False and report["problems"]
    error_of(admin.post("/api/v1/vdisks/nope/verify"), 404)


def test_export(admin, farm, populated, tmp_path):
    out = tmp_path / "out.qcow2"
    response = admin.post("/api/v1/vdisks/w/export", json={"path": str(out), "format": "qcow2"})
    assert response.status_code == 201, response.text
    assert response.json() == {
        "vdisk": "w",
        "version": 0,
        "format": "qcow2",
        "path": str(out),
        "size": out.stat().st_size,
    }
    with unchanged(farm):
        assert "already exists" in error_of(
            admin.post("/api/v1/vdisks/w/export", json={"path": str(out), "format": "raw"}), 409
        )
        error_of(admin.post("/api/v1/vdisks/w/export", json={"path": "", "format": "raw"}), 422)
        error_of(
            admin.post(
                "/api/v1/vdisks/w/export", json={"path": str(tmp_path / "y.vhd"), "format": "vhd"}
            ),
            422,
        )


def affinity_of(farm, name="w"):
    from sqlalchemy import select

    from vdfarm.farm.models import Vdisk

    with farm.session() as session:
        return session.scalar(select(Vdisk.subnet_affinity).where(Vdisk.name == name))


def test_subnet_affinity(admin, populated):
    assert affinity_of(populated) == "none"
    response = admin.patch("/api/v1/vdisks/w", json={"subnet_affinity": "fixed"})
    assert response.status_code == 200, response.text
    assert response.json()["name"] == "w" and affinity_of(populated) == "fixed"
    entry = populated.audit.list(limit=1)[0]
    assert (entry.action, entry.actor, entry.after) == (
        "vdisk.set",
        OTHER_ACTOR,
        {"subnet_affinity": "fixed"},
    )


@pytest.mark.parametrize(
    "name, body, status, says",
    [
        ("w", {"subnet_affinity": "nearby"}, 422, "body field subnet_affinity"),
        ("w", {"subnet_affinity": None}, 422, "body field subnet_affinity"),
        ("w", {"subnet_affinity": "fixed", "mode": "private"}, 422, "cannot also change mode"),
        ("nope", {"subnet_affinity": "fixed"}, 404, "no vDisk named nope"),
    ],
)
def test_subnet_affinity_refusals_change_nothing(admin, populated, name, body, status, says):
    with unchanged(populated):
        assert says in error_of(admin.patch(f"/api/v1/vdisks/{name}", json=body), status)
