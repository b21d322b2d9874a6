"""Benchmark: vdfarm vs nbdkit vs qemu-nbd serving the same file, in one run.

Job: start each server on loopback in turn, drive it with the same real
clients (fio's nbd engine, nbdcopy), and print figures and ratios (vdfarm /
peer). Machines here are noisy, so only the ratios of one run mean much;
every job runs `--rounds` times, interleaved across servers, and the median
is kept.

Lines:
  randread-4k-qd32   fio nbd engine, 4 KiB random read, iodepth 32   (IOPS)
  seqread-1m-qd8     fio nbd engine, 1 MiB sequential read, iodepth 8 (MiB/s)
  nbdcopy-1g         nbdcopy of the whole image to null:            (MiB/s)
each for a plain export (vdfarm private mode, nbdkit -r file, qemu-nbd -r)
and a copy-on-write export (vdfarm standard mode with its write cache,
nbdkit --filter=cow, qemu-nbd --snapshot).

Variants, in the same run (so their ratios share the machine's noise):
  --no-limits  adds `vdfarm-nolim`: vdfarm with every NBD bound off
               (--max-connections 0 --max-connections-per-address 0
               --max-handshaking 0 --handshake-timeout 0
               --max-reply-buffer-kib 0); "vdfarm / vdfarm-nolim" is what
               the bounds cost.
  --tls        adds the same jobs over TLS (x509, one throw-away CA made by
               openssl; client certificate CN=admin, verified by every
               server): `vdfarm-tls` (--tls require --tls-cert --tls-key
               --tls-ca), `nbdkit-tls` (--tls=require --tls-certificates DIR
               --tls-verify-peer), `qemu-nbd-tls` (--object
               tls-creds-x509,endpoint=server --tls-creds); clients use
               nbds://…?tls-certificates=DIR (fio's nbd engine, nbdcopy).

Usage: .venv/bin/python bench/nbd_bench.py [--size-mib 1024] [--runtime 8] [--rounds 3]
       [--tls] [--no-limits] [--only vdfarm,vdfarm-nolim]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VDFARM = [sys.executable, "-m", "vdfarm"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"port {port} never opened")


def openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True, timeout=60)


def make_pki(root: Path) -> tuple[Path, Path]:
    """(server dir, client dir) in the layout nbdkit, qemu and libnbd read
    (ca-cert.pem + server-cert/key.pem, ca-cert.pem + client-cert/key.pem);
    the client is `admin`, so vdfarm lets it open every export."""
    server, client = root / "server", root / "client"
    server.mkdir(parents=True)
    client.mkdir()
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes")
    ca, ca_key = server / "ca-cert.pem", root / "ca-key.pem"
    openssl("req", "-x509", *ec, "-keyout", ca_key, "-out", ca, "-days", "2",
            "-subj", "/CN=bench ca", "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign")  # fmt: skip
    for where, role, cn, ext in (
        (server, "server", "127.0.0.1", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth"),
        (client, "client", "admin", "extendedKeyUsage=clientAuth"),
    ):
        (root / f"{role}.ext").write_text(ext + "\n")
        openssl("req", *ec, "-keyout", where / f"{role}-key.pem", "-out", root / f"{role}.csr",
                "-subj", f"/CN={cn}")  # fmt: skip
        openssl("x509", "-req", "-in", root / f"{role}.csr", "-CA", ca, "-CAkey", ca_key,
                "-CAcreateserial", "-days", "2", "-extfile", root / f"{role}.ext",
                "-out", where / f"{role}-cert.pem")  # fmt: skip
    shutil.copy(ca, client / "ca-cert.pem")
    return server, client


def make_image(path: Path, size_mib: int) -> None:
    """Random (incompressible, fully allocated) content."""
    with open(path, "wb") as f:
        chunk = os.urandom(1 << 20)
        for i in range(size_mib):
            f.write(chunk[i % 7 :] + chunk[: i % 7])


class Server:
    """One server under test: a command line and the URIs it serves."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        port: int,
        plain: str,
        cow: str,
        env=None,
        tls_client: Path | None = None,
    ) -> None:
        self.name, self.argv, self.port = name, argv, port
        self.tls_client = tls_client
        self.plain_uri = self.uri(port, plain)
        self.cow_uri = self.uri(port, cow)
        self.env = env
        self.procs: list[subprocess.Popen] = []

    def uri(self, port: int, export: str) -> str:
        """nbd://, or nbds:// with the client's certificates under TLS."""
        if self.tls_client is None:
            return f"nbd://127.0.0.1:{port}/{export}"
        return f"nbds://127.0.0.1:{port}/{export}?tls-certificates={self.tls_client}"

    def start(self) -> None:
        proc = subprocess.Popen(
            self.argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=self.env
        )
        self.procs.append(proc)
        wait_port(self.port, proc)

    def stop(self) -> None:
        for p in self.procs:
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        self.procs.clear()


