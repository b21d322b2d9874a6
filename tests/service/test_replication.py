"""Replication in the farm database: what each server should hold
(`work_for`), what it reports doing (`report`, `clear`), the status every
front end shows, and `start --now` — three servers on one database, SQLite
and PostgreSQL."""

from __future__ import annotations

import pytest
from sqlalchemy import update

from tests.service.helpers import dump_db, make_raw, new_sealed_version
from tests.service.multi import beat, copy_vdisk, database_url, servers, vdisk_id
from vdfarm.farm.models import StoreVersion, Vdisk
from vdfarm.farm.windows import parse_windows
from vdfarm.service.errors import Conflict, Invalid, NotFound
from vdfarm.service.intents import SEAL, drop_intent, record_intent
from vdfarm.service.replica_status import progress_of


@pytest.fixture(params=["sqlite", "postgresql"])
def trio(request, tmp_path, clock):
    """Servers a, b, c on one database, each with a REST API (a's speaks
    HTTPS); vDisk w (with a maintenance device pm) imported on a and copied
    to b; all have just beaten."""
    with (
        database_url(request.param, tmp_path) as url,
        servers(tmp_path, url, ["a", "b", "c"], clock) as farms,
    ):
        a = farms["a"]
        a.vdisks.import_image("w", make_raw(tmp_path / "w.raw", size=4 << 20))
        a.devices.add("pm", vdisk="w", device_type="maintenance")
        copy_vdisk(a, farms["b"])
        for port, (name, farm) in enumerate(farms.items()):
            farm.servers.register(10809 + port, 8080 + port, f"{name}.lan", api_tls=name == "a")
        beat(*farms.values())
        yield farms


def server_id(farm, name):
    return {s.name: s.id for s in farm.servers.list()}[name]


def wanted(farm, server=None, vdisk="w"):
    """(the WantedVdisk VDISK of SERVER's work, or None; the work), asked
    through FARM (SERVER: a name; default FARM's own server)."""
    work = farm.replication.work_for(farm.server_id if server is None else server_id(farm, server))
    return {v.name: v for v in work.vdisks}.get(vdisk), work


def states(farm, vdisk="w", version=None):
    return {
        (s.version, s.server): (s.state, s.pending) for s in farm.replication.status(vdisk, version)
    }


def test_work_for_lists_the_sealed_chain_and_the_peers_that_hold_it(trio, clock):
    a, b, c = trio["a"], trio["b"], trio["c"]
    new_sealed_version(a, "0x11", to="test")
    a.versions.new("w")  # an open maintenance version: never replicated
    beat(a, b, c)
    vdisk, work = wanted(c)
    assert work.server_id == c.server_id and work.all_vdisk_names == {"w"}
    assert (vdisk.vdisk_id, vdisk.virtual_size) == (vdisk_id(a), 4 << 20)
    rows = {r.number: r for r in a.versions.list("w")}
    assert [(f.version, f.file_name, f.format, f.parent_file) for f in vdisk.chain] == [
        (0, "base.raw", "raw", None),
        (1, rows[1].file, "qcow2", "base.raw"),
    ]
    assert [(f.size, f.sha256) for f in vdisk.chain] == [
        (rows[0].size, rows[0].sha256),
        (rows[1].size, rows[1].sha256),
    ]
    assert [p.name for p in vdisk.peers[0]] == ["a", "b"]  # least busy first, then by name
    [peer] = vdisk.peers[1]  # only a holds version 1
    assert (peer.name, peer.host, peer.api_port, peer.api_tls, peer.busy) == (
        "a",
        "a.lan",
        8080,
        True,
        0,
    )
    assert (vdisk.now_versions, vdisk.max_rate_bps, vdisk.windows) == (frozenset(), None, ())
    assert [p.name for p in wanted(a)[0].peers[0]] == ["b"]  # never itself


def test_peers_least_busy_first_up_only_with_the_right_hash(trio, clock):
    a, c = trio["a"], trio["c"]
    a.devices.add("pc1", vdisk="w")
    a.sessions.started(a.exports.resolve("pc1").device_id, vdisk_id(a), 0)
    assert [(p.name, p.busy) for p in wanted(c)[0].peers[0]] == [("b", 0), ("a", 1)]
    with a.session() as session:  # a's inventory lists another hash: not a peer
        session.execute(
            update(StoreVersion)
            .where(StoreVersion.server_id == a.server_id)
            .values(sha256="0" * 64)
        )
    assert [p.name for p in wanted(c)[0].peers[0]] == ["b"]
    clock.advance(5)
    beat(a, c)  # b's heartbeat is old now: down; a's inventory is right again
    assert [p.name for p in wanted(c)[0].peers[0]] == ["a"]


def test_a_server_without_a_rest_api_is_no_peer(trio):
    trio["b"].servers.register(10810, None, "b.lan")
    assert [p.name for p in wanted(trio["c"])[0].peers[0]] == ["a"]


