"""The initramfs: what it holds, its /init script, and the checks on busybox."""

from __future__ import annotations

import gzip
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from vdfarm.image import cpio, initramfs, kmod, sample
from vdfarm.image.errors import ImageBuildError
from vdfarm.image.programs import GuestFile

SETTINGS = {"PATTERN_OFFSET_FROM_END": 1048576, "PATTERN_BLOCK_SIZE": 4096}


@pytest.fixture(scope="module")
def host_initramfs():
    kernel = sample.find_newest_kernel()
    version = sample.kernel_version(kernel)
    data = initramfs.build_initramfs(
        version, sample.MODULES_ROOT / version, sample.BUSYBOX, SETTINGS
    )
    entries = cpio.read_newc(gzip.decompress(data))
    return version, {e.name: e for e in entries}, [e.name for e in entries]


def test_init_is_the_executable_init_script(host_initramfs):
    _, by_name, _ = host_initramfs
    init = by_name["init"]
    assert init.is_file and init.mode & 0o111
    assert init.data == initramfs.INIT_SCRIPT_PATH.read_bytes()


def test_busybox_and_its_applets_are_there(host_initramfs):
    _, by_name, _ = host_initramfs
    assert by_name["bin/busybox"].data == sample.BUSYBOX.read_bytes()
    for applet in ("sh", "mount", "insmod", "dd", "cmp", "poweroff", "usleep", "tr", "head"):
        link = by_name[f"bin/{applet}"]
        assert link.is_symlink and link.data == b"busybox"


def test_console_node_exists_before_devtmpfs_is_mounted(host_initramfs):
    _, by_name, _ = host_initramfs
    console = by_name["dev/console"]
    assert console.is_char_device and (console.rdev_major, console.rdev_minor) == (5, 1)


def test_module_list_names_archived_modules_in_load_order(host_initramfs):
    version, by_name, _ = host_initramfs
    listed = by_name[initramfs.MODULE_LIST_PATH].data.decode().split()
    assert [kmod.module_name(p) for p in listed][-1] == "virtio_blk"
    for path in listed:
        assert path.startswith(f"/lib/modules/{version}/")
        assert by_name[path.lstrip("/")].data[:4] == b"\x7fELF"


def test_parents_come_before_children(host_initramfs):
    _, _, names = host_initramfs
    for index, name in enumerate(names):
        if "/" in name:
            assert name.rsplit("/", 1)[0] in names[:index], name


def test_config_carries_the_pattern_settings(host_initramfs):
    _, by_name, _ = host_initramfs
    text = by_name[initramfs.CONFIG_PATH].data.decode()
    assert "PATTERN_OFFSET_FROM_END=1048576\n" in text
    assert "PATTERN_BLOCK_SIZE=4096\n" in text


@pytest.mark.parametrize("value", ["1; rm -rf /", "$(reboot)", "a b", "x\ny"])
def test_unsafe_settings_are_refused(value):
    with pytest.raises(ValueError):
        initramfs.config_text({"X": value})


def test_init_script_parses_in_busybox_sh():
    subprocess.run([str(sample.BUSYBOX), "sh", "-n", str(initramfs.INIT_SCRIPT_PATH)], check=True)


def test_static_busybox_is_recognised_and_a_dynamic_binary_is_not():
    assert initramfs.is_static_elf(sample.BUSYBOX.read_bytes())
    assert not initramfs.is_static_elf(Path("/bin/ls").read_bytes())
    with pytest.raises(ImageBuildError):
        initramfs.is_static_elf(b"#!/bin/sh\n" + b"\0" * 64)


def test_dynamic_busybox_is_refused(tmp_path):
    fake = tmp_path / "busybox"
    shutil.copyfile("/bin/ls", fake)
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    with pytest.raises(ImageBuildError, match="busybox-static"):
        initramfs.build_initramfs("x", tmp_path, fake, SETTINGS)


def test_missing_busybox_is_named(tmp_path):
    with pytest.raises(ImageBuildError, match="busybox"):
        initramfs.build_initramfs("x", tmp_path, tmp_path / "busybox", SETTINGS)


# -- programs, files and other modules -------------------------------------------

BUSYBOX_STUB = b"\x7fELF busybox"