def fio_over_tls(uri: str) -> tuple[list[str], str, dict[str, str] | None]:
    """(command prefix, URI, environment) for fio on URI. fio's nbd engine
    does not let libnbd read files named in a URI (`tls-certificates=`), so
    over TLS the certificates go where libnbd looks by default:
    $HOME/.pki/libnbd, for a user other than root (root's default is the
    system's /etc/pki/libnbd, which a benchmark should not touch): fio runs
    as `nobody` with a private HOME holding a copy of them."""
    if "?tls-certificates=" not in uri:
        return [], uri, None
    bare, certs = uri.split("?tls-certificates=", 1)
    home = Path(certs).parent / "fio-home"
    if not home.exists():
        shutil.copytree(certs, home / ".pki" / "libnbd")
        if os.geteuid() == 0:
            for above in (home.parent, home.parent.parent):  # private dirs: nobody may pass
                os.chmod(above, 0o711)
            for path in (home, *home.rglob("*")):
                shutil.chown(path, "nobody")
    env = dict(os.environ, HOME=str(home))
    if os.geteuid() != 0:
        return [], bare, env
    return ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"], bare, env


def fio(uri: str, rw: str, bs: str, depth: int, runtime: int, size: int) -> dict:
    prefix, uri, env = fio_over_tls(uri)
    cmd = [
        *prefix,
        "fio",
        "--name=bench",
        "--ioengine=nbd",
        f"--uri={uri}",
        f"--rw={rw}",
        f"--bs={bs}",
        f"--iodepth={depth}",
        f"--runtime={runtime}",
        "--time_based",
        f"--size={size}",
        "--output-format=json",
        "--numjobs=1",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"fio on {uri} failed: {proc.stdout[-500:]}{proc.stderr[-500:]}")
    out = proc.stdout
    job = json.loads(out[out.index("{") :])["jobs"][0]["read"]
    return {"iops": job["iops"], "mibps": job["bw_bytes"] / (1 << 20)}


def nbdcopy(uri: str, size: int) -> dict:
    t0 = time.perf_counter()
    subprocess.run(["nbdcopy", uri, "null:"], check=True)
    dt = time.perf_counter() - t0
    return {"mibps": size / (1 << 20) / dt, "seconds": dt}


def setup_vdfarm(
    work: Path,
    image: Path,
    port: int,
    name: str = "vdfarm",
    extra: tuple[str, ...] = (),
    tls_client: Path | None = None,
) -> Server:
    """A farm of its own (each vdfarm variant is its own server process)."""
    data = work / f"{name}-data"
    env = dict(os.environ, VDFARM_DATA_DIR=str(data))

    def run(*a):
        return subprocess.run(
            VDFARM + list(a),
            check=True,
            env=env,
            stdout=subprocess.DEVNULL,
        )

    run("init")
    run("vdisk", "import", "plain", str(image), "--mode", "private")
    run("vdisk", "import", "golden", str(image), "--mode", "standard")
    run("device", "add", "bench-plain", "--vdisk", "plain")
    run("device", "add", "bench-cow", "--vdisk", "golden")
    argv = VDFARM + ["server", "run", "--nbd-port", str(port), "--grace", "0", "--no-api", *extra]
    return Server(name, argv, port, "bench-plain", "bench-cow", env=env, tls_client=tls_client)


NO_LIMITS = (
    "--max-connections", "0", "--max-connections-per-address", "0", "--max-handshaking", "0",
    "--handshake-timeout", "0", "--max-reply-buffer-kib", "0",
)  # fmt: skip


