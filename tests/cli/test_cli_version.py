"""`vdfarm version …`, `vdfarm vdisk export`, `--max-versions`, `device set --type`:
every verb through the command line, real qemu-img files after each step, and
bad input that prints one line and changes nothing."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.cli.conftest import Cli, assert_one_line_error
from tests.service.helpers import assert_qemu_clean, make_raw, qemu_io_write
from vdfarm.service.context import Farm
from vdfarm.store import qemu_img

SERVICE, USAGE = 1, 2


def open_file(cli, vdisk="w"):
    """Path of VDISK's open (maintenance) version file."""
    [top] = [v for v in cli.json("version", "list", vdisk) if v["access"] == "maintenance"]
    return cli.data_dir / "store" / vdisk / top["file"]


def new_written(cli, pattern, vdisk="w"):
    cli.ok("version", "new", vdisk)
    qemu_io_write(open_file(cli, vdisk), pattern, pattern * 4096, 65536)


def test_version_cycle(icli, tmp_path):
    icli.ok("vdisk", "import", "w", str(make_raw(tmp_path / "w.raw", size=4 << 20)))
    icli.ok("device", "add", "pc1", "--vdisk", "w")
    icli.ok("device", "add", "pm", "--vdisk", "w")
    assert icli.json("device", "set", "pm", "--type", "maintenance")["device_type"] == (
        "maintenance"
    )
    store = icli.data_dir / "store" / "w"

    opened = icli.json("version", "new", "w")
    assert (opened["number"], opened["access"], opened["parent"]) == (1, "maintenance", 0)
    qemu_io_write(store / "v1.qcow2", 0x11, 0, 65536)
    out = icli.ok("version", "promote", "w", "--to", "test").stdout
    assert out.strip() == "version 1 of vDisk w is now test"
    assert_qemu_clean(store)
    promoted = icli.json(
        "version", "promote", "w", "--to", "production", "--at", "2000-01-01T00:00:00Z"
    )
    assert promoted["version"]["access"] == "production" and promoted["merged"] is None

    assert icli.ok("version", "new", "w").stdout.strip() == (
        "opened version 2 of vDisk w for maintenance (on version 1)"
    )
    qemu_io_write(store / "v2.qcow2", 0x22, 0, 65536)
    later = icli.ok(
        "version", "promote", "w", "--to", "production", "--at", "2999-01-01T00:00:00Z"
    ).stdout
    assert "is now pending from 2999-01-01T00:00:00+00:00" in later
    listed = icli.json("version", "list", "w")
    assert [(v["number"], v["access"], v["parent"]) for v in listed] == [
        (0, "production", None),
        (1, "production", 0),
        (2, "pending", 1),
    ]
    assert all(len(v["sha256"]) == 64 for v in listed)
    table = icli.ok("version", "list", "w").stdout
    assert "pending" in table and listed[1]["sha256"][:12] in table
    assert_qemu_clean(store)

    assert icli.ok("version", "revert", "w").stdout.strip() == "version 2 of vDisk w is now test"
    assert icli.json("version", "override", "w", "0")["version"] == 0
    assert "now boot version 1" in icli.ok("version", "override", "w", "1").stdout
    assert icli.json("version", "override", "w", "--clear")["previous"] == 1
    assert icli.json("vdisk", "show", "w")["override_version"] is None

    exported = tmp_path / "w1.vhdx"
    result = icli.json("vdisk", "export", "w", str(exported), "--format", "vhdx", "--version", "1")
    assert (result["version"], result["format"]) == (1, "vhdx")
    reference = tmp_path / "ref.raw"
    subprocess.run(
        ["qemu-img", "convert", "-O", "raw", str(store / "v1.qcow2"), str(reference)], check=True
    )
    assert qemu_img.compare(exported, reference)

    assert_one_line_error(
        icli("version", "merge", "w"),
        SERVICE,
        "nothing to merge in vDisk w: version 1 already sits on the base",
    )
    icli.ok("version", "promote", "w", "--to", "production")
    merged = icli.ok("version", "merge", "w").stdout.strip()
    assert merged == "merged version(s) 1 of vDisk w into version 2 (now on version 0)"
    assert [v["number"] for v in icli.json("version", "list", "w")] == [0, 2]
    assert sorted(p.name for p in store.iterdir() if not p.name.startswith(".chunks-")) == [
        "base.raw",
        "manifest.json",
        "v2.qcow2",
    ]
    assert_qemu_clean(store)
    assert qemu_img.compare(store / "v2.qcow2", tmp_path / "w.raw") is False

    assert "deleted version 2 of vDisk w" in icli.ok("version", "delete", "w").stdout
    assert icli.ok("vdisk", "verify", "w").stdout.strip() == "vDisk w is intact"
    actions = [e["action"] for e in icli.json("audit", "list")]
    for action in (
        "version.new",
        "version.promote",
        "version.revert",
        "version.override",
        "version.merge",
        "version.delete",
    ):
        assert action in actions


