"""`vdfarm vdisk repair NAME`: finishes a merge cut short, says what it did
(text and --json), one-line errors for a bad name."""

from __future__ import annotations

import pytest

from tests.cli.conftest import assert_one_line_error
from tests.service.helpers import new_sealed_version
from vdfarm.service import merges as merges_module
from vdfarm.service.context import Farm
from vdfarm.service.errors import Unavailable


def cut_merge(data_dir, monkeypatch):
    farm = Farm.open(data_dir)
    try:
        farm.devices.add("pp", vdisk="w")
        farm.devices.add("pm", vdisk="w", device_type="maintenance")
        for pattern in (0x11, 0x22):
            new_sealed_version(farm, pattern)

        def db_down(*_args, **_kwargs):
            raise Unavailable("farm database error: disk I/O error")

        with monkeypatch.context() as patch:
            patch.setattr(merges_module, "apply_merge", db_down)
            with pytest.raises(Unavailable):
                farm.versions.merge("w")
    finally:
        farm.close()


def test_repair(icli, image, monkeypatch):
    icli.ok("vdisk", "import", "w", str(image))
    cut_merge(icli.data_dir, monkeypatch)
    assert_one_line_error(icli("version", "merge", "w"), 1, "vdfarm vdisk repair w")
    assert icli.ok("vdisk", "repair", "w").stdout == "vDisk w: the half-done merge was completed\n"
    assert icli.ok("vdisk", "verify", "w").stdout == "vDisk w is intact\n"
    assert icli.json("vdisk", "repair", "w") == {
        "vdisk": "w",
        "step": None,
        "outcome": "nothing to repair",
        "notes": [],
    }


def test_repair_refusals(icli):
    before = icli.dump()
    assert_one_line_error(icli("vdisk", "repair", "nope"), 1, "no vDisk named nope")
    assert icli.dump() == before
