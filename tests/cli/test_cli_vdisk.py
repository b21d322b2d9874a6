"""`vdfarm vdisk …` through CliRunner: output for people and for scripts."""

from __future__ import annotations

import hashlib

from tests.cli.conftest import assert_one_line_error
from vdfarm.store import qemu_img


def test_import_then_list_show(icli, image, tmp_path):
    result = icli.ok("vdisk", "import", "win10", str(image), "--mode", "standard")
    assert result.stdout == "imported vDisk win10 (1.0 MiB, standard, write cache server-disk)\n"
    stored = icli.data_dir / "store" / "win10" / "base.raw"
    assert qemu_img.compare(stored, image)
    table = icli.ok("vdisk", "list").stdout
    assert table.splitlines()[0].split()[:3] == ["NAME", "SIZE", "MODE"]
    assert "win10" in table and "1.0 MiB" in table
    shown = icli.ok("vdisk", "show", "win10").stdout
    assert hashlib.sha256(stored.read_bytes()).hexdigest() in shown
    data = icli.json("vdisk", "show", "win10")
    assert (data["name"], data["size"], data["access_mode"], data["in_store"]) == (
        "win10",
        1 << 20,
        "standard",
        True,
    )
    assert data["created_at"].endswith("+00:00")


def test_json_after_the_verb(icli, image):
    icli.ok("vdisk", "import", "w", str(image), "--json")
    result = icli.ok("vdisk", "list", "--json")
    import json

    assert [v["name"] for v in json.loads(result.stdout)] == ["w"]


def test_import_options(icli, tmp_path):
    source = tmp_path / "d.vhdx"
    qemu_img.create(source, "vhdx", 4 << 20)
    data = icli.json(
        "vdisk",
        "import",
        "p",
        str(source),
        "--mode",
        "private",
        "--write-cache",
        "device-ram-overflow",
        "--cache-limit-mb",
        "128",
        "--description",
        "a private disk",
    )
    assert (
        data["access_mode"],
        data["write_cache_type"],
        data["write_cache_limit_mb"],
        data["description"],
        data["size"],
    ) == ("private", "device-ram-overflow", 128, "a private disk", 4 << 20)


def test_set(icli, image):
    icli.ok("vdisk", "import", "w", str(image))
    assert icli.ok("vdisk", "set", "w", "--mode", "private").stdout == "updated vDisk w\n"
    data = icli.json("vdisk", "set", "w", "--cache-limit-mb", "10", "--write-cache", "server-ram")
    assert (data["access_mode"], data["write_cache_limit_mb"], data["write_cache_type"]) == (
        "private",
        10,
        "server-ram",
    )
    assert icli.json("vdisk", "set", "w", "--cache-limit-mb", "0")["write_cache_limit_mb"] is None


def test_set_require_tls(icli, image):
    icli.ok("vdisk", "import", "w", str(image))
    assert "require TLS      no" in icli.ok("vdisk", "show", "w").stdout
    assert icli.ok("vdisk", "set", "w", "--require-tls").stdout == "updated vDisk w\n"
    assert "require TLS      yes" in icli.ok("vdisk", "show", "w").stdout
    assert icli.json("vdisk", "show", "w")["require_tls"] is True
    assert icli.json("vdisk", "set", "w", "--no-require-tls")["require_tls"] is False
    before = icli.dump()
    assert_one_line_error(
        icli("vdisk", "set", "w", "--require-tls", "--subnet-affinity", "fixed"),
        2,
        "give --subnet-affinity alone (not with --require-tls/--no-require-tls)",
    )
    assert_one_line_error(icli("vdisk", "set", "nope", "--require-tls"), 1, "no vDisk named nope")
    assert icli.dump() == before


def test_delete(icli, image):
    icli.ok("vdisk", "import", "w", str(image))
    assert icli.ok("vdisk", "delete", "w").stdout == "deleted vDisk w\n"
    assert icli.json("vdisk", "list") == []
    assert icli.ok("vdisk", "list").stdout == "no vDisks\n"
    assert not (icli.data_dir / "store" / "w").exists()


def test_delete_refused_while_assigned(icli, image):
    icli.ok("vdisk", "import", "w", str(image))
    icli.ok("device", "add", "pc1", "--vdisk", "w")
    before = icli.dump()
    assert_one_line_error(icli("vdisk", "delete", "w"), 1, "assigned to device(s) pc1")
    assert icli.dump() == before


def test_verify(icli, image):
    icli.ok("vdisk", "import", "w", str(image))
    assert icli.ok("vdisk", "verify", "w").stdout == "vDisk w is intact\n"
    assert icli.json("vdisk", "verify", "w") == {"vdisk": "w", "ok": True, "problems": []}
    with open(icli.data_dir / "store" / "w" / "base.raw", "r+b") as fh:
        fh.write(b"rot")
    assert_one_line_error(icli("vdisk", "verify", "w"), 1, "failed verification")