def test_merge_new_base_and_max_versions(icli, tmp_path):
    icli.ok("vdisk", "import", "w", str(make_raw(tmp_path / "w.raw", size=4 << 20)))
    assert icli.json("vdisk", "set", "w", "--max-versions", "3")["max_versions"] == 3
    for pattern in (1, 2):
        new_written(icli, pattern)
        icli.ok("version", "promote", "w", "--to", "production")
    new_written(icli, 3)
    out = icli.ok("version", "promote", "w", "--to", "production").stdout.splitlines()
    assert out == [
        "version 3 of vDisk w is now production",
        "merged version(s) 1, 2 of vDisk w into version 3 (now on version 0)",
    ]
    flat = tmp_path / "flat.raw"
    store = icli.data_dir / "store" / "w"
    subprocess.run(
        ["qemu-img", "convert", "-O", "raw", str(store / "v3.qcow2"), str(flat)], check=True
    )
    result = icli.json("version", "merge", "w", "--new-base")
    assert (result["kept"], result["removed"], result["new_base"]) == (3, [0], True)
    assert sorted(p.name for p in store.iterdir() if not p.name.startswith(".chunks-")) == [
        "manifest.json",
        "v3.qcow2",
    ]
    assert qemu_img.compare(store / "v3.qcow2", flat)
    assert icli.json("vdisk", "show", "w")["format"] == "qcow2"
    assert_qemu_clean(store)


BAD_INPUT = [
    (["version", "promote", "b", "--to", "test"], SERVICE, "no version open to promote"),
    (
        ["version", "promote", "w", "--to", "test"],
        SERVICE,
        "cannot promote version 2 while its maintenance device is connected",
    ),
    (["version", "revert", "b"], SERVICE, "cannot revert the base of vDisk b"),
    (
        ["version", "merge", "m"],
        SERVICE,
        "device(s) po booted version 1 of vDisk m, which the merge would delete",
    ),
    (["version", "merge", "m", "--new-base"], SERVICE, "which the merge would delete"),
    (["version", "merge", "b"], SERVICE, "nothing to merge in vDisk b"),
    (["version", "override", "w", "9"], SERVICE, "vDisk w has no version 9"),
    (["version", "override", "w", "2"], SERVICE, "open for maintenance"),
    (["version", "override", "w"], USAGE, "give either a version NUMBER or --clear"),
    (["version", "override", "w", "1", "--clear"], USAGE, "give either"),
    (["version", "override", "w", "--clear"], SERVICE, "has no override to clear"),
    (["version", "override", "w", "--", "-1"], USAGE, "-1 is not in the range"),
    (["vdisk", "export", "w", "{tmp}/out.vhd", "--format", "vhd"], USAGE, "'vhd' is not one of"),
    (["vdisk", "export", "w", "{tmp}/out.raw"], USAGE, "Missing option '--format'"),
    (["vdisk", "export", "w", "{tmp}/taken.raw", "--format", "raw"], SERVICE, "already exists"),
    (["vdisk", "export", "w", "{tmp}/nodir/x.raw", "--format", "raw"], SERVICE, "does not exist"),
    (
        ["vdisk", "export", "w", "{tmp}/out.raw", "--format", "raw", "--version", "9"],
        SERVICE,
        "vDisk w has no version 9",
    ),
    (
        ["vdisk", "export", "nope", "{tmp}/out.raw", "--format", "raw"],
        SERVICE,
        "no vDisk named nope",
    ),
    (["version", "new", "p"], SERVICE, "vDisk p is in private mode"),
    (["version", "new", "w"], SERVICE, "version 2 of vDisk w is already open"),
    (["version", "new", "nope"], SERVICE, "no vDisk named nope"),
    (["version", "promote", "w", "--to", "staging"], USAGE, "'staging' is not one of"),
    (["version", "promote", "w"], USAGE, "Missing option '--to'"),
    (
        ["version", "promote", "m", "--to", "production", "--at", "soon"],
        USAGE,
        "not an ISO 8601 time",
    ),
    (
        ["version", "promote", "w", "--to", "test", "--at", "2031-01-01T00:00:00Z"],
        SERVICE,
        "--at is only for a promotion to production",
    ),
    (["version", "revert", "w"], SERVICE, "already in maintenance"),
    (["version", "delete", "b"], SERVICE, "cannot delete the base of vDisk b"),
    (["version", "delete", "w"], SERVICE, "cannot delete version 2"),
    (["version", "list", "nope"], SERVICE, "no vDisk named nope"),
    (["version", "list"], USAGE, "Missing argument 'VDISK'"),
    (["vdisk", "set", "w", "--max-versions", "1"], SERVICE, "invalid max-versions 1"),
    (["vdisk", "set", "w", "--mode", "private"], SERVICE, "private mode needs a single raw"),
    (["version", "frobnicate"], USAGE, "No such command 'frobnicate'"),
]


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """vDisks b (base only), p (private), w (v1 production, v2 open with its
    maintenance device pm connected), m (v1, v2 production; po booted v1)."""
    base = tmp_path_factory.mktemp("template")
    cli = Cli(base / "data")
    image = make_raw(base / "disk.raw", size=2 << 20)
    cli.ok("init", "--name", "srv1")
    for name in ("b", "w", "m"):
        cli.ok("vdisk", "import", name, str(image))
    cli.ok("vdisk", "import", "p", str(image), "--mode", "private")
    cli.ok("device", "add", "pm", "--vdisk", "w", "--type", "maintenance")
    cli.ok("device", "add", "po", "--vdisk", "m")
    new_written(cli, 1, "w")
    cli.ok("version", "promote", "w", "--to", "production")
    new_written(cli, 2, "w")
    new_written(cli, 1, "m")
    cli.ok("version", "promote", "m", "--to", "production")
    with Farm.open(base / "data") as farm:
        for device in ("pm", "po"):
            target = farm.exports.resolve(device)
            farm.sessions.started(target.device_id, target.vdisk_id, target.version)
    new_written(cli, 2, "m")
    cli.ok("version", "promote", "m", "--to", "production")
    (base / "taken.raw").write_bytes(b"keep")
    return base


