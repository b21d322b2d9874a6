"""Boot a qemu VM (TCG): the sample image from an NBD URL, a kernel and an
initramfs directly (`start_kernel`), or nothing local at all: its network
card's iPXE from a boot URL (`start_netboot`); read what its serial
console said.

Rules: always `-accel tcg` (KVM is not usable on the test hosts), no network
unless asked for (`user_nic_args`), no display; the serial console goes to a
file, so a running VM can be watched (`VmHandle.serial_text`, `wait_for`) and
several VMs can run at once (`start` returns at once; `boot` = start + wait). A VM that outlives its timeout is
killed, never left behind. The guest's id is passed as the SMBIOS serial number
(`-smbios type=1,serial=ID`), which the image's /init prints back. A
control disk (`make_control_disk`) keeps the guest doing I/O until the host
says stop (`stop_loop`). Parsing the serial text (`parse_serial`,
`parse_loop`) is pure.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

QEMU = "qemu-system-x86_64"
DEFAULT_NBD_PORT = 10809
_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
_POLL_SECONDS = 0.1


class VmError(RuntimeError):
    """qemu could not be started."""


@dataclass(frozen=True, slots=True)
class SerialFields:
    """What the guest's /init reported on the serial console."""

    booted: bool = False
    reported_id: str | None = None
    disk_size: int | None = None
    pattern_before: str | None = None
    write_mode: str | None = None  # "direct" (O_DIRECT) or "buffered"
    readback: str | None = None  # "ok", "mismatch" or None if never reported
    error: str | None = None
    done: bool = False


@dataclass(frozen=True, slots=True)
class BootResult:
    """The outcome of one VM run. `exit_code` is None only if qemu could not be reaped."""

    serial_id: str
    serial_output: str
    exit_code: int | None
    timed_out: bool
    duration_s: float
    fields: SerialFields
    qemu_stderr: str = ""

    @property
    def booted(self) -> bool:
        return self.fields.booted

    @property
    def pattern_before(self) -> str | None:
        return self.fields.pattern_before

    @property
    def readback_ok(self) -> bool:
        return self.fields.readback == "ok"

    @property
    def ok(self) -> bool:
        """Booted with our id, read its pattern back, powered off by itself."""
        return (
            self.booted
            and self.fields.reported_id == self.serial_id
            and self.readback_ok
            and self.fields.done
            and not self.timed_out
            and self.exit_code == 0
        )


_LINE_PATTERNS = {
    "booted": re.compile(r"VDFARM-BOOT-OK (\S+)"),
    "disk_size": re.compile(r"VDFARM-DISK-SIZE (\d+)"),
    "pattern_before": re.compile(r"VDFARM-PATTERN-BEFORE (.*)"),
    "write_mode": re.compile(r"VDFARM-PATTERN-WRITE (direct|buffered)\b"),
    "readback": re.compile(r"VDFARM-PATTERN-READBACK (ok|mismatch)\b"),
    "error": re.compile(r"VDFARM-ERROR (.*)"),
    "done": re.compile(r"VDFARM-DONE\b"),
}


_LOOP_ROUND = re.compile(r"VDFARM-LOOP (\d+) (\d+) ([0-9a-f]{64})$")
_LOOP_END = re.compile(r"VDFARM-LOOP-END (\d+) ok$")
CONTROL_DISK_BYTES = 1 << 20
LOOP_STOP = b"stop"


def parse_serial(text: str) -> SerialFields:
    """Read the VDFARM-* marker lines out of serial console text (the first of each wins)."""
    found: dict[str, str] = {}  # a marker with no value maps to ""
    for line in text.replace("\r", "").splitlines():
        for key, pattern in _LINE_PATTERNS.items():
            match = pattern.search(line)
            if match is None or key in found:
                continue
            found[key] = match.group(1).strip() if match.groups() else ""
    reported_id = found.get("booted")
    disk_size = found.get("disk_size")
    return SerialFields(
        booted=reported_id is not None,
        reported_id=reported_id,
        disk_size=int(disk_size) if disk_size is not None else None,
        pattern_before=found.get("pattern_before"),
        write_mode=found.get("write_mode"),
        readback=found.get("readback"),
        error=found.get("error"),
        done="done" in found,
    )


