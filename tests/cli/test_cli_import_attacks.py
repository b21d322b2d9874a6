"""`vdfarm vdisk import` of hostile images: one error line, a non-zero exit,
and every file and row as it was; raw stays raw through export + re-import."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli.conftest import assert_one_line_error
from tests.store import hostile
from tests.store.hostile import SECRET

SERVICE = 1
OS_RELEASE = Path("/etc/os-release")


@pytest.fixture
def secret(tmp_path):
    return hostile.host_file(tmp_path / "host-secret.bin")


@pytest.mark.parametrize(
    ("make", "text"),
    [
        (lambda d, s: hostile.qcow2_with_data_file(d / "ext.qcow2", s), "external data file"),
        (lambda d, s: hostile.vmdk_flat(d / "flat.vmdk"), "VMDK descriptor"),
        (lambda d, s: hostile.vmdk_descriptor(d / "desc.vmdk", s), "VMDK descriptor"),
        (lambda d, s: hostile.vmdk_sparse_naming(d / "sp.vmdk", s), "names other files"),
        (lambda d, s: hostile.qcow2_with_backing(d / "bk.qcow2", s), "backing file"),
    ],
    ids=["qcow2-data-file", "vmdk-monolithicFlat", "vmdk-descriptor", "vmdk-embedded", "backing"],
)
def test_images_naming_host_files_are_refused(icli, tmp_path, secret, make, text):
    source = make(tmp_path, secret)
    before = icli.dump()
    assert_one_line_error(icli("vdisk", "import", "evil", str(source)), SERVICE, text)
    assert icli.dump() == before


def test_explicit_format_is_checked_too(icli, tmp_path, secret):
    source = hostile.qcow2_with_data_file(tmp_path / "ext.img", secret)
    before = icli.dump()
    result = icli("vdisk", "import", "evil", str(source), "--format", "qcow2")
    assert_one_line_error(result, SERVICE, "external data file")
    result = icli("vdisk", "import", "evil", str(hostile.vmdk_flat(tmp_path / "f.vmdk")),
                  "--format", "vmdk")  # fmt: skip
    assert_one_line_error(result, SERVICE, "not a self-contained vmdk")
    assert icli.dump() == before


def test_raw_format_reads_a_qcow2_lookalike_as_raw_bytes(icli, tmp_path, secret):
    header = hostile.qcow2_with_backing(tmp_path / "h.qcow2", secret)
    source = hostile.raw_looking_like(tmp_path / "disk.raw", header)
    icli.ok("vdisk", "import", "d", str(source), "--format", "raw")
    stored = (icli.data_dir / "store" / "d" / "base.raw").read_bytes()
    assert stored == source.read_bytes() and SECRET not in stored


def test_export_and_reimport_never_serves_a_host_file(icli, tmp_path):
    """The reproduced attack: a device writes a qcow2 header naming
    /etc/os-release as its data file into its private vDisk; the admin
    exports it and imports the copy."""
    icli.ok("vdisk", "import", "p", str(hostile.host_file(tmp_path / "p.raw")), "--mode", "private")
    header = hostile.qcow2_with_data_file(tmp_path / "h.qcow2", OS_RELEASE).read_bytes()
    with open(icli.data_dir / "store" / "p" / "base.raw", "r+b") as fh:  # the device's write
        fh.write(header)
    out = tmp_path / "out.raw"
    icli.ok("vdisk", "export", "p", str(out), "--format", "raw")
    exported = out.read_bytes()
    assert exported.startswith(header)

    before = icli.dump()
    result = icli("vdisk", "import", "copy", str(out))
    assert_one_line_error(result, SERVICE, "external data file")
    assert "give the source format raw explicitly" in result.stderr
    assert icli.dump() == before

    icli.ok("vdisk", "import", "copy", str(out), "--format", "raw")
    stored = (icli.data_dir / "store" / "copy" / "base.raw").read_bytes()
    assert stored == exported
    assert OS_RELEASE.read_bytes() not in stored

    as_qcow2 = tmp_path / "out.qcow2"
    icli.ok("vdisk", "export", "p", str(as_qcow2), "--format", "qcow2")
    icli.ok("vdisk", "import", "copy2", str(as_qcow2))
    assert (icli.data_dir / "store" / "copy2" / "base.raw").read_bytes() == exported


def test_unknown_format_is_a_usage_error(icli, tmp_path):
    source = hostile.host_file(tmp_path / "s.raw")
    before = icli.dump()
    result = icli("vdisk", "import", "s", str(source), "--format", "vdi")
    assert result.exit_code == 2 and "'vdi' is not one of" in result.stderr
    assert icli.dump() == before
