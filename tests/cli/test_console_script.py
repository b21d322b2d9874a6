"""The installed `vdfarm` console script, run as a real process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.service.helpers import make_raw
from vdfarm.store import qemu_img

VDFARM = Path(sys.executable).with_name("vdfarm")


def run(*args, env=None):
    clean = {k: v for k, v in os.environ.items() if not k.startswith("VDFARM_")}
    return subprocess.run(
        [str(VDFARM), *map(str, args)], capture_output=True, text=True, env=clean | (env or {})
    )


@pytest.fixture
def data(tmp_path):
    assert VDFARM.is_file(), f"console script missing: {VDFARM}"
    return tmp_path / "data"


def test_the_documented_forms(data, tmp_path):
    source = tmp_path / "src.qcow2"
    qemu_img.convert(
        make_raw(tmp_path / "src.raw", 2 << 20), source, src_format="raw", dst_format="qcow2"
    )
    init = run("--data-dir", data, "init")
    assert init.returncode == 0 and init.stderr == ""
    imported = run("--data-dir", data, "vdisk", "import", "win10", source, "--mode", "standard")
    assert imported.returncode == 0, imported.stderr
    added = run("--data-dir", data, "device", "add", "pc1", "--vdisk", "win10")
    assert added.returncode == 0, added.stderr
    listed = run("--data-dir", data, "--json", "device", "list")
    assert [(d["name"], d["vdisk"]) for d in json.loads(listed.stdout)] == [("pc1", "win10")]
    assert qemu_img.compare(data / "store" / "win10" / "base.raw", source)


def test_errors_are_one_line_with_exit_codes(data):
    uninit = run("--data-dir", data, "vdisk", "list")
    assert uninit.returncode == 1
    assert uninit.stderr == (
        f"vdfarm: error: data directory {data} is not initialised; "
        f"run vdfarm --data-dir {data} init\n"
    )
    assert run("--data-dir", data, "init").returncode == 0
    missing = run("--data-dir", data, "vdisk", "show", "nope")
    assert (missing.returncode, missing.stderr) == (1, "vdfarm: error: no vDisk named nope\n")
    usage = run("--data-dir", data, "vdisk", "import", "x")
    assert usage.returncode == 2
    assert usage.stderr == "vdfarm: error: Missing argument 'FILE'.\n"
    assert usage.stdout == ""


def test_data_dir_from_environment(data):
    assert run("init", env={"VDFARM_DATA_DIR": str(data)}).returncode == 0
    listed = run("--json", "vdisk", "list", env={"VDFARM_DATA_DIR": str(data)})
    assert (listed.returncode, json.loads(listed.stdout)) == (0, [])
