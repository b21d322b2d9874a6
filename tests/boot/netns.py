"""A boot network for tests: a network namespace of its own with a bridge
(BRIDGE_ADDRESS/24) and a tap on it for a qemu VM, the processes the test
runs inside it (dnsmasq, a vdfarm server, an HTTP recorder, the VM), and
its removal with everything in it.

Rules: everything lives inside the namespace this module creates (so its
servers may listen on the bridge address: nothing outside can reach it);
the namespace's name is unique per test; `close` stops the processes it
started, kills any other process still in the namespace (only the test's
own can be there), and deletes the namespace, which takes its links with
it. Needs root and iproute2; `NamespaceUnavailable` says why not.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from vdfarm.image import vm

BRIDGE = "vdbr0"
TAP = "vdtap0"
BRIDGE_ADDRESS = "10.213.0.1"
PREFIX = 24
DHCP_RANGE = "10.213.0.100,10.213.0.150,255.255.255.0"
# The site's own DHCP server (beside a proxy), in a second namespace.
SITE_ADDRESS = "10.213.0.2"
SITE_RANGE = "10.213.0.160,10.213.0.199,255.255.255.0"
DNSMASQ = "/usr/sbin/dnsmasq"
RECORDER = Path(__file__).with_name("http_recorder.py")
_names = itertools.count(1)

# Connects to HOST:PORT until it works or DEADLINE seconds pass (run inside the namespace).
WAIT_TCP = """
import socket, sys, time
host, port, deadline = sys.argv[1], int(sys.argv[2]), time.monotonic() + float(sys.argv[3])
while time.monotonic() < deadline:
    try:
        socket.create_connection((host, port), timeout=0.5).close()
        sys.exit(0)
    except OSError:
        time.sleep(0.1)
