"""Farm settings: defaults, changes (validated, audited, all or nothing), the
per-process cache and its behaviour while the database is away."""

from __future__ import annotations

import pytest

from tests.service.helpers import dump
from tests.service.multi import duo_fixture  # noqa: F401 (fixture)
from vdfarm.service import settings as settings_module
from vdfarm.service.audit import AuditWriter
from vdfarm.service.errors import Invalid, Unavailable
from vdfarm.service.settings import Settings, SettingsService


def test_defaults_then_a_change_is_audited(farm):
    assert farm.settings.show() == Settings(3.0, 60.0, 25.0)
    changed = farm.settings.change(heartbeat_timeout_s=8, rebalance_trigger_pct=10)
    assert changed == Settings(8.0, 60.0, 10.0) == farm.settings.show()
    [entry] = [e for e in farm.audit.list() if e.action == "farm.set"]
    assert (entry.actor, entry.target_name) == ("test:me", "settings")
    assert entry.before["heartbeat_timeout_s"] == 3.0 and entry.after["heartbeat_timeout_s"] == 8.0


@pytest.mark.parametrize(
    "changes, text",
    [
        ({}, "nothing to change"),
        ({"heartbeat_timeout_s": 0.5}, "invalid heartbeat timeout"),
        ({"heartbeat_timeout_s": float("nan")}, "invalid heartbeat timeout"),
        ({"boot_phase_s": -1}, "invalid boot phase"),
        ({"rebalance_trigger_pct": True}, "invalid rebalance trigger"),
        ({"boot_phase_s": 30, "rebalance_trigger_pct": 5000}, "invalid rebalance trigger"),
    ],
)
def test_bad_values_change_nothing(farm, changes, text):
    before = dump(farm)
    with pytest.raises(Invalid, match=text):
        farm.settings.change(**changes)
    assert dump(farm) == before


def test_other_servers_see_a_change_once_their_cache_expires(duo, monkeypatch):
    a, b = duo["a"], duo["b"]
    now = [1000.0]
    monkeypatch.setattr(settings_module.time, "monotonic", lambda: now[0])
    assert b.settings.current().heartbeat_timeout_s == 3.0
    a.settings.change(heartbeat_timeout_s=8)
    assert a.settings.current().heartbeat_timeout_s == 8.0  # the changer knows at once
    assert b.settings.current().heartbeat_timeout_s == 3.0  # cached
    now[0] += settings_module.CACHE_SECONDS
    assert b.settings.current().heartbeat_timeout_s == 8.0
    assert b.servers.timeout().total_seconds() == 8.0


def test_the_last_value_stands_while_the_database_is_away(farm, monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(settings_module.time, "monotonic", lambda: now[0])
    database = {"up": True}

    def session():
        if not database["up"]:
            raise Unavailable("farm database error: connection refused")
        return farm.session()

    settings = SettingsService(session, AuditWriter(farm.clock, farm.actor))
    settings.change(boot_phase_s=120)
    now[0] += 60
    database["up"] = False
    assert settings.current().boot_phase_s == 120.0
    with pytest.raises(Unavailable):
        settings.show()
