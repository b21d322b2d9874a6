"""`vdfarm farm show|set`: the farm's settings from the command line."""

from __future__ import annotations

import pytest


def test_show_and_set(icli):
    assert icli.json("farm", "show") == {
        "heartbeat_timeout_s": 3.0,
        "boot_phase_s": 60.0,
        "rebalance_trigger_pct": 25.0,
        "audit_days": 365,
        "auto_add_vdisk": None,
        "auto_add_limit": 100,
    }
    out = icli.ok("farm", "set", "--heartbeat-timeout", "8", "--rebalance-trigger", "10").stdout
    assert out.startswith("updated the farm's settings\n") and "8 s" in out
    shown = icli.ok("farm", "show").stdout
    assert "heartbeat timeout  8 s" in shown and "rebalance trigger  10 %" in shown
    assert icli.json("farm", "show")["boot_phase_s"] == 60.0
    assert "trigger 10%" in icli.ok("rebalance", "--dry-run").stdout  # its default


@pytest.mark.parametrize(
    "args, code, says",
    [
        ([], 1, "nothing to change"),
        (["--heartbeat-timeout", "0.1"], 1, "invalid heartbeat timeout"),
        (["--boot-phase", "soon"], 2, "--boot-phase"),
        (["--audit-days", "-1"], 1, "invalid audit retention"),
        (["--audit-days", "1.5"], 2, "--audit-days"),
        (["--auto-add-vdisk", "nope"], 1, "no vDisk named nope"),
        (["--auto-add-vdisk", ""], 2, "--no-auto-add turns it off"),
        (["--auto-add-vdisk", "w", "--no-auto-add"], 2, "not both"),
        (["--auto-add-limit", "-3"], 1, "invalid auto-add limit"),
    ],
)
def test_refusals(icli, args, code, says):
    before = icli.json("farm", "show")
    result = icli("farm", "set", *args)
    assert result.exit_code == code
    assert says in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert icli.json("farm", "show") == before


def test_audit_days(icli):
    assert "audit kept         365 days" in icli.ok("farm", "show").stdout
    assert icli.json("farm", "set", "--audit-days", "30")["audit_days"] == 30
    assert icli.json("audit", "list")[-1]["after"]["audit_days"] == 30
    icli.ok("farm", "set", "--audit-days", "0")
    assert "audit kept         forever" in icli.ok("farm", "show").stdout


def test_auto_add_is_off_by_default_set_and_cleared(icli, image):
    assert "auto-add vDisk     off" in icli.ok("farm", "show").stdout
    icli.ok("vdisk", "import", "w", str(image))
    settings = icli.json("farm", "set", "--auto-add-vdisk", "w", "--auto-add-limit", "7")
    assert (settings["auto_add_vdisk"], settings["auto_add_limit"]) == ("w", 7)
    assert "auto-add vDisk     w" in icli.ok("farm", "show").stdout
    assert icli.json("audit", "list")[-1]["after"]["auto_add_vdisk"] == "w"
    assert icli.json("farm", "set", "--no-auto-add")["auto_add_vdisk"] is None
    assert icli.json("farm", "show")["auto_add_limit"] == 7
