"""Benchmark: a diskless VM's PXE boot from vdfarm against the same kernel,
initramfs and root given to it by hand (qemu -kernel/-initrd, nbdkit).

Job: the network-bootable sample (`vdfarm image sample --netboot`: kernel,
busybox initramfs with nbd-client, ext4 root of SIZE MiB) booted by a qemu
VM (TCG, 256 MiB, virtio-net on qemu's user network) two ways:

  vdfarm   no disk, `-boot n`: the NIC's iPXE gets
           `http://10.0.2.2:PORT/boot/ipxe?mac=${net0/mac}` from qemu's
           DHCP; a real `vdfarm server run` (standard vDisk, one device per
           boot so no boot meets an earlier one's write cache) logs the
           device in, answers the script, the kernel and the initramfs
           (/boot/files) and the NBD root.
  direct   `-kernel/-initrd` from the host's files, the sample's command
           line pointing at nbdkit (file plugin, on loopback) serving a
           fresh copy of the root.
  static   (for the breakdown) the same diskless PXE boot as vdfarm's but
           from static files: lighttpd serves a fixed iPXE script, the
           kernel and the initramfs; the root is nbdkit's, as direct. So
           vdfarm - static is what vdfarm adds, static - direct what the
           firmware (SeaBIOS, iPXE: DHCP, HTTP over the emulated NIC) adds.

Both servers run before qemu starts. Each boot is timed from qemu's start
(power-on) to the root's /sbin/init marker (VDFARM-ROOT-UP) and to its
last (VDFARM-ROOT-DONE: write, read back); a boot whose read-back fails
stops the run. The ways alternate, ROUNDS rounds. Prints every boot,
the medians, vdfarm / direct and vdfarm / static. Target (issue 12):
vdfarm at most 1.2x direct.

The machine is shared and TCG is CPU-bound: the same-run ratio is the
result, not the seconds. While it runs, /tmp/bench-quiet exists (other
work on the machine holds back); it is removed at the end, also on failure.

Usage: PYTHONPATH=. .venv/bin/python bench/pxe_boot_bench.py [--rounds 5]
       [--size-mib 32]
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from boot_files_bench import free_port, wait_port

from vdfarm.image import netboot, vm

VDFARM = [sys.executable, "-m", "vdfarm"]
QUIET_FLAG = Path("/tmp/bench-quiet")
HOST_FROM_GUEST = "10.0.2.2"  # the host's loopback, through qemu's user network
UP, DONE = "VDFARM-ROOT-UP", "VDFARM-ROOT-DONE"
BOOT_TIMEOUT = 300.0
WAYS = ("vdfarm", "direct", "static")


@contextlib.contextmanager
def process(argv: list[str], port: int, log: Path) -> Iterator[subprocess.Popen]:
    """ARGV running (its output appended to LOG) once PORT listens."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=out)
    try:
        wait_port(port, timeout=60)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def timed(start: Callable[[], vm.VmHandle]) -> tuple[float, float]:
    """(seconds to UP, seconds to DONE) of the VM START starts."""
    t0 = time.perf_counter()
    handle = start()
    try:
        up = None
        deadline = time.monotonic() + BOOT_TIMEOUT
        while True:
            text = handle.serial_text()
            now = time.perf_counter() - t0
            if up is None and UP in text:
                up = now
            if DONE in text:
                break
            if "VDFARM-ERROR" in text or not handle.running() or time.monotonic() > deadline:
                raise RuntimeError(f"bench: the VM failed: {text[-2000:]}")
            time.sleep(0.01)
        if "VDFARM-ROOT-READBACK ok" not in text:
            raise RuntimeError(f"bench: the guest's read-back failed: {text[-2000:]}")
        assert up is not None
        return up, now
    finally:
        handle.close()


def vdfarm_farm(work: Path, sample: netboot.NetbootSample, rounds: int) -> tuple[list[str], int]:
    """A data directory with vDisk nb (the sample, with its boot files) and
    devices pc0..pcN (one per round, MACs 52:54:00:00:01:NN); the argv of
    its server and its API port."""
    cli = [*VDFARM, "--data-dir", str(work / "data")]
    commands = [
        ["init"],
        ["vdisk", "import", "nb", str(sample.root)],
        ["vdisk", "boot", "nb", "--kernel", str(sample.kernel), "--initrd", str(sample.initrd)]
        + ["--cmdline", sample.cmdline],
    ]
    commands += [
        ["device", "add", f"pc{n}", "--vdisk", "nb", "--mac", mac(n)] for n in range(rounds)
    ]
    for args in commands:
        subprocess.run(cli + args, check=True, capture_output=True)
    api_port = free_port()
    argv = cli + ["server", "run", "--nbd-port", str(free_port()), "--api-port", str(api_port)]
    argv += ["--advertise", HOST_FROM_GUEST, "--no-replication"]
    return argv, api_port


def mac(n: int) -> str:
    return f"52:54:00:00:01:{n:02x}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--size-mib", type=int, default=32)
    args = parser.parse_args()
    if not 1 <= args.rounds <= 200:
        sys.exit("give --rounds from 1 to 200")
    for tool in ("nbdkit", "lighttpd", vm.QEMU):
        if shutil.which(tool) is None:
            sys.exit(f"missing {tool}")
    QUIET_FLAG.touch()
    try:
        with tempfile.TemporaryDirectory(prefix="vdfarm-pxebench-") as tmp:
            run(Path(tmp), args.rounds, args.size_mib)
    finally:
        QUIET_FLAG.unlink(missing_ok=True)


