"""GET /api/v1/stores: which versions each server's store holds verified."""

from __future__ import annotations

from tests.api.conftest import error_of
from tests.service.multi import copy_vdisk
from vdfarm.service.context import Farm


def test_every_server_and_what_it_holds(local, farm, tmp_path, clock, raw_image):
    assert local.get("/api/v1/stores").json() == [{"server": farm.server_name, "versions": []}]
    farm.vdisks.import_image("w", raw_image)
    farm.vdisks.import_image("a", raw_image)
    farm.versions.new("w")
    with Farm.init(tmp_path / "zz", farm.db_url, server_name="zz", clock=clock) as other:
        copy_vdisk(farm, other, "a")
        other.servers.record_inventory()
    farm.servers.record_inventory()
    assert local.get("/api/v1/stores").json() == [
        {
            "server": farm.server_name,
            "versions": [
                {"vdisk": "a", "version": 0},
                {"vdisk": "w", "version": 0},
                {"vdisk": "w", "version": 1},
            ],
        },
        {"server": "zz", "versions": [{"vdisk": "a", "version": 0}]},
    ]


def test_reads_from_another_host_need_the_token(remote, admin):
    error_of(remote.get("/api/v1/stores"), 401)
    assert admin.get("/api/v1/stores").status_code == 200