def _entries(programs=(), files=None, applets=("sh", "ls", "cat")):
    entries = initramfs.initramfs_entries(
        "6.1.0-test", [], BUSYBOX_STUB, list(applets), b"#!/bin/sh\n", {}, programs, files
    )
    return {e.name: e for e in entries}, [e.name for e in entries]


def test_programs_and_files_go_at_their_paths_with_their_parents_first():
    progs = [
        GuestFile("/usr/sbin/tool", b"\x7fELF tool", executable=True),
        GuestFile("/lib64/ld.so", b"\x7fELF ld", executable=True),
        GuestFile("/lib/x86_64-linux-gnu/libc.so.6", b"\x7fELF libc"),
        GuestFile("/lib/x86_64-linux-gnu/ld.so", link_to="/lib64/ld.so"),
    ]
    files = {"/etc/vdfarm/tls/client-key.pem": b"KEY"}
    by_name, names = _entries(progs, files)
    assert by_name["usr/sbin/tool"].mode & 0o777 == 0o755
    assert by_name["lib/x86_64-linux-gnu/libc.so.6"].mode & 0o777 == 0o644
    link = by_name["lib/x86_64-linux-gnu/ld.so"]
    assert link.is_symlink and link.data == b"/lib64/ld.so"
    key = by_name["etc/vdfarm/tls/client-key.pem"]
    assert key.is_file and key.data == b"KEY" and key.mode & 0o777 == 0o600
    for directory in ("usr", "usr/sbin", "lib64", "lib/x86_64-linux-gnu", "etc/vdfarm/tls"):
        assert by_name[directory].is_dir
    for index, name in enumerate(names):
        if "/" in name:
            assert name.rsplit("/", 1)[0] in names[:index], name
    assert names[-1] == "init"
    cpio.write_newc(list(by_name.values()))  # no name twice


def test_a_program_at_an_applet_path_replaces_the_applet_link():
    by_name, _ = _entries([GuestFile("/bin/ls", b"\x7fELF real ls", executable=True)])
    assert by_name["bin/ls"].is_file and by_name["bin/ls"].data == b"\x7fELF real ls"
    assert by_name["bin/cat"].is_symlink


@pytest.mark.parametrize("path", ["/init", "/bin/busybox", "/etc/vdfarm.conf", "/bin", "/tmp"])
def test_a_file_over_what_the_archive_holds_is_refused(path):
    with pytest.raises(ImageBuildError, match="taken twice"):
        _entries(files={path: b"x"})


@pytest.mark.parametrize("path", ["etc/x", "/etc/../x", "/etc//x", "/etc/x/", "/", "/./x"])
def test_guest_paths_must_be_absolute_and_normalised(path):
    with pytest.raises(ValueError, match="absolute and normalised"):
        _entries(files={path: b"x"})


def test_the_host_nbd_client_with_network_and_nbd_modules(tmp_path):
    """The pieces the kernel-NBD-client VM test boots (tests/stream/test_nbd_client_tls_vm.py)."""
    program = Path("/usr/sbin/nbd-client")
    if not program.is_file():
        pytest.skip("nbd-client not installed")
    init = tmp_path / "init.sh"
    init.write_text("#!/bin/sh\npoweroff -f\n")
    version = sample.kernel_version(sample.find_newest_kernel())
    data = initramfs.build_initramfs(
        version,
        sample.MODULES_ROOT / version,
        sample.BUSYBOX,
        {"X": 1},
        modules=kmod.VIRTIO_NET_MODULES + kmod.NBD_MODULES,
        programs=[program],
        files={"/etc/ca.pem": b"CA"},
        init_script=init,
    )
    by_name = {e.name: e for e in cpio.read_newc(gzip.decompress(data))}
    assert by_name["init"].data == init.read_bytes()
    assert by_name["usr/sbin/nbd-client"].data == program.read_bytes()
    assert by_name["lib64/ld-linux-x86-64.so.2"].is_file
    assert by_name["lib/x86_64-linux-gnu/libgnutls.so.30"].data[:4] == b"\x7fELF"
    assert by_name["etc/ca.pem"].data == b"CA"
    loaded = [
        kmod.module_name(p) for p in by_name[initramfs.MODULE_LIST_PATH].data.decode().split()
    ]
    assert {"virtio_pci", "virtio_net", "nbd"} <= set(loaded)
    assert loaded.index("virtio") < loaded.index("virtio_net")