def _qemu_value(value: str) -> str:
    """Escape a value for qemu's comma-separated option syntax."""
    return value.replace(",", ",,")


def nbd_drive_option(
    nbd_url: str, reconnect_delay: int | None = None, interface: str = "virtio"
) -> str:
    """The `-drive` value for a disk served at `nbd_url` (virtio unless `interface` says).

    Accepts nbd://host[:port][/export] and nbd+unix:///export?socket=PATH.
    Raises ValueError for any other URL.
    """
    url = urlsplit(nbd_url)
    export = unquote(url.path[1:]) if url.path.startswith("/") else ""
    if url.scheme == "nbd":
        if not url.hostname:
            raise ValueError(f"NBD URL without a host: {nbd_url!r}")
        server = (
            f"file.server.type=inet,file.server.host={_qemu_value(url.hostname)},"
            f"file.server.port={url.port or DEFAULT_NBD_PORT}"
        )
    elif url.scheme == "nbd+unix":
        sockets = parse_qs(url.query).get("socket")
        if not sockets:
            raise ValueError(f"nbd+unix URL without ?socket=: {nbd_url!r}")
        server = f"file.server.type=unix,file.server.path={_qemu_value(sockets[0])}"
    else:
        raise ValueError(f"not an NBD URL (nbd:// or nbd+unix://): {nbd_url!r}")
    parts = ["driver=raw", f"if={interface}", "cache=none", "file.driver=nbd", server]
    if export:
        parts.append(f"file.export={_qemu_value(export)}")
    if reconnect_delay is not None:
        parts.append(f"file.reconnect-delay={int(reconnect_delay)}")
    return ",".join(parts)


def qemu_command(
    nbd_url: str,
    serial_id: str,
    serial_path: Path,
    memory_mib: int = 256,
    extra_args: tuple[str, ...] = (),
    reconnect_delay: int | None = None,
    qemu: str = QEMU,
    interface: str = "virtio",
) -> list[str]:
    """The full qemu argv. Raises ValueError for a bad URL or an id outside [A-Za-z0-9._-]{1,64}."""
    return [
        *machine_args(serial_id, serial_path, memory_mib, qemu),
        "-drive",
        nbd_drive_option(nbd_url, reconnect_delay, interface),
        *extra_args,
    ]


def machine_args(serial_id: str, serial_path: Path, memory_mib: int, qemu: str) -> list[str]:
    """qemu, TCG, no devices but the serial console to a file, and the SMBIOS serial."""
    if not _ID_RE.fullmatch(serial_id):
        raise ValueError(f"serial id must match [A-Za-z0-9._-]{{1,64}}: {serial_id!r}")
    return [
        qemu,
        "-nodefaults",
        "-no-user-config",
        "-accel",
        "tcg",
        "-m",
        str(memory_mib),
        "-display",
        "none",
        "-monitor",
        "none",
        "-no-reboot",
        "-serial",
        f"file:{serial_path}",
        "-smbios",
        f"type=1,serial={serial_id}",
    ]


def make_control_disk(path: Path) -> list[str]:
    """Make PATH (CONTROL_DISK_BYTES of zeroes) and return the qemu options
    that give it to the guest as its second virtio disk. With it, the sample
    image's /init keeps reading and writing its disk in rounds (init.sh)
    until `stop_loop(PATH)`; `parse_loop` reads the rounds back."""
    path.write_bytes(bytes(CONTROL_DISK_BYTES))
    return ["-drive", f"file={_qemu_value(str(path))},format=raw,if=virtio"]


def stop_loop(path: Path) -> None:
    """Tell the guest's loop (see `make_control_disk`) to end after its round."""
    with open(path, "r+b") as f:
        f.write(LOOP_STOP)


@dataclass(frozen=True, slots=True)
class LoopRound:
    """One round of the guest's I/O loop: it read LOOP_READ_MIB MiB at MiB
    `mib` and hashed them (sha256, hex)."""

    number: int
    mib: int
    sha256: str


def parse_loop(text: str) -> tuple[list[LoopRound], int | None]:
    """The loop's rounds in serial console TEXT, and the round count its
    end line reported (None: no `VDFARM-LOOP-END n ok`)."""
    rounds = []
    ended: int | None = None
    for line in text.replace("\r", "").splitlines():
        if match := _LOOP_ROUND.search(line):
            rounds.append(LoopRound(int(match[1]), int(match[2]), match[3]))
        elif (match := _LOOP_END.search(line)) and ended is None:
            ended = int(match[1])
    return rounds, ended


