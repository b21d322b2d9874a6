"""The VM helper: serial parsing and qemu options (fast), then real TCG boots served by qemu-nbd.

The boots prove the image itself: it boots, writes its pattern and reads it
back, the write reaches the image file (checked from outside), it is there at
the next boot, and the guest fails loudly when it has no virtio disk.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.image.conftest import read_pattern_block
from vdfarm.image import sample, vm

GOOD_SERIAL = (
    "\r\nSYSLINUX 6.04\r\n"
    "VDFARM-BOOT-OK pc1\r\n"
    "VDFARM-DISK-SIZE 67108864\r\n"
    "VDFARM-PATTERN-BEFORE VDFARM-PATTERN pc0\r\n"
    "[    3.1] some kernel line\r\n"
    "VDFARM-PATTERN-WRITE direct\r\n"
    "VDFARM-PATTERN-READBACK ok pc1\r\n"
    "VDFARM-DONE pc1\r\n"
    "[    3.2] reboot: Power down\r\n"
)


def test_parse_serial_reads_every_marker():
    fields = vm.parse_serial(GOOD_SERIAL)
    assert fields == vm.SerialFields(
        booted=True,
        reported_id="pc1",
        disk_size=67108864,
        pattern_before="VDFARM-PATTERN pc0",
        write_mode="direct",
        readback="ok",
        error=None,
        done=True,
    )


def test_parse_serial_of_a_failed_boot():
    fields = vm.parse_serial("VDFARM-BOOT-OK noid\nVDFARM-ERROR no /dev/vda\n")
    assert fields.booted and fields.reported_id == "noid"
    assert fields.error == "no /dev/vda"
    assert fields.readback is None and not fields.done


def test_parse_serial_of_nothing():
    assert vm.parse_serial("") == vm.SerialFields()
    assert vm.parse_serial("VDFARM-PATTERN-READBACK mismatch x\n").readback == "mismatch"


def test_boot_result_ok_needs_our_id_a_readback_and_a_clean_exit():
    def result(text, exit_code=0, timed_out=False):
        return vm.BootResult("pc1", text, exit_code, timed_out, 1.0, vm.parse_serial(text))

    assert result(GOOD_SERIAL).ok
    assert not result(GOOD_SERIAL.replace("pc1", "pc2")).ok
    assert not result(GOOD_SERIAL.replace("READBACK ok", "READBACK mismatch")).ok
    assert not result(GOOD_SERIAL, exit_code=-9, timed_out=True).ok


def test_parse_loop_reads_the_rounds_and_the_end():
    digest = "ab" * 32
    text = (
        "VDFARM-PATTERN-READBACK ok pc1\r\n"
        f"VDFARM-LOOP 1 7 {digest}\r\n"
        "[    5.1] a kernel line\r\n"
        f"VDFARM-LOOP 2 14 {digest}\r\n"
        f"VDFARM-LOOP 3 1 {digest[:-1]}\r\n"  # cut short: not a round
        "VDFARM-LOOP-END 2 ok\r\n"
    )
    rounds, ended = vm.parse_loop(text)
    assert rounds == [vm.LoopRound(1, 7, digest), vm.LoopRound(2, 14, digest)]
    assert ended == 2
    assert vm.parse_loop(text.replace("END 2 ok", "END 2 mismatch"))[1] is None
    assert vm.parse_loop("") == ([], None)


def test_control_disk_is_a_second_virtio_disk_until_stopped(tmp_path):
    disk = tmp_path / "con,trol.img"
    args = vm.make_control_disk(disk)
    assert args == ["-drive", f"file={tmp_path}/con,,trol.img,format=raw,if=virtio"]
    assert disk.read_bytes() == bytes(vm.CONTROL_DISK_BYTES)
    vm.stop_loop(disk)
    assert disk.read_bytes() == vm.LOOP_STOP + bytes(vm.CONTROL_DISK_BYTES - len(vm.LOOP_STOP))


def test_drive_option_for_tcp_url():
    option = vm.nbd_drive_option("nbd://127.0.0.1:10999/pc,1", reconnect_delay=5)
    parts = option.replace(",,", "\0").split(",")
    assert "if=virtio" in parts and "driver=raw" in parts and "file.driver=nbd" in parts
    assert "file.server.type=inet" in parts and "file.server.host=127.0.0.1" in parts
    assert "file.server.port=10999" in parts
    assert "file.export=pc\0" + "1" in parts
    assert "file.reconnect-delay=5" in parts


def test_drive_option_for_unix_url_and_default_port():
    option = vm.nbd_drive_option("nbd+unix:///disk?socket=/run/a.sock")
    assert "file.server.type=unix,file.server.path=/run/a.sock" in option
    assert "file.export=disk" in option and "reconnect" not in option
    assert "file.server.port=10809" in vm.nbd_drive_option("nbd://localhost/x")


@pytest.mark.parametrize("url", ["http://h/x", "nbd:///x", "nbd+unix:///x", "/tmp/x.raw"])
def test_bad_urls_are_refused(url):
    with pytest.raises(ValueError):
        vm.nbd_drive_option(url)


def test_qemu_command_uses_tcg_and_the_id_as_smbios_serial(tmp_path):
    argv = vm.qemu_command("nbd://127.0.0.1:1/x", "pc-1", tmp_path / "s.txt")
    assert argv[argv.index("-accel") + 1] == "tcg"
    assert argv[argv.index("-smbios") + 1] == "type=1,serial=pc-1"
    assert argv[argv.index("-serial") + 1] == f"file:{tmp_path / 's.txt'}"
    assert "-no-reboot" in argv


@pytest.mark.parametrize("bad_id", ["", "a,b", "a b", "x" * 65, "é"])
def test_ids_qemu_or_the_guest_would_mangle_are_refused(tmp_path, bad_id):
    with pytest.raises(ValueError):
        vm.qemu_command("nbd://127.0.0.1:1/x", bad_id, tmp_path / "s.txt")


def test_missing_qemu_raises_vm_error():
    with pytest.raises(vm.VmError, match="no-such-qemu"):
        vm.start("nbd://127.0.0.1:1/x", "a", qemu="no-such-qemu")
    with pytest.raises(vm.VmError, match="no-such-qemu"):
        vm.start_kernel(Path("k"), Path("i"), "", "a", qemu="no-such-qemu")


def test_kernel_command_boots_kernel_and_initrd_with_no_disk(tmp_path):
    argv = vm.kernel_command(
        Path("/boot/vmlinuz-x"), tmp_path / "i.gz", "console=ttyS0 a=b", "vm-1", tmp_path / "s",
        extra_args=tuple(vm.user_nic_args()),
    )  # fmt: skip
    assert argv[argv.index("-accel") + 1] == "tcg"
    assert argv[argv.index("-kernel") + 1] == "/boot/vmlinuz-x"
    assert argv[argv.index("-initrd") + 1] == str(tmp_path / "i.gz")
    assert argv[argv.index("-append") + 1] == "console=ttyS0 a=b"
    assert argv[argv.index("-nic") + 1] == "user,model=virtio-net-pci"
    assert "-drive" not in argv and "-nodefaults" in argv
    with pytest.raises(ValueError):
        vm.kernel_command(Path("k"), Path("i"), "", "a b", tmp_path / "s")


needs_qemu = pytest.mark.skipif(shutil.which(vm.QEMU) is None, reason="qemu not installed")


@pytest.mark.vm
@needs_qemu
def test_guest_pattern_reaches_the_disk_and_survives_a_reboot(serve_copy):
    server = serve_copy("private")
    first = vm.boot(server.url, "first-boot", timeout=180)
    assert first.ok, first.serial_output + first.qemu_stderr
    assert first.pattern_before == "empty"
    assert first.fields.disk_size == 64 * sample.MIB
    assert read_pattern_block(server.image) == sample.expected_pattern("first-boot")

    second = vm.boot(server.url, "second-boot", timeout=180)
    assert second.ok, second.serial_output + second.qemu_stderr
    assert second.pattern_before == "VDFARM-PATTERN first-boot"
    assert read_pattern_block(server.image) == sample.expected_pattern("second-boot")


@pytest.mark.vm
@needs_qemu
def test_two_vms_run_at_once_each_on_its_own_disk(serve_copy):
    servers = {name: serve_copy(name) for name in ("left", "right")}
    handles = {name: vm.start(server.url, name) for name, server in servers.items()}
    try:
        results = {name: handle.wait(180) for name, handle in handles.items()}
    finally:
        for handle in handles.values():
            handle.close()
    for name, result in results.items():
        assert result.ok, result.serial_output + result.qemu_stderr
        assert result.pattern_before == "empty"
        assert read_pattern_block(servers[name].image) == sample.expected_pattern(name)


@pytest.mark.vm
@needs_qemu
def test_guest_without_a_virtio_disk_fails_loudly_and_writes_nothing(serve_copy):
    server = serve_copy("ide")
    result = vm.boot(server.url, "on-ide", timeout=180, interface="ide")
    assert result.booted, result.serial_output + result.qemu_stderr
    assert result.fields.error == "no /dev/vda"
    assert not result.readback_ok and not result.fields.done
    assert result.exit_code == 0  # powered off by itself, not killed
    assert read_pattern_block(server.image) == b"\0" * sample.PATTERN_BLOCK_SIZE


@pytest.mark.vm
@needs_qemu
def test_vm_that_outlives_its_timeout_is_killed(serve_copy):
    server = serve_copy("slow")
    with vm.start(server.url, "slow") as handle:
        result = handle.wait(timeout=0.5)
        assert not handle.running()
    assert result.timed_out and result.exit_code != 0 and not result.ok
