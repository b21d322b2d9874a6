"""Store sets: add, change, list; vDisks choose theirs at import and move
with `vdisk set --store`; every refusal changes nothing; audited."""

from __future__ import annotations

import pytest

from tests.service.helpers import dump, make_raw
from vdfarm.service.context import Farm
from vdfarm.service.errors import Conflict, Invalid, NotFound


@pytest.fixture
def two(farm, tmp_path, clock):
    """This farm's server and a second one, zz, on the same database."""
    with Farm.init(tmp_path / "zz", farm.db_url, server_name="zz", clock=clock) as other:
        yield farm, other


def sets(farm):
    return {s.name: s for s in farm.replication.store_sets()}


def test_default_holds_every_vdisk_on_every_server(farm, raw_image):
    farm.vdisks.import_image("w", raw_image)
    [default] = farm.replication.store_sets()
    assert (default.name, default.servers, default.max_rate_bps, default.windows) == (
        "default",
        (),
        None,
        (),
    )
    assert default.vdisks == ("w",) and farm.vdisks.show("w").store == "default"


def test_add_and_change_a_store(two, raw_image):
    farm, other = two
    me = farm.server_name
    info = farm.replication.add_store(
        "lab", servers=[f"zz,{me}"], max_rate="50MB/s", windows=["22:00-06:00", "12:00-13:00"]
    )
    assert (info.name, info.servers, info.max_rate_bps, info.windows, info.vdisks) == (
        "lab",
        tuple(sorted([me, "zz"])),
        50_000_000,
        ("22:00-06:00", "12:00-13:00"),
        (),
    )
    farm.vdisks.import_image("w", raw_image, store="lab")
    assert sets(other)["lab"].vdisks == ("w",)
    changed = farm.replication.set_store("lab", servers=["zz"], max_rate="none", windows=[])
    assert (changed.servers, changed.max_rate_bps, changed.windows) == (("zz",), None, ())
    assert farm.replication.set_store("lab", servers=["all"]).servers == ()
    assert farm.replication.set_store("lab", max_rate=1000).max_rate_bps == 1000
    entries = [e for e in farm.audit.list() if e.target_type == "store"]
    assert [e.action for e in entries] == ["store.add", "store.set", "store.set", "store.set"]
    assert entries[1].before["servers"] == sorted([me, "zz"]) and entries[1].after["servers"] == [
        "zz"
    ]


def test_vdisks_move_between_stores(farm, raw_image):
    farm.vdisks.import_image("w", raw_image)
    farm.replication.add_store("lab")
    assert farm.vdisks.set("w", store="lab").store == "lab"
    assert sets(farm)["lab"].vdisks == ("w",) and sets(farm)["default"].vdisks == ()
    info = farm.vdisks.set("w", store="default", description="back")
    assert (info.store, info.description) == ("default", "back")
    entry = farm.audit.list(limit=1)[0]
    assert (entry.action, entry.before["store"], entry.after["store"]) == (
        "vdisk.set",
        "lab",
        "default",
    )


@pytest.mark.parametrize(
    ("call", "error", "says"),
    [
        (lambda f: f.replication.add_store("bad name"), Invalid, "invalid store name"),
        (lambda f: f.replication.add_store("default"), Conflict, "store default already exists"),
        (lambda f: f.replication.add_store("x", servers=["ghost"]), NotFound, "no server named"),
        (lambda f: f.replication.add_store("x", servers=["all", "zz"]), Invalid, "not both"),
        (lambda f: f.replication.add_store("x", max_rate="fast"), Invalid, "invalid rate 'fast'"),
        (
            lambda f: f.replication.add_store("x", windows=["25:00-06:00"]),
            Invalid,
            "invalid window '25:00-06:00': hour must be 00-23",
        ),
        (lambda f: f.replication.set_store("nope", max_rate="1MB"), NotFound, "no store named"),
        (lambda f: f.replication.set_store("default"), Invalid, "nothing to change"),
        (lambda f: f.replication.set_store("default", servers=["ghost"]), NotFound, "ghost"),
        (lambda f: f.replication.set_store("default", max_rate="0.1"), Invalid, "invalid rate"),
        (lambda f: f.vdisks.set("w", store="nope"), NotFound, "no store named nope"),
        (lambda f: f.vdisks.set("w", store="lab", mode="x"), Invalid, "invalid mode"),
    ],
)
def test_refusals_change_nothing(two, raw_image, call, error, says):
    farm, _ = two
    farm.vdisks.import_image("w", raw_image)
    farm.replication.add_store("lab", servers=["zz"])
    before = dump(farm)
    with pytest.raises(error) as caught:
        call(farm)
    assert says in str(caught.value) and "\n" not in str(caught.value)
    assert dump(farm) == before


def test_import_into_an_unknown_store_writes_nothing(farm, tmp_path):
    before = dump(farm)
    with pytest.raises(NotFound, match="no store named lab"):
        farm.vdisks.import_image("w", make_raw(tmp_path / "w.raw"), store="lab")
    assert dump(farm) == before