def user_nic_args(model: str = "virtio-net-pci") -> list[str]:
    """One NIC on qemu's user-mode network: the guest is 10.0.2.15/24 and
    reaches the host's loopback at 10.0.2.2 (connections arrive from 127.0.0.1)."""
    return ["-nic", f"user,model={_qemu_value(model)}"]


def kernel_command(
    kernel: Path,
    initrd: Path,
    append: str,
    serial_id: str,
    serial_path: Path,
    memory_mib: int = 256,
    extra_args: tuple[str, ...] = (),
    qemu: str = QEMU,
) -> list[str]:
    """The qemu argv booting `kernel` and `initrd` directly (no disk, no firmware boot).

    Raises ValueError for an id outside [A-Za-z0-9._-]{1,64}.
    """
    return [
        *machine_args(serial_id, serial_path, memory_mib, qemu),
        "-kernel",
        str(kernel),
        "-initrd",
        str(initrd),
        "-append",
        append,
        *extra_args,
    ]


def netboot_command(
    mac: str,
    bootfile_url: str,
    serial_id: str,
    serial_path: Path,
    memory_mib: int = 256,
    extra_args: tuple[str, ...] = (),
    qemu: str = QEMU,
    model: str = "virtio-net-pci",
) -> list[str]:
    """The qemu argv of a diskless machine that boots from its network card:
    no disk, `-boot n`, one NIC (MAC) on qemu's user network, whose DHCP
    hands the NIC's iPXE ROM BOOTFILE_URL (iPXE expands `${net0/mac}` in it).

    Raises ValueError for an id outside [A-Za-z0-9._-]{1,64}, a MAC that is
    not aa:bb:cc:dd:ee:ff, or a URL holding a comma.
    """
    if not re.fullmatch(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}", mac):
        raise ValueError(f"MAC must be aa:bb:cc:dd:ee:ff (lower case): {mac!r}")
    if "," in bootfile_url:
        raise ValueError(f"a bootfile URL with a comma: {bootfile_url!r}")
    return [
        *machine_args(serial_id, serial_path, memory_mib, qemu),
        "-boot",
        "n",
        "-nic",
        f"user,model={_qemu_value(model)},mac={mac},bootfile={bootfile_url}",
        *extra_args,
    ]