def test_store_sets_decide_who_holds_what_and_carry_cap_and_windows(trio, tmp_path):
    a, c = trio["a"], trio["c"]
    a.replication.add_store("lab", servers=["a", "b"], max_rate="20MB/s", windows=["22:00-06:00"])
    a.vdisks.import_image("x", make_raw(tmp_path / "x.raw"), store="lab")
    vdisk, work = wanted(c)
    assert work.all_vdisk_names == {"w", "x"}
    assert [v.name for v in work.vdisks] == ["w"]  # c is not in lab
    lab = wanted(a, "b", "x")[0]
    assert (lab.max_rate_bps, lab.windows) == (20_000_000, parse_windows(["22:00-06:00"]))
    a.replication.set_store("default", servers=["a"])
    assert wanted(c)[1].vdisks == ()
    a.replication.set_store("default", servers=["all"])
    assert [v.name for v in wanted(c)[1].vdisks] == ["w"]


def test_status_present_missing_and_pending(trio):
    a, c = trio["a"], trio["c"]
    assert states(a) == {
        (0, "a"): ("present", True),
        (0, "b"): ("present", True),
        (0, "c"): ("missing", True),
    }
    copy_vdisk(a, c)
    beat(c)
    assert {st for st, _ in states(a).values()} == {"present"}
    assert not any(pending for _, pending in states(a).values())
    new_sealed_version(a, "0x22", to="test")
    beat(a)
    assert states(a, "w", 1) == {
        (1, "a"): ("present", True),
        (1, "b"): ("missing", True),
        (1, "c"): ("missing", True),
    }


def test_reports_copying_queued_failed_mismatch_and_clear(trio):
    a, b, c = trio["a"], trio["b"], trio["c"]
    new_sealed_version(a, "0x33", to="test")
    beat(a)
    vid = vdisk_id(a)
    size = a.versions.list("w")[1].size
    c.replication.report(
        c.server_id,
        vid,
        1,
        "v1.qcow2",
        "copying",
        bytes_done=size // 4,
        bytes_total=size,
        rate_bps=size / 8,
        peer_server_id=a.server_id,
    )
    b.replication.report(b.server_id, vid, 1, "v1.qcow2", "queued", reason="window closed")
    rows = {s.server: s for s in a.replication.status("w", 1)}
    copying = rows["c"]
    assert (copying.state, copying.bytes_done, copying.bytes_total, copying.peer) == (
        "copying",
        size // 4,
        size,
        "a",
    )
    assert copying.rate_bps == size / 8 and copying.eta_s == pytest.approx(6.0)
    assert (rows["b"].state, rows["b"].reason, rows["b"].eta_s) == ("queued", "window closed", None)
    progress = progress_of(a.replication.status("w", 1), "w", 1)
    assert (progress.replicated, progress.bytes_done, progress.bytes_total) == (
        False,
        size + size // 4,
        3 * size,
    )
    c.replication.report(c.server_id, vid, 1, "v1.qcow2", "failed", reason="disk full")
    b.replication.report(b.server_id, vid, 1, "v1.qcow2", "mismatch", reason="sha256 differs")
    assert states(a, "w", 1) == {
        (1, "a"): ("present", True),
        (1, "b"): ("mismatch", True),
        (1, "c"): ("failed", True),
    }
    copy_vdisk(a, b)
    copy_vdisk(a, c)
    beat(b, c)  # present wins over a row left behind
    assert {st for st, _ in states(a, "w", 1).values()} == {"present"}
    assert a.replication.progress("w", 1).replicated
    c.replication.clear(c.server_id, vid, 1)
    b.replication.clear(b.server_id, vid, 1)
    assert states(a, "w", 1)[(1, "c")] == ("present", False)


def test_a_down_server_is_shown_down_and_not_waited_for(trio, clock):
    a, b = trio["a"], trio["b"]
    clock.advance(5)
    beat(a, b)  # c is down
    rows = {s.server: s for s in a.replication.status("w")}
    assert (rows["c"].state, rows["c"].reason) == ("server down", "no heartbeat for 5 s")
    assert not rows["a"].pending  # every UP server holds it
    clock.advance(5)
    beat(a)  # b holds it but is down too
    assert states(a)[(0, "b")] == ("server down", False)
    clock.advance(5)  # nobody up: not replicated
    assert states(a)[(0, "a")] == ("server down", True)


def test_report_refuses_bad_values_and_changes_nothing(trio):
    c = trio["c"]
    vid = vdisk_id(trio["a"])
    before = dump_db(c.engine)
    for kwargs, error in [
        ({"state": "done"}, Invalid),
        ({"state": "copying", "bytes_done": -1}, Invalid),
        ({"state": "copying", "rate_bps": float("nan")}, Invalid),
        ({"state": "copying", "file_name": ""}, Invalid),
        ({"state": "copying", "peer_server_id": 9999}, Conflict),
    ]:
        args = {"file_name": "base.raw", **kwargs}
        with pytest.raises(error):
            c.replication.report(c.server_id, vid, 0, **args)
    with pytest.raises(Conflict):
        c.replication.report(c.server_id, 9999, 0, "base.raw", "queued")
    assert dump_db(c.engine) == before
    c.replication.report(c.server_id, vid, 0, "base.raw", "queued", reason="x" * 5000)
    assert len(c.replication.status("w", 0)[2].reason) == 1000


