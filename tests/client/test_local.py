"""LocalFarm: the client interface over an open Farm — the nouns are the
Farm's services, the module-function services are methods, the actor is the
Farm's."""

from __future__ import annotations

import pytest

from vdfarm.client.local import LocalFarm
from vdfarm.service.errors import Invalid, NotFound


def test_nouns_are_the_farms_services(farm):
    local = LocalFarm(farm)
    for noun in ("vdisks", "versions", "devices", "failovers", "locks", "audit", "servers"):
        assert getattr(local, noun) is getattr(farm, noun)


def test_subnet_affinity_answers_the_vdisk_and_audits(populated):
    info = LocalFarm(populated).set_subnet_affinity("w", "fixed")
    assert info == populated.vdisks.show("w")
    entry = populated.audit.list(limit=1)[0]
    assert (entry.action, entry.actor, entry.after) == (
        "vdisk.set",
        "test:me",
        {"subnet_affinity": "fixed"},
    )
    with pytest.raises(Invalid, match="nearby"):
        LocalFarm(populated).set_subnet_affinity("w", "nearby")
    with pytest.raises(NotFound):
        LocalFarm(populated).set_subnet_affinity("nope", "fixed")


def test_rebalance_and_login(populated):
    local = LocalFarm(populated)
    result = local.rebalance(apply=True, trigger_pct=30, auto=False)
    assert (result.applied, result.trigger_pct, result.moves) == (True, 30.0, ())
    populated.servers.register(10809)
    assert local.login("aa:bb:cc:00:00:01").device == "pc1"
