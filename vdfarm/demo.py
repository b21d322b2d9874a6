"""`vdfarm demo`: the whole job on one machine, shown step by step.

Job: set up a data directory (SQLite farm DB, local store), build the sample
bootable image, import it as a standard-mode vDisk, register devices, start
the server, boot a VM (qemu TCG) from the farm and show its serial console,
check from outside that the guest's write reached its write cache, then say
how to connect your own clients.

Rules: every step is a real `vdfarm` command, printed before it runs, so the
user sees what to type; the demo is idempotent on an existing data directory;
it stops the server it started, whatever happens.
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console

from vdfarm.image import sample, vm

console = Console(highlight=False, soft_wrap=True)
VDISK = "golden"
DEVICES = (("pc1", "52:54:00:00:00:01"), ("pc2", "52:54:00:00:00:02"))


class DemoError(Exception):
    """A demo step failed; the message says which and why."""


def _vdfarm(data_dir: Path, *args: str, show: bool = True, check: bool = True):
    argv = [sys.executable, "-m", "vdfarm", "--data-dir", str(data_dir), *args]
    if show:
        console.print(f"[bold cyan]$ vdfarm --data-dir {data_dir} {shlex.join(args)}[/]")
    proc = subprocess.run(argv, capture_output=True, text=True)
    if show and proc.stdout.strip():
        console.print(proc.stdout.rstrip(), markup=False)
    if check and proc.returncode != 0:
        raise DemoError(f"vdfarm {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _pick_port(preferred: int = 10809) -> int:
    if _port_free(preferred):
        return preferred
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _prepare(data_dir: Path) -> None:
    if not (data_dir / "server.json").exists():
        _vdfarm(data_dir, "init")
    image = data_dir / "sample.raw"
    if not image.exists():
        _vdfarm(data_dir, "image", "sample", str(image))
    if _vdfarm(data_dir, "vdisk", "show", VDISK, show=False, check=False).returncode != 0:
        _vdfarm(data_dir, "vdisk", "import", VDISK, str(image), "--mode", "standard")
    for name, mac in DEVICES:
        if _vdfarm(data_dir, "device", "show", name, show=False, check=False).returncode != 0:
            _vdfarm(data_dir, "device", "add", name, "--mac", mac, "--vdisk", VDISK)
    _vdfarm(data_dir, "device", "list")


def _start_server(data_dir: Path, port: int) -> subprocess.Popen:
    console.print(f"[bold cyan]$ vdfarm --data-dir {data_dir} server run --nbd-port {port} &[/]")
    with open(data_dir / "demo-server.log", "ab") as log:  # the child keeps its own copy
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "vdfarm",
                "--data-dir",
                str(data_dir),
                "server",
                "run",
                "--nbd-port",
                str(port),
                "--grace",
                "10",
                "--no-api",
            ],
            stdout=log,
            stderr=log,
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise DemoError(
                f"the server exited ({proc.returncode}); see {data_dir / 'demo-server.log'}"
            )
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc
        except OSError:
            time.sleep(0.1)
    raise DemoError("the server did not start listening within 30 s")


def _boot(data_dir: Path, port: int) -> None:
    device = DEVICES[0][0]
    url = f"nbd://127.0.0.1:{port}/{device}"
    console.print(f"\n[bold]Booting a VM (qemu, TCG) from {url} ...[/]")
    with vm.start(url, device, extra_args=("-no-shutdown",)) as handle:
        if not handle.wait_for("VDFARM-DONE", timeout=240):
            raise DemoError("the VM did not finish booting in 240 s:\n" + handle.serial_text())
        serial = handle.serial_text()
        console.print("[bold]Guest serial console:[/]")
        for line in serial.replace("\r", "").splitlines():
            style = "green" if line.startswith("VDFARM-") else "dim"
            console.print(f"  [{style}]{line}[/]", markup=True, highlight=False)
        fields = vm.parse_serial(serial)
        if not (fields.booted and fields.readback == "ok"):
            raise DemoError("the guest did not report a good boot")
        _check_write_cache(data_dir, device)


def _check_write_cache(data_dir: Path, device: str) -> None:
    info = json.loads(_vdfarm(data_dir, "--json", "device", "show", device, show=False).stdout)
    cache = data_dir / "cache" / f"device-{info['id']}.wcache"
    size = (data_dir / "store" / VDISK / "base.raw").stat().st_size
    with open(cache, "rb") as f:
        f.seek(sample.pattern_offset(size))
        block = f.read(sample.PATTERN_BLOCK_SIZE)
    if block != sample.expected_pattern(device):
        raise DemoError(f"the guest's write is not in its write cache {cache}")
    console.print(
        f"\n[green]The guest booted from vdfarm; its write landed in its own "
        f"write cache ({cache}); the vDisk itself is untouched.[/]"
    )


def _how_to_connect(data_dir: Path, port: int) -> None:
    console.print(f"""
[bold]Your turn.[/] Start the server again (foreground, Ctrl-C stops it):
  vdfarm --data-dir {data_dir} server run --nbd-port {port}
then connect any NBD client with a device name (or MAC) as the export name:
  nbdinfo nbd://127.0.0.1:{port}/pc1
  qemu-img compare nbd://127.0.0.1:{port}/vdisk/{VDISK} {data_dir}/sample.raw
  qemu-system-x86_64 -accel tcg -m 256 -nographic \\
      -drive file=nbd://127.0.0.1:{port}/pc2,format=raw,if=virtio
  nbd-client 127.0.0.1 {port} /dev/nbd0 -N pc1     (the Linux kernel's client)
Manage the farm with: vdfarm --data-dir {data_dir} vdisk|device|version|lock|audit ... (--help)
or through the REST API that `server run` also serves (port 8080 unless --api-port;
OpenAPI at http://127.0.0.1:8080/openapi.json; changes need the bearer token in
{data_dir}/api-token).""")


def run(data_dir: str | os.PathLike) -> int:
    """Run the demo; return the process exit code."""
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    port = _pick_port()
    server = None
    try:
        _prepare(data_dir)
        server = _start_server(data_dir, port)
        _boot(data_dir, port)
    except (DemoError, vm.VmError) as exc:
        console.print(f"[bold red]demo failed:[/] {exc}")
        return 1
    finally:
        if server is not None:
            server.terminate()
            server.wait(30)
    _how_to_connect(data_dir, port)
    return 0