def test_status_refuses_unknown_and_open_versions(trio):
    a = trio["a"]
    a.versions.new("w")
    with pytest.raises(NotFound, match="no vDisk named nope"):
        a.replication.status("nope")
    with pytest.raises(NotFound, match="vDisk w has no version 7"):
        a.replication.status("w", 7)
    with pytest.raises(Invalid, match="open for maintenance"):
        a.replication.status("w", 1)
    with pytest.raises(Invalid, match="give the vDisk"):
        a.replication.status(None, 0)
    assert [s.version for s in a.replication.status()] == [0, 0, 0]


def test_start_now_marks_the_newest_sealed_version(trio, clock):
    a, c = trio["a"], trio["c"]
    new_sealed_version(a, "0x44", to="test")
    a.versions.new("w")
    started = a.replication.start_now("w")
    assert (started.vdisk, started.version, started.at) == ("w", 1, clock.now)
    assert wanted(c)[0].now_versions == {1}
    assert a.replication.start_now("w", 0).version == 0
    assert wanted(c)[0].now_versions == {0, 1}
    entry = a.audit.list(limit=1)[0]
    assert (entry.action, entry.target_name, entry.actor) == (
        "replication.start",
        "w v0",
        "test:me",
    )
    before = dump_db(a.engine)
    with pytest.raises(NotFound, match="no version 9"):
        a.replication.start_now("w", 9)
    with pytest.raises(Invalid, match="open for maintenance"):
        a.replication.start_now("w", 2)
    with pytest.raises(NotFound, match="no vDisk named nope"):
        a.replication.start_now("nope")
    assert dump_db(a.engine) == before


def test_a_deleted_vdisk_leaves_the_work_and_its_rows(trio, tmp_path):
    a, c = trio["a"], trio["c"]
    a.vdisks.import_image("x", make_raw(tmp_path / "x.raw"))
    c.replication.report(c.server_id, vdisk_id(a, "x"), 0, "base.raw", "queued", reason="r")
    a.vdisks.delete("x")
    vdisk, work = wanted(c)
    assert work.all_vdisk_names == {"w"} and [v.name for v in work.vdisks] == ["w"]
    assert {s.vdisk for s in a.replication.status()} == {"w"}


def test_a_vdisk_being_merged_or_sealed_leaves_the_work_until_the_step_is_done(trio):
    """A seal or merge writes its store first and the database after (under
    an intent): a replication round must not rewrite that manifest from
    the older chain in between."""
    a, c = trio["a"], trio["c"]
    with a.session() as session:
        row = session.get(Vdisk, vdisk_id(a))
        intent = record_intent(session, row, a.server_id, SEAL, {"file": "v1.qcow2"}, a.now())
        intent_id = intent.id
    assert wanted(c)[0] is None and wanted(a)[0] is None
    assert wanted(c)[1].all_vdisk_names == {"w"}  # still known: never an orphan
    with a.session() as session:
        drop_intent(session, vdisk_id(a), intent_id)
    assert wanted(c)[0] is not None


def test_boot_files_are_wanted_with_their_versions_from_the_servers_that_hold_them(trio, tmp_path):
    a, b, c = trio["a"], trio["b"], trio["c"]
    kernel, initrd = tmp_path / "vmlinuz", tmp_path / "initrd"
    kernel.write_bytes(b"k" * 5000)
    initrd.write_bytes(b"i" * 7000)
    boot = a.boot.attach("w", kernel=kernel, initrd=initrd, cmdline="quiet").boot
    a.versions.new("w")  # open: its boot files are the same; not replicated anyway
    beat(a, b, c)
    vdisk, _ = wanted(c)
    assert [(f.kind, f.file_name, f.size, f.sha256, f.version) for f in vdisk.boot_files] == [
        ("kernel", boot.kernel.file, 5000, boot.kernel.sha256, 0),
        ("initrd", boot.initrd.file, 7000, boot.initrd.sha256, 0),
    ]
    assert [p.name for p in vdisk.peers_of(vdisk.boot_files[0])] == ["a"]  # b lacks them
    assert [p.name for p in vdisk.peers_of(vdisk.chain[0])] == ["a", "b"]
    # the sending side gives a boot file some version boots, held here
    held = a.replica_source.held_file("w", boot.kernel.file)
    assert (held.size, held.sha256) == (5000, boot.kernel.sha256)
    with pytest.raises(NotFound):
        trio["b"].replica_source.held_file("w", boot.kernel.file)  # not in b's store
    with pytest.raises(NotFound):
        a.replica_source.held_file("w", "kernel-" + "0" * 64)  # no version boots it
    copy_vdisk(a, b)
    beat(b)
    vdisk, _ = wanted(c)
    assert [p.name for p in vdisk.peers_of(vdisk.boot_files[1])] == ["a", "b"]