@contextlib.contextmanager
def nbdkit_root(work: Path, sample: netboot.NetbootSample) -> Iterator[int]:
    """nbdkit (file plugin) serving a fresh copy of the sample's root; its port."""
    root = work / "nbdkit.raw"
    shutil.copyfile(sample.root, root)
    port = free_port()
    argv = ["nbdkit", "-f", "-i", "127.0.0.1", "-p", str(port), "file", str(root)]
    with process(argv, port, work / "nbdkit.log"):
        yield port


def static_www(
    work: Path, sample: netboot.NetbootSample, http_port: int, nbd_port: int, boot_id: str
) -> Path:
    """The document root of the static PXE boot: kernel, initrd and a script
    booting them from HTTP_PORT with the root at NBD_PORT."""
    www = work / "www"
    if not www.exists():
        www.mkdir()
        shutil.copyfile(sample.kernel, www / "vmlinuz")
        shutil.copyfile(sample.initrd, www / "initrd")
    base = f"http://{HOST_FROM_GUEST}:{http_port}"
    append = netboot.device_cmdline(
        sample.cmdline, f"{HOST_FROM_GUEST}:{nbd_port}", "root", boot_id
    )
    (www / "boot.ipxe").write_text(
        f"#!ipxe\nkernel {base}/vmlinuz {append}\ninitrd {base}/initrd\nboot\n"
    )
    return www


def lighttpd(work: Path, www: Path, port: int) -> list[str]:
    """The argv of lighttpd serving WWW on 127.0.0.1:PORT (Debian's defaults)."""
    conf = work / "lighttpd.conf"
    conf.write_text(
        f'server.document-root = "{www}"\nserver.bind = "127.0.0.1"\n'
        f"server.port = {port}\n"
        f'server.errorlog = "{work / "lighttpd.err"}"\n'
        'mimetype.assign = ("" => "application/octet-stream")\n'
    )
    return ["lighttpd", "-D", "-f", str(conf)]


def run(work: Path, rounds: int, size_mib: int) -> None:
    sample = netboot.build(work / "sample", size_mib=size_mib)
    argv, api_port = vdfarm_farm(work, sample, rounds)
    bootfile = f"http://{HOST_FROM_GUEST}:{api_port}/boot/ipxe?mac=${{net0/mac}}"
    times: dict[str, list[tuple[float, float]]] = {w: [] for w in WAYS}
    with process(argv, api_port, work / "vdfarm.log"):
        for n in range(rounds):
            times["vdfarm"].append(timed(lambda n=n: vm.start_netboot(mac(n), bootfile, f"pxe{n}")))
            with nbdkit_root(work, sample) as nbd_port:
                append = netboot.device_cmdline(
                    sample.cmdline, f"{HOST_FROM_GUEST}:{nbd_port}", "root", f"direct{n}"
                )
                times["direct"].append(
                    timed(
                        lambda n=n, append=append: vm.start_kernel(
                            sample.kernel,
                            sample.initrd,
                            append,
                            f"direct{n}",
                            extra_args=tuple(vm.user_nic_args()),
                        )
                    )
                )
            with nbdkit_root(work, sample) as nbd_port:
                http_port = free_port()
                www = static_www(work, sample, http_port, nbd_port, f"static{n}")
                httpd = lighttpd(work, www, http_port)
                url = f"http://{HOST_FROM_GUEST}:{http_port}/boot.ipxe"
                with process(httpd, http_port, work / "lighttpd.log"):
                    times["static"].append(
                        timed(lambda n=n, url=url: vm.start_netboot(mac(99), url, f"static{n}"))
                    )
            print(
                f"round {n + 1}: "
                + ", ".join(
                    f"{w} {times[w][-1][0]:.1f} s (done {times[w][-1][1]:.1f})" for w in WAYS
                ),
                flush=True,
            )
    report(times, size_mib)


def report(times: dict[str, list[tuple[float, float]]], size_mib: int) -> None:
    print(f"\n{len(times['vdfarm'])} rounds, {size_mib} MiB root; seconds from qemu's start")
    medians = {}
    for way, boots in times.items():
        ups = [up for up, _ in boots]
        dones = [done for _, done in boots]
        medians[way] = (statistics.median(ups), statistics.median(dones))
        print(
            f"{way:7s} to init: {' '.join(f'{t:5.1f}' for t in ups)}   median {medians[way][0]:.1f}"
        )
        print(
            f"{way:7s} to done: {' '.join(f'{t:5.1f}' for t in dones)}   "
            f"median {medians[way][1]:.1f}"
        )
    for other in ("direct", "static"):
        ratio_up = medians["vdfarm"][0] / medians[other][0]
        ratio_done = medians["vdfarm"][1] / medians[other][1]
        target = " (target <= 1.2x)" if other == "direct" else ""
        print(f"vdfarm / {other}: {ratio_up:.2f}x to init, {ratio_done:.2f}x to done{target}")


if __name__ == "__main__":
    main()