sys.exit(1)
"""


class NamespaceUnavailable(RuntimeError):
    """This machine cannot create network namespaces (not root, no iproute2...)."""


class BootNetwork:
    """A network namespace with a bridge and a tap. Use as a context manager."""

    def __init__(self) -> None:
        self.name = f"vdfarm-pxe-{os.getpid()}-{next(_names)}"
        self.site = f"{self.name}-site"
        self.processes: list[subprocess.Popen] = []
        try:
            subprocess.run(
                ["ip", "netns", "add", self.name], check=True, capture_output=True, text=True
            )
        except FileNotFoundError as exc:
            raise NamespaceUnavailable("no `ip` command (apt-get install iproute2)") from exc
        except subprocess.CalledProcessError as exc:
            raise NamespaceUnavailable(
                f"`ip netns add` failed: {exc.stderr.strip() or exc.returncode}"
            ) from exc
        try:
            for command in (
                "ip link set lo up",
                f"ip link add {BRIDGE} type bridge",
                f"ip addr add {BRIDGE_ADDRESS}/{PREFIX} dev {BRIDGE}",
                f"ip link set {BRIDGE} up",
                f"ip tuntap add dev {TAP} mode tap",
                f"ip link set {TAP} master {BRIDGE}",
                f"ip link set {TAP} up",
            ):
                self.run(command.split())
        except subprocess.CalledProcessError as exc:
            self.close()
            raise NamespaceUnavailable(f"{' '.join(exc.cmd)}: {exc.stderr.strip()}") from exc

    def __enter__(self) -> BootNetwork:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def argv(self, argv: list[str]) -> list[str]:
        """ARGV run inside the namespace."""
        return ["ip", "netns", "exec", self.name, *argv]

    def run(self, argv: list[str], timeout: float = 60) -> subprocess.CompletedProcess:
        """Run ARGV inside the namespace to its end (raises CalledProcessError)."""
        return subprocess.run(
            self.argv(argv), check=True, capture_output=True, text=True, timeout=timeout
        )

    def start(self, argv: list[str], log: Path) -> subprocess.Popen:
        """Start ARGV inside the namespace (stdout and stderr to LOG); stopped by close."""
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                self.argv(argv), stdin=subprocess.DEVNULL, stdout=out, stderr=out
            )
        self.processes.append(proc)
        return proc

    def wait_tcp(self, port: int, host: str = BRIDGE_ADDRESS, timeout: float = 30) -> bool:
        """Whether something accepts on HOST:PORT inside the namespace within TIMEOUT."""
        done = subprocess.run(
            self.argv([sys.executable, "-c", WAIT_TCP, host, str(port), str(timeout)]),
            capture_output=True,
            timeout=timeout + 30,
        )
        return done.returncode == 0

    def dnsmasq(self, conf: Path, workdir: Path) -> tuple[subprocess.Popen, Path, Path]:
        """Start dnsmasq with CONF (its log and leases in WORKDIR); return
        it, its log and its lease file once it serves DHCP.

        It keeps root (`--user=root`): pytest's directories are private to
        root, and dnsmasq's default user could not read its TFTP root there.
        Raises RuntimeError (it exits, or does not start within 30 s).
        """
        log, leases = workdir / "dnsmasq.log", workdir / "dnsmasq.leases"
        proc = self.start(
            [
                DNSMASQ,
                "--keep-in-foreground",
                f"--conf-file={conf}",
                "--log-dhcp",
                f"--log-facility={log}",
                f"--dhcp-leasefile={leases}",
                "--pid-file=",
                "--user=root",
                "--group=root",
            ],
            workdir / "dnsmasq.out",
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            text = log.read_text(errors="replace") if log.exists() else ""
            if "TFTP root is" in text and "DHCP, " in text:
                return proc, log, leases
            if proc.poll() is not None:
                break
            time.sleep(0.1)
        out = (workdir / "dnsmasq.out").read_text(errors="replace")
        raise RuntimeError(f"dnsmasq did not start: {out.strip()[-500:]}")

    def site_dhcp(self, workdir: Path) -> Path:
        """The site's own DHCP server (addresses only, no boot information):
        dnsmasq in a second namespace, on a veth whose other end is on the
        bridge. Its lease file.

        Raises subprocess.CalledProcessError, RuntimeError (it does not start).
        """
        subprocess.run(["ip", "netns", "add", self.site], check=True, capture_output=True)
        self.run(["ip", "link", "add", "vdsite0", "type", "veth", "peer", "name", "vdsite1"])
        self.run(["ip", "link", "set", "vdsite1", "netns", self.site])
        self.run(["ip", "link", "set", "vdsite0", "master", BRIDGE])
        self.run(["ip", "link", "set", "vdsite0", "up"])
        site = ["ip", "netns", "exec", self.site]
        for command in (
            f"ip addr add {SITE_ADDRESS}/{PREFIX} dev vdsite1",
            "ip link set vdsite1 up",
        ):
            subprocess.run([*site, *command.split()], check=True, capture_output=True)
        conf = workdir / "site-dhcp.conf"
        conf.write_text(f"port=0\ninterface=vdsite1\nbind-interfaces\ndhcp-range={SITE_RANGE},1h\n")
        log, leases = workdir / "site-dhcp.log", workdir / "site-dhcp.leases"
        with open(workdir / "site-dhcp.out", "ab") as out:
            proc = subprocess.Popen(
                [
                    *site,
                    DNSMASQ,
                    "--keep-in-foreground",
                    f"--conf-file={conf}",
                    f"--log-facility={log}",
                    f"--dhcp-leasefile={leases}",
                    "--pid-file=",
                    "--user=root",
                    "--group=root",
                ],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
            )
        self.processes.append(proc)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if log.exists() and "DHCP, " in log.read_text(errors="replace"):
                return leases
            if proc.poll() is not None:
                break
            time.sleep(0.1)
        raise RuntimeError("the site's DHCP server did not start")

    def start_vm(self, mac: str, serial_id: str, memory_mib: int = 256) -> vm.VmHandle:
        """A diskless VM on the tap that boots from the network (`-boot n`,
        TCG, qemu's built-in iPXE ROM on a virtio NIC with MAC); its serial
        console (SeaBIOS's and iPXE's messages, then the kernel's) in the
        handle."""
        workdir = tempfile.TemporaryDirectory(prefix="vdfarm-vm-")
        serial = Path(workdir.name) / "serial.txt"
        # SeaBIOS copies the screen (iPXE's messages) to COM1 when told its port.
        sercon = Path(workdir.name) / "sercon-port"
        sercon.write_bytes((0x3F8).to_bytes(2, "little"))
        argv = self.argv(
            [
                *vm.machine_args(serial_id, serial, memory_mib, vm.QEMU),
                "-fw_cfg",
                f"name=etc/sercon-port,file={sercon}",
                "-boot",
                "n",
                "-netdev",
                f"tap,id=boot,ifname={TAP},script=no,downscript=no",
                "-device",
                f"virtio-net-pci,netdev=boot,mac={mac}",
            ]
        )
        return vm.VmHandle(argv, serial_id, serial, workdir)

    def pids(self) -> list[int]:
        found = []
        for name in (self.name, self.site):
            done = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True)
            found += [int(p) for p in done.stdout.split()]
        return found

    def close(self) -> None:
        """Stop what was started here, then remove the namespace and its links."""
        for proc in self.processes:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.processes:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        for pid in self.pids():  # anything a started process left behind
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        for name in (self.site, self.name):
            subprocess.run(["ip", "netns", "delete", name], capture_output=True)