class VmHandle:
    """A running VM. Use as a context manager: leaving it kills qemu if still running."""

    def __init__(
        self,
        argv: list[str],
        serial_id: str,
        serial_path: Path,
        workdir: tempfile.TemporaryDirectory[str],
    ) -> None:
        self.serial_id = serial_id
        self.serial_path = serial_path
        self._workdir = workdir
        self._stderr_path = Path(workdir.name) / "qemu.stderr"
        self._started = time.monotonic()
        self._timed_out = False
        with open(self._stderr_path, "wb") as stderr:
            self.process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr
            )

    def __enter__(self) -> VmHandle:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def serial_text(self) -> str:
        try:
            return self.serial_path.read_bytes().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def running(self) -> bool:
        return self.process.poll() is None

    def wait_for(self, text: str, timeout: float) -> bool:
        """Wait until `text` appears on the serial console; False on timeout or VM exit."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.serial_text():
                return True
            if not self.running():
                return text in self.serial_text()
            time.sleep(_POLL_SECONDS)
        return False

    def kill(self) -> None:
        if self.running():
            self.process.kill()
        self.process.wait()

    def wait(self, timeout: float = 120) -> BootResult:
        """Wait for qemu to exit (killing it after `timeout` seconds) and return the result."""
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._timed_out = True
            self.kill()
        return self.result()

    def result(self) -> BootResult:
        text = self.serial_text()
        stderr = self._stderr_path.read_bytes().decode(errors="replace")
        return BootResult(
            self.serial_id,
            text,
            self.process.poll(),
            self._timed_out,
            time.monotonic() - self._started,
            parse_serial(text),
            stderr,
        )

    def close(self) -> None:
        self.kill()
        self._workdir.cleanup()


def _start_argv(
    build: Callable[[Path], list[str]], serial_id: str, serial_log: str | Path | None, qemu: str
) -> VmHandle:
    """Run the argv `build(serial_path)` makes, in a new work directory."""
    if shutil.which(qemu) is None:
        raise VmError(f"missing {qemu} (apt-get install qemu-system-x86)")
    workdir = tempfile.TemporaryDirectory(prefix="vdfarm-vm-")
    serial_path = Path(serial_log) if serial_log else Path(workdir.name) / "serial.txt"
    try:
        return VmHandle(build(serial_path), serial_id, serial_path, workdir)
    except ValueError:
        workdir.cleanup()
        raise
    except OSError as exc:
        workdir.cleanup()
        raise VmError(f"cannot start {qemu}: {exc}") from exc


def start_kernel(
    kernel: Path,
    initrd: Path,
    append: str,
    serial_id: str,
    memory_mib: int = 256,
    extra_args: tuple[str, ...] = (),
    *,
    serial_log: str | Path | None = None,
    qemu: str = QEMU,
) -> VmHandle:
    """Start a VM booting `kernel` with `initrd` and command line `append`; return at once.

    No disk and no network unless `extra_args` add them (e.g. `user_nic_args()`).
    Raises ValueError for a bad id, VmError if qemu is missing or cannot be started.
    """
    return _start_argv(
        lambda serial_path: kernel_command(
            kernel, initrd, append, serial_id, serial_path, memory_mib, tuple(extra_args), qemu
        ),
        serial_id,
        serial_log,
        qemu,
    )


def start(
    nbd_url: str,
    serial_id: str,
    memory_mib: int = 256,
    extra_args: tuple[str, ...] = (),
    *,
    reconnect_delay: int | None = None,
    serial_log: str | Path | None = None,
    qemu: str = QEMU,
    interface: str = "virtio",
) -> VmHandle:
    """Start a VM booting from `nbd_url` and return at once.

    `reconnect_delay` (seconds) lets qemu's NBD client reconnect after a lost
    connection. `serial_log` keeps the serial output at that path (default: a
    temporary file removed by `close`). `interface` other than virtio (e.g.
    "ide") makes the image's /init fail loudly, for tests.
    Raises ValueError for a bad URL or id, VmError if qemu is missing or
    cannot be started.
    """
    return _start_argv(
        lambda serial_path: qemu_command(
            nbd_url,
            serial_id,
            serial_path,
            memory_mib,
            tuple(extra_args),
            reconnect_delay,
            qemu,
            interface,
        ),
        serial_id,
        serial_log,
        qemu,
    )


def boot(
    nbd_url: str,
    serial_id: str,
    timeout: float = 120,
    memory_mib: int = 256,
    extra_args: tuple[str, ...] = (),
    *,
    reconnect_delay: int | None = None,
    serial_log: str | Path | None = None,
    interface: str = "virtio",
) -> BootResult:
    """Boot a VM from `nbd_url`, wait for it to power off (or kill it at `timeout`).

    Keyword options as for `start`. Raises what `start` raises.
    """
    with start(
        nbd_url,
        serial_id,
        memory_mib,
        extra_args,
        reconnect_delay=reconnect_delay,
        serial_log=serial_log,
        interface=interface,
    ) as vm:
        return vm.wait(timeout)


async def boot_async(
    nbd_url: str, serial_id: str, timeout: float = 120, **options: Any
) -> BootResult:
    """`boot` in a worker thread, so an event loop (e.g. a server under test) keeps running.

    `options` are `boot`'s. Raises what `boot` raises.
    """
    return await asyncio.to_thread(boot, nbd_url, serial_id, timeout, **options)


def start_netboot(
    mac: str,
    bootfile_url: str,
    serial_id: str,
    memory_mib: int = 256,
    extra_args: tuple[str, ...] = (),
    *,
    serial_log: str | Path | None = None,
    qemu: str = QEMU,
) -> VmHandle:
    """Start a diskless VM that network-boots (`netboot_command`); return at once.

    Raises ValueError (bad id, MAC or URL), VmError (qemu missing or not started).
    """
    return _start_argv(
        lambda serial_path: netboot_command(
            mac, bootfile_url, serial_id, serial_path, memory_mib, tuple(extra_args), qemu
        ),
        serial_id,
        serial_log,
        qemu,
    )