def servers(
    work: Path, image: Path, no_limits: bool = False, tls: tuple[Path, Path] | None = None
) -> list[Server]:
    """The servers of one run: vdfarm, nbdkit, qemu-nbd [, vdfarm-nolim]
    [, the three over TLS]."""
    out = [setup_vdfarm(work, image, free_port())]
    out += peers(image)
    if no_limits:
        out.append(setup_vdfarm(work, image, free_port(), "vdfarm-nolim", NO_LIMITS))
    if tls is not None:
        server_dir, client_dir = tls
        files = (
            "--tls", "require", "--tls-cert", str(server_dir / "server-cert.pem"),
            "--tls-key", str(server_dir / "server-key.pem"),
            "--tls-ca", str(server_dir / "ca-cert.pem"),
        )  # fmt: skip
        out.append(setup_vdfarm(work, image, free_port(), "vdfarm-tls", files, client_dir))
        out += peers(image, server_dir, client_dir)
    return out


def peers(image: Path, tls_server: Path | None = None, tls_client: Path | None = None):
    """nbdkit and qemu-nbd, plain, or over TLS with the certificates in
    TLS_SERVER (client certificates verified) when it is given."""
    suffix = "" if tls_server is None else "-tls"
    nbdkit_tls = [] if tls_server is None else [
        "--tls=require", "--tls-certificates", str(tls_server), "--tls-verify-peer",
    ]  # fmt: skip
    qemu_tls = [] if tls_server is None else [
        "--object", f"tls-creds-x509,id=tls0,dir={tls_server},endpoint=server",
        "--tls-creds", "tls0",
    ]  # fmt: skip
    out: list[Server] = []
    p1, p2 = free_port(), free_port()
    out.append(
        _Pair(
            "nbdkit" + suffix,
            [
                "nbdkit",
                "-f",
                "-r",
                "-i",
                "127.0.0.1",
                "-p",
                str(p1),
                *nbdkit_tls,
                "file",
                str(image),
            ],  # fmt: skip
            [
                "nbdkit",
                "-f",
                "-i",
                "127.0.0.1",
                "-p",
                str(p2),
                *nbdkit_tls,
                "--filter=cow",
                "file",
                str(image),
            ],  # fmt: skip
            p1,
            p2,
            tls_client,
        )
    )
    p3, p4 = free_port(), free_port()
    out.append(
        _Pair(
            "qemu-nbd" + suffix,
            [
                "qemu-nbd",
                *qemu_tls,
                "-r",
                "-f",
                "raw",
                "-b",
                "127.0.0.1",
                "-p",
                str(p3),
                "--persistent",
                "--shared=16",
                "-x",
                "",
                str(image),
            ],
            [
                "qemu-nbd",
                *qemu_tls,
                "-s",
                "-f",
                "raw",
                "-b",
                "127.0.0.1",
                "-p",
                str(p4),
                "--persistent",
                "--shared=16",
                "-x",
                "",
                str(image),
            ],
            p3,
            p4,
            tls_client,
        )
    )
    return out


class _Pair(Server):
    """A peer that needs two processes: one plain, one copy-on-write."""

    def __init__(self, name, plain_argv, cow_argv, plain_port, cow_port, tls_client=None) -> None:
        super().__init__(name, plain_argv, plain_port, "", "", tls_client=tls_client)
        self.cow_argv, self.cow_port = cow_argv, cow_port
        self.cow_uri = self.uri(cow_port, "")

    def start(self) -> None:
        for argv, port in ((self.argv, self.port), (self.cow_argv, self.cow_port)):
            proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            self.procs.append(proc)
            wait_port(port, proc)


