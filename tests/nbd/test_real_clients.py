"""The machine against real NBD clients (libnbd's nbdinfo/nbdsh/nbdcopy,
qemu-io, qemu-img), through a minimal blocking server written here on top of
it that serves an in-memory disk on 127.0.0.1."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import threading

import pytest

from vdfarm.nbd import constants as c
from vdfarm.nbd.events import BadRequest, Disconnect, ExportRequest, ListRequest, Request
from vdfarm.nbd.server import NEED_DATA, ExportInfo, ServerConnection

pytestmark = pytest.mark.skipif(
    not all(shutil.which(t) for t in ("nbdinfo", "nbdcopy", "qemu-io", "qemu-img")),
    reason="real NBD clients not installed",
)

SIZE = 4 << 20
BLOCK = 65536
RW_FLAGS = (
    c.FLAG_SEND_FLUSH
    | c.FLAG_SEND_FUA
    | c.FLAG_SEND_TRIM
    | c.FLAG_SEND_WRITE_ZEROES
    | c.FLAG_SEND_CACHE
    | c.FLAG_SEND_DF
)


class MemoryServer:
    """Exports "disk" (read/write) and "ro" (read-only) from one bytearray."""

    def __init__(self) -> None:
        self.disk = bytearray(SIZE)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept_loop, daemon=True).start()

    def uri(self, name: str = "disk") -> str:
        return f"nbd://127.0.0.1:{self.port}/{name}"

    def close(self) -> None:
        self.listener.close()

    def _accept_loop(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(sock,), daemon=True).start()

    def _serve(self, sock: socket.socket) -> None:
        conn = ServerConnection()
        with sock:
            sock.sendall(conn.start())
            while True:
                data = sock.recv(1 << 20)
                conn.receive_data(data)
                while (ev := conn.next_event()) is not NEED_DATA:
                    sock.sendall(conn.data_to_send() + self._answer(conn, ev))
                    if isinstance(ev, Disconnect) or conn.state.name == "CLOSED":
                        return
                sock.sendall(conn.data_to_send())

    def _answer(self, conn: ServerConnection, ev) -> bytes:
        if isinstance(ev, ExportRequest):
            if ev.name not in ("disk", "ro"):
                return conn.reject_export(c.REP_ERR_UNKNOWN, f"no export {ev.name!r}")
            flags = c.FLAG_READ_ONLY | c.FLAG_SEND_DF if ev.name == "ro" else RW_FLAGS
            return conn.accept_export(ExportInfo(SIZE, flags, description="test disk"))
        if isinstance(ev, ListRequest):
            return conn.send_export_list([("disk", "test disk"), ("ro", "read-only")])
        if isinstance(ev, BadRequest):
            return conn.reply_error(ev.cookie, ev.error, ev.message)
        if isinstance(ev, Request):
            return self._execute(conn, ev)
        return b""

    def _execute(self, conn: ServerConnection, req: Request) -> bytes:
        end = req.offset + req.length
        if end > SIZE:
            return conn.reply_error(req.cookie, c.NBD_EINVAL, "beyond the end of the disk")
        if req.command == c.CMD_READ:
            data = bytes(self.disk[req.offset : end])
            return conn.reply_read_header(req.cookie, req.offset, req.length) + data
        if req.command == c.CMD_WRITE:
            self.disk[req.offset : end] = req.data
        elif req.command in (c.CMD_TRIM, c.CMD_WRITE_ZEROES):
            self.disk[req.offset : end] = bytes(req.length)
        elif req.command == c.CMD_BLOCK_STATUS:
            return conn.reply_block_status(req.cookie, self._extents(req.offset, end))
        return conn.reply_ok(req.cookie)

    def _extents(self, offset: int, end: int) -> list[tuple[int, int]]:
        out = []
        while offset < end:
            stop = min((offset // BLOCK + 1) * BLOCK, SIZE)
            zero = not any(self.disk[offset:stop])
            out.append((stop - offset, c.STATE_HOLE | c.STATE_ZERO if zero else 0))
            offset = stop
        return out


@pytest.fixture
def server():
    srv = MemoryServer()
    yield srv
    srv.close()


def run(*args: str, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, capture_output=True, text=True, timeout=60, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args[0]} failed: {proc.stdout}{proc.stderr}")
    return proc


def test_nbdinfo_sees_the_export(server):
    info = json.loads(run("nbdinfo", "--json", server.uri()).stdout)
    (export,) = info["exports"]
    assert export["export-size"] == SIZE
    assert export["description"] == "test disk"
    assert export["is_read_only"] is False and export["can_flush"] is True
    assert export["can_trim"] is True and export["can_zero"] is True and export["can_fua"] is True
    assert export["block_size_minimum"] == 1 and export["block_size_maximum"] == c.MAX_PAYLOAD
    assert "base:allocation" in export["contexts"]
    assert info["protocol"] == "newstyle-fixed" and info["TLS"] is False


def test_nbdinfo_lists_exports(server):
    out = run("nbdinfo", "--list", "--json", server.uri()).stdout
    names = {(e["export-name"], e["description"]) for e in json.loads(out)["exports"]}
    assert names == {("disk", "test disk"), ("ro", "read-only")}


def test_unknown_export_is_refused_with_our_message(server):
    proc = run("nbdinfo", server.uri("nope"), check=False, env={**os.environ, "LIBNBD_DEBUG": "1"})
    assert proc.returncode != 0
    assert "server error message: no export 'nope'" in proc.stderr


def test_qemu_io_writes_reads_zeroes_and_trims(server):
    run(
        "qemu-io",
        "-f",
        "raw",
        server.uri(),
        "-c",
        "write -P 0x5a 1M 192k",
        "-c",
        "read -P 0x5a 1M 192k",
        "-c",
        "write -z 1M 64k",
        "-c",
        "read -P 0 1M 64k",
        "-c",
        "discard 1088k 64k",
        "-c",
        "write -f -P 0x11 3M 4k",
        "-c",
        "flush",
    )
    assert server.disk[1 << 20 : (1 << 20) + BLOCK] == bytes(BLOCK)
    assert server.disk[(1 << 20) + 2 * BLOCK : (1 << 20) + 3 * BLOCK] == b"\x5a" * BLOCK
    assert server.disk[3 << 20 : (3 << 20) + 4096] == b"\x11" * 4096


def test_qemu_img_map_reads_block_status(server):
    server.disk[2 << 20 : (2 << 20) + BLOCK] = b"\x01" * BLOCK
    out = json.loads(run("qemu-img", "map", "--output=json", "-f", "raw", server.uri()).stdout)
    data = [(e["start"], e["length"]) for e in out if e["data"]]
    assert data == [(2 << 20, BLOCK)]


def test_nbdcopy_reads_the_whole_disk(server, tmp_path):
    server.disk[123456 : 123456 + 5000] = b"x" * 5000
    out = tmp_path / "copy.raw"
    run("nbdcopy", server.uri(), str(out))
    assert out.read_bytes() == bytes(server.disk)


LIBNBD_PYTHON = "/usr/bin/python3"  # the system Python holds libnbd's binding


@pytest.mark.skipif(
    subprocess.run([LIBNBD_PYTHON, "-c", "import nbd"], capture_output=True).returncode != 0,
    reason="libnbd Python binding not installed",
)
def test_bad_requests_get_the_spec_errors(server):
    script = f"""
import errno
import nbd
h = nbd.NBD()
h.set_strict_mode(0)
h.connect_uri({server.uri("ro")!r})
def code(f):
    try:
        f()
        return "ok"
    except nbd.Error as e:
        return e.errno if isinstance(e.errno, str) else errno.errorcode[e.errno]
print(code(lambda: h.pwrite(b"x" * 512, 0)))                   # read-only
print(code(lambda: h.trim(512, 0)))                            # read-only first
print(code(lambda: h.cache(512, 0)))                           # not advertised
print(code(lambda: h.pread(512, 0, flags=nbd.CMD_FLAG_REQ_ONE)))  # flag not for READ
print(code(lambda: h.pread(512, 0, flags=nbd.CMD_FLAG_DF)))    # fine with structured replies
print(code(lambda: h.pread(512, 1 << 62)))                      # range: the application's check
h.shutdown()
"""
    out = run(LIBNBD_PYTHON, "-c", script).stdout.split()
    assert out == ["EPERM", "EPERM", "EINVAL", "EINVAL", "ok", "EINVAL"]