@pytest.fixture
def populated(template, tmp_path):
    shutil.copytree(template, tmp_path, dirs_exist_ok=True)
    return Cli(tmp_path / "data"), {"tmp": str(tmp_path)}


@pytest.mark.parametrize("args, code, message", BAD_INPUT, ids=lambda v: str(v)[:60])
def test_bad_input_changes_nothing(populated, args, code, message):
    cli, paths = populated
    argv = [a.format(**paths) for a in args]
    before = cli.dump()
    outside = sorted(p.name for p in cli.data_dir.parent.iterdir())
    result = cli(*argv)
    assert_one_line_error(result, code, message)
    assert cli.dump() == before
    assert sorted(p.name for p in cli.data_dir.parent.iterdir()) == outside


def test_boot_files_through_the_command_line(icli, tmp_path):
    icli.ok("vdisk", "import", "w", str(make_raw(tmp_path / "w.raw")))
    (tmp_path / "vmlinuz").write_bytes(b"k" * 3000)
    (tmp_path / "initrd.gz").write_bytes(b"i" * 5000)
    (tmp_path / "link").symlink_to(tmp_path / "vmlinuz")
    said = icli.ok(
        "vdisk",
        "boot",
        "w",
        "--kernel",
        str(tmp_path / "vmlinuz"),
        "--initrd",
        str(tmp_path / "initrd.gz"),
        "--cmdline",
        "console=ttyS0",
    ).stdout
    assert said.startswith("version 0 of vDisk w boots kernel ") and "'console=ttyS0'" in said
    icli.ok("version", "new", "w")
    shown = icli.json("version", "show", "w", "1")
    assert shown["boot"]["cmdline"] == "console=ttyS0" and shown["boot"]["kernel"]["size"] == 3000
    listed = icli.ok("version", "list", "w").stdout
    assert "BOOT FILES" in listed and listed.count("kernel+initrd") == 2
    assert "kernel command line  'console=ttyS0'" in icli.ok("version", "show", "w", "0").stdout
    before = icli.dump()
    for args, text in (
        (("--kernel", str(tmp_path / "link")), "is a symbolic link"),
        (("--kernel", str(tmp_path / "none")), "does not exist"),
        (("--kernel", str(tmp_path)), "is not a regular file"),
        (("--cmdline", "a\x1b[2Jb"), "printable ASCII"),
        (("--clear", "--cmdline", "x"), "give --clear alone"),
        ((), "give a kernel, an initramfs, a command line, or --clear"),
    ):
        assert_one_line_error(icli("vdisk", "boot", "w", *args), SERVICE, text)
    assert_one_line_error(icli("vdisk", "boot", "x/y", "--cmdline", "a"), SERVICE, "invalid vDisk")
    assert_one_line_error(icli("version", "show", "w", "9"), SERVICE, "vDisk w has no version 9")
    assert icli.dump() == before
    assert (
        icli.ok("vdisk", "boot", "w", "--clear").stdout
        == "version 1 of vDisk w has no boot files\n"
    )
