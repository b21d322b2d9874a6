"""Bad input for every verb: one error line, non-zero exit, nothing changed."""

from __future__ import annotations

import shutil

import pytest

from tests.cli.conftest import Cli, assert_one_line_error
from tests.service.helpers import make_raw
from vdfarm.store import qemu_img

SERVICE, USAGE = 1, 2

BAD_INPUT = [
    # vdisk import
    (["vdisk", "import", "bad/name", "{image}"], SERVICE, "invalid vDisk name 'bad/name'"),
    (["vdisk", "import", "n", "{tmp}/missing.raw"], SERVICE, "does not exist"),
    (["vdisk", "import", "n", "{tmp}"], USAGE, "is a directory"),
    (["vdisk", "import", "w", "{image}"], SERVICE, "vDisk w already exists"),
    (["vdisk", "import", "n", "{image}", "--mode", "shared"], USAGE, "'shared' is not one of"),
    (["vdisk", "import", "n", "{image}", "--write-cache", "x"], USAGE, "--write-cache"),
    (["vdisk", "import", "n", "{image}", "--cache-limit-mb", "0"], USAGE, "--cache-limit-mb"),
    (["vdisk", "import", "n", "{vdi}"], SERVICE, "unsupported format 'vdi'"),
    (["vdisk", "import", "n", "{text}"], SERVICE, "not a disk image"),
    (["vdisk", "import", "n"], USAGE, "Missing argument 'FILE'"),
    (["vdisk", "import", "n", "{image}", "extra"], USAGE, "unexpected extra argument"),
    (["vdisk", "import", "n", "{image}", "--bogus"], USAGE, "No such option"),
    # vdisk list / show / set / delete / verify
    (["vdisk", "list", "extra"], USAGE, "unexpected extra argument"),
    (["vdisk", "show", "nope"], SERVICE, "no vDisk named nope"),
    (["vdisk", "show"], USAGE, "Missing argument 'NAME'"),
    (["vdisk", "set", "nope", "--mode", "private"], SERVICE, "no vDisk named nope"),
    (["vdisk", "set", "w"], SERVICE, "nothing to change"),
    (["vdisk", "set", "w", "--mode", "x"], USAGE, "--mode"),
    (["vdisk", "set", "w", "--cache-limit-mb", "-1"], USAGE, "--cache-limit-mb"),
    (["vdisk", "set", "w", "--description", "x" * 2000], SERVICE, "longer than 1024"),
    (["vdisk", "delete", "nope"], SERVICE, "no vDisk named nope"),
    (["vdisk", "delete", "w"], SERVICE, "assigned to device(s) pc1"),
    (["vdisk", "verify", "nope"], SERVICE, "no vDisk named nope"),
    (["vdisk", "frobnicate"], USAGE, "No such command 'frobnicate'"),
    # device add / list / show / assign / set / delete
    (["device", "add", "bad name"], SERVICE, "invalid device name"),
    (["device", "add", "pc1"], SERVICE, "device pc1 already exists"),
    (["device", "add", "pc3", "--mac", "12:34"], SERVICE, "invalid MAC address '12:34'"),
    (["device", "add", "pc3", "--mac", "AA-BB-CC-DD-EE-01"], SERVICE, "already used by device pc1"),
    (["device", "add", "pc3", "--vdisk", "nope"], SERVICE, "no vDisk named nope"),
    (["device", "add", "pc3", "--type", "lab"], USAGE, "'lab' is not one of"),
    (["device", "list", "x"], USAGE, "unexpected extra argument"),
    (["device", "show", "ghost"], SERVICE, "no device named ghost"),
    (["device", "assign", "ghost", "w"], SERVICE, "no device named ghost"),
    (["device", "assign", "pc2", "nope"], SERVICE, "no vDisk named nope"),
    (["device", "assign", "pc2"], USAGE, "give either a VDISK or --none"),
    (["device", "set", "ghost", "--type", "test"], SERVICE, "no device named ghost"),
    (["device", "set", "pc2"], SERVICE, "nothing to change"),
    (["device", "set", "pc2", "--mac", "xx"], SERVICE, "invalid MAC address"),
    (["device", "set", "pc2", "--mac", "aabbccddee01"], SERVICE, "already used by device pc1"),
    (["device", "set", "pc2", "--mac", "aabbccddee09", "--no-mac"], USAGE, "not both"),
    (["device", "set", "pc2", "--type", "lab"], USAGE, "--type"),
    (["device", "delete", "ghost"], SERVICE, "no device named ghost"),
    # lock, audit, server, image, init, unknown
    (["lock", "list", "x"], USAGE, "unexpected extra argument"),
    (["lock", "release", "nope"], SERVICE, "no vDisk named nope"),
    (["lock", "release"], USAGE, "Missing argument 'VDISK'"),
    (["audit", "list", "--since", "yesterday"], USAGE, "not an ISO 8601 time"),
    (["audit", "list", "--limit", "0"], USAGE, "--limit"),
    (["server", "run", "--nbd-port", "70000"], USAGE, "--nbd-port"),
    (["server", "run", "--grace", "-1"], USAGE, "--grace"),
    (["image", "sample", "{tmp}/x.raw", "--size-mib", "big"], USAGE, "--size-mib"),
    (["image", "sample", "{tmp}/x.raw", "--size-mib", "1"], SERVICE, "size_mib must be in"),
    (["init", "--name", "other"], SERVICE, "already initialised as server srv1"),
    (["init", "--name", "bad name"], SERVICE, "already initialised as server srv1"),
    (["frobnicate"], USAGE, "No such command 'frobnicate'"),
    (["--bogus", "vdisk", "list"], USAGE, "No such option"),
]


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """One populated data dir (+ source files), built once and copied per test."""
    base = tmp_path_factory.mktemp("template")
    cli = Cli(base / "data")
    image = make_raw(base / "disk.raw")
    cli.ok("init", "--name", "srv1")
    cli.ok("vdisk", "import", "w", str(image))
    cli.ok("vdisk", "import", "spare", str(image))
    cli.ok("device", "add", "pc1", "--vdisk", "w", "--mac", "aa:bb:cc:dd:ee:01")
    cli.ok("device", "add", "pc2")
    qemu_img.create(base / "x.vdi", "vdi", 1 << 20)
    (base / "notes.txt").write_text("not a disk\n")
    return base


@pytest.fixture
def populated(template, tmp_path):
    shutil.copytree(template, tmp_path, dirs_exist_ok=True)
    return Cli(tmp_path / "data"), {
        "image": str(tmp_path / "disk.raw"),
        "tmp": str(tmp_path),
        "vdi": str(tmp_path / "x.vdi"),
        "text": str(tmp_path / "notes.txt"),
    }


@pytest.mark.parametrize("args, code, message", BAD_INPUT, ids=lambda v: str(v)[:60])
def test_bad_input_changes_nothing(populated, args, code, message):
    cli, paths = populated
    argv = [a.format(**paths) for a in args]
    before = cli.dump()
    assert [v["name"] for v in cli.json("vdisk", "list")] == ["spare", "w"]
    result = cli(*argv)
    assert_one_line_error(result, code, message)
    assert cli.dump() == before
