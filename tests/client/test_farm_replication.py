"""FarmClient's replication noun and the store/when-replicated arguments
through the real app: the same records as the local farm, changes made by
the API actor, refusals as the service's errors."""

from __future__ import annotations

import pytest

from tests.api.conftest import OTHER_ACTOR, unchanged
from vdfarm.service.errors import Invalid, NotFound


def last(farm):
    entry = farm.audit.list(limit=1)[0]
    return entry.action, entry.actor


def test_status_and_progress_answer_the_local_records(client, local, populated, clock):
    populated.servers.heartbeat()
    populated.versions.new("w")
    populated.versions.promote("w", "test")
    populated.servers.heartbeat()
    populated.replication.report(
        populated.server_id, populated.vdisks.show("w").id, 1, "v1.qcow2", "queued", reason="r"
    )
    for call in (
        lambda f: f.replication.status(),
        lambda f: f.replication.status("w"),
        lambda f: f.replication.status("w", 1),
        lambda f: f.replication.progress("w", 1),
        lambda f: f.replication.store_sets(),
    ):
        assert call(client) == call(local)
    assert client.replication.progress("w", 1).replicated


def test_store_sets_start_and_promote(client, farm, populated):
    info = client.replication.add_store("lab", ["all"], "20MB/s", ["22:00-06:00"])
    assert info == local_sets(farm)["lab"] and info.max_rate_bps == 20_000_000
    assert last(farm) == ("store.add", OTHER_ACTOR)
    changed = client.replication.set_store("lab", max_rate="none", windows=[])
    assert (changed.max_rate_bps, changed.windows) == (None, ())
    assert client.replication.set_store("lab", servers=[farm.server_name]).servers == (
        farm.server_name,
    )
    assert client.vdisks.set("w", store="lab").store == "lab"
    started = client.replication.start_now("w")
    assert (started.vdisk, started.version) == ("w", 0)
    assert last(farm) == ("replication.start", OTHER_ACTOR)
    client.versions.new("w")
    promoted = client.versions.promote("w", "production", when_replicated=True)
    assert (promoted.version.access, promoted.version.when_replicated) == ("test", "production")


def local_sets(farm):
    return {s.name: s for s in farm.replication.store_sets()}


@pytest.mark.parametrize(
    ("call", "error", "says"),
    [
        (lambda c: c.replication.status("nope"), NotFound, "no vDisk named nope"),
        (lambda c: c.replication.status("w", 4), NotFound, "vDisk w has no version 4"),
        (lambda c: c.replication.start_now("w", 4), NotFound, "no version 4"),
        (lambda c: c.replication.add_store("x", max_rate="fast"), Invalid, "invalid rate"),
        (lambda c: c.replication.add_store("x", windows=["25:00-06:00"]), Invalid, "hour"),
        (lambda c: c.replication.add_store("x", ["ghost"]), NotFound, "no server named ghost"),
        (lambda c: c.replication.set_store("nope", max_rate="1M"), NotFound, "no store named"),
        (lambda c: c.vdisks.set("w", store="nope"), NotFound, "no store named nope"),
    ],
)
def test_refusals(client, farm, populated, call, error, says):
    with unchanged(farm), pytest.raises(error) as caught:
        call(client)
    assert says in str(caught.value)