def jobs(size: int, runtime: int):
    return [
        ("randread-4k-qd32", "iops", lambda u: fio(u, "randread", "4k", 32, runtime, size)),
        ("seqread-1m-qd8", "mibps", lambda u: fio(u, "read", "1m", 8, runtime, size)),
        ("nbdcopy-1g", "mibps", lambda u: nbdcopy(u, size)),
    ]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--runtime", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--tls", action="store_true", help="also run every job over TLS")
    ap.add_argument(
        "--no-limits", action="store_true", help="also run vdfarm with every NBD bound off"
    )
    ap.add_argument(
        "--only",
        help="comma-separated server names to run (e.g. vdfarm,vdfarm-nolim): a focused A/B "
        "with more rounds in the same time",
    )
    args = ap.parse_args()
    for tool in ("fio", "nbdkit", "qemu-nbd", "nbdcopy", *(("openssl",) if args.tls else ())):
        if shutil.which(tool) is None:
            sys.exit(f"bench: {tool} is not installed (run scripts/install.sh --test)")
    size = args.size_mib << 20
    results: dict[tuple[str, str, str], list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="vdfarm-bench-", dir="/var/tmp") as tmp:
        work = Path(tmp)
        image = work / "image.raw"
        make_image(image, args.size_mib)
        tls = make_pki(work / "pki") if args.tls else None
        peers = servers(work, image, no_limits=args.no_limits, tls=tls)
        if args.only:
            wanted = set(args.only.split(","))
            unknown = wanted - {srv.name for srv in peers}
            if unknown:
                sys.exit(f"bench: --only names no server of this run: {', '.join(sorted(unknown))}")
            peers = [srv for srv in peers if srv.name in wanted]
        try:
            for srv in peers:  # all up at once; idle ones cost nothing
                srv.start()
            # Interleave finely: the same job on each server back to back, so
            # the machine's noise hits all three alike within a round.
            for rnd in range(args.rounds):
                for name, metric, run in jobs(size, args.runtime):
                    for kind in ("plain", "cow"):
                        for srv in peers:
                            uri = srv.plain_uri if kind == "plain" else srv.cow_uri
                            value = run(uri)[metric]
                            results.setdefault((srv.name, kind, name), []).append(value)
                            print(
                                f"round {rnd + 1} {srv.name:12} {kind:5} {name:18} "
                                f"{value:12.1f} {metric}",
                                flush=True,
                            )
        finally:
            for srv in peers:
                srv.stop()
    report(results, args, [srv.name for srv in peers])
    return 0


def ratio(results, a: tuple, b: tuple) -> float:
    """Median over rounds of a/b measured in the same round."""
    return statistics.median(x / y for x, y in zip(results[a], results[b], strict=True))


# (numerator, denominator, column title): the ratios printed when both ran.
RATIOS = (
    ("vdfarm", "nbdkit", "vs nbdkit"),
    ("vdfarm", "qemu-nbd", "vs qemu"),
    ("vdfarm", "vdfarm-nolim", "limits"),
    ("vdfarm-tls", "nbdkit-tls", "tls vs nbdkit"),
    ("vdfarm-tls", "qemu-nbd-tls", "tls vs qemu"),
    ("vdfarm-tls", "vdfarm", "tls/plain"),
)


def report(results, args, names_run: list[str]) -> None:
    med = {k: statistics.median(v) for k, v in results.items()}
    names = [n for n, _, _ in jobs(0, 0)]
    ratios = [r for r in RATIOS if r[0] in names_run and r[1] in names_run]
    print()
    print(
        f"{args.rounds} rounds, image {args.size_mib} MiB, fio runtime {args.runtime}s; "
        f"figures are medians, ratios are medians of same-round ratios"
    )
    print(f"{'job':18} {'kind':5} " + " ".join(f"{n:>12}" for n in names_run))
    for kind in ("plain", "cow"):
        for name in names:
            row = " ".join(f"{med[(s, kind, name)]:12.0f}" for s in names_run)
            print(f"{name:18} {kind:5} {row}")
    print()
    print(f"{'job':18} {'kind':5} " + " ".join(f"{t:>13}" for _, _, t in ratios))
    for kind in ("plain", "cow"):
        for name in names:
            row = " ".join(
                f"{ratio(results, (a, kind, name), (b, kind, name)):13.2f}" for a, b, _ in ratios
            )
            print(f"{name:18} {kind:5} {row}")
    print()
    for name in names if "vdfarm" in names_run else ():
        r = ratio(results, ("vdfarm", "cow", name), ("vdfarm", "plain", name))
        print(f"vdfarm write-cache path / plain path, {name}: {r:.2f}")
    if args.json:
        args.json.write_text(json.dumps({"|".join(k): v for k, v in results.items()}, indent=1))


if __name__ == "__main__":
    sys.exit(main())
