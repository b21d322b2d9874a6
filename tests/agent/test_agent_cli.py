"""`vdfarm agent` as a process, with real NBD clients (qemu-img, qemu-io,
nbdinfo) on its unix socket, in front of in-test NBD servers and a stub
login farm: the whole disk read and compared, a server killed under a read
loop, bad input as one line and exit 2, a misbehaving local client."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from tests.agent.fake_server import FakeServer
from tests.agent.stub_farm import StubFarm, login_answer
from tests.agent.test_lean_imports import heavy_among, imported_modules
from tests.conftest import VDFARM, free_port
from tests.stream.rawclient import CMD_READ, RawClient

DEVICE = "pc1"
DATA = os.urandom(4 << 20)


class LoopThread:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()

    def call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    def run(self, fn):
        async def wrap():
            return fn()

        return self.call(wrap())


@pytest.fixture
def farm(tmp_path):
    loop = LoopThread()
    servers = [FakeServer(name, DEVICE, DATA) for name in ("s1", "s2")]
    for server in servers:
        loop.call(server.start())
    sha = hashlib.sha256(DATA).hexdigest()

    def answer(body):
        if body["device"] != DEVICE:
            return 404, {"detail": f"no device named {body['device']!r}"}
        for server in servers:
            if server.up and server.name not in body.get("exclude", []):
                ref = {
                    "name": server.name,
                    "host": "127.0.0.1",
                    "nbd_port": server.port,
                    "api_port": None,
                }
                return 200, login_answer(DEVICE, ref, sha, len(DATA))
        return 503, {"detail": "no server up"}

    stub = StubFarm(answer)
    yield loop, servers, stub
    stub.close()
    for server in servers:
        loop.run(server.kill)
    loop.loop.call_soon_threadsafe(loop.loop.stop)


def start_agent(tmp_path, url, *extra, python_flags=()):
    sock = tmp_path / "run" / f"{DEVICE}.sock"
    vdfarm = [sys.executable, *python_flags, "-m", "vdfarm"] if python_flags else VDFARM
    with open(tmp_path / "agent.log", "ab") as log:  # the child keeps its own copy
        proc = subprocess.Popen(
            [
                *vdfarm,
                "agent",
                "--farm",
                url,
                "--device",
                DEVICE,
                "--listen",
                f"unix:{sock}",
                "--io-timeout",
                "0.5",
                *extra,
            ],
            stdout=log,
            stderr=log,
        )
    deadline = time.monotonic() + 20
    while not sock.exists():
        assert proc.poll() is None, (tmp_path / "agent.log").read_text()
        assert time.monotonic() < deadline, "the agent did not listen"
        time.sleep(0.05)
    return proc, sock


def stop(proc):
    proc.terminate()
    proc.wait(10)


def status(sock):
    out = subprocess.run(
        [*VDFARM, "agent", "status", "--listen", f"unix:{sock}", "--json"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return json.loads(out.stdout)


def test_the_whole_disk_through_the_agent_and_a_kill_under_reads(farm, tmp_path):
    loop, (s1, s2), stub = farm
    proc, sock = start_agent(tmp_path, stub.url)
    try:
        assert oct(sock.stat().st_mode & 0o777) == "0o600"
        assert oct(sock.parent.stat().st_mode & 0o777) == "0o700"
        uri = f"nbd+unix:///{DEVICE}?socket={sock}"
        image = tmp_path / "image.raw"
        image.write_bytes(DATA)
        subprocess.run(
            ["qemu-img", "compare", "-f", "raw", "-F", "raw", str(image), uri],
            check=True,
            timeout=60,
            capture_output=True,
        )
        info = subprocess.run(
            ["nbdinfo", "--json", uri], check=True, capture_output=True, text=True, timeout=30
        )
        assert json.loads(info.stdout)["exports"][0]["export-size"] == len(DATA)

        # A loop of reads; s1 dies in the middle: no error, one failover.
        reads = subprocess.Popen(
            ["qemu-io", "-f", "raw", "-r", uri]
            + [a for n in range(3000) for a in ("-c", f"read {(n * 65536) % len(DATA)} 65536")],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        start = s1.requests
        deadline = time.monotonic() + 30
        while s1.requests < start + 100:  # the loop is reading: kill its server now
            assert time.monotonic() < deadline and reads.poll() is None
            time.sleep(0.01)
        loop.run(s1.kill)
        out, err = reads.communicate(timeout=60)
        assert reads.returncode == 0 and "error" not in (out + err).lower(), err
        subprocess.run(
            ["qemu-img", "compare", "-f", "raw", "-F", "raw", str(image), uri],
            check=True,
            timeout=60,
            capture_output=True,
        )
        shown = status(sock)
        assert shown["server"] == "s2"
        [record] = shown["failovers"]
        assert record["from_server"] == "s1" and record["to_server"] == "s2"
        assert record["pause_ms"] is not None
        print(f"pause after a kill: {record['pause_ms']} ms, {record['retried']} sent again")
        deadline = time.monotonic() + 10  # the report reached the farm
        while not any(p.endswith("/failover") for p, _, _ in stub.requests):
            assert time.monotonic() < deadline, stub.requests
            time.sleep(0.05)
        [(_, body, _)] = [r for r in stub.requests if r[0].endswith("/failover")]
        assert body["from"] == "s1" and body["to"] == "s2" and isinstance(body["pause_ms"], int)
        human = subprocess.run(
            [*VDFARM, "agent", "status", "--listen", f"unix:{sock}"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
        assert "s1 -> s2" in human
    finally:
        stop(proc)


def test_the_running_agent_loads_no_heavy_package(farm, tmp_path):
    """Started for real (login, upstream, listener, a read served): what
    `-X importtime` says the process imported holds no database driver,
    web framework or HTTP library."""
    _, _, stub = farm
    proc, sock = start_agent(tmp_path, stub.url, python_flags=("-X", "importtime"))
    try:
        out = subprocess.run(
            ["nbdinfo", "--size", f"nbd+unix:///{DEVICE}?socket={sock}"],
            check=True,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert int(out.stdout) == len(DATA)
    finally:
        stop(proc)
    modules = imported_modules((tmp_path / "agent.log").read_text())
    assert {"vdfarm.agent.session", "vdfarm.agent.local"} <= modules
    assert heavy_among(modules) == []


def test_more_requests_than_the_agent_holds_at_once_are_all_answered(farm, tmp_path):
    """Past 128 requests or 64 MiB of reads in flight the agent stops
    reading the connection, and reads on once answers went out: 300 small
    reads and then 80 of 1 MiB sent in a row all come back, right."""
    _, _, stub = farm
    proc, sock = start_agent(tmp_path, stub.url)
    try:
        client = RawClient.__new__(RawClient)
        client.sock, client.cookie = socket.socket(socket.AF_UNIX), 0
        client.sock.connect(str(sock))
        client.sock.settimeout(30)  # a connection never read again fails, not hangs
        client.greeting()
        client.send_client_flags()
        client.go(DEVICE)
        for size, count in ((4096, 300), (1 << 20, 80)):
            offsets = [(n * size) % len(DATA) for n in range(count)]
            sent: dict[int, int] = {}

            def send_all(size=size, offsets=offsets, sent=sent):
                for offset in offsets:
                    sent[client.request(CMD_READ, offset, size)] = offset

            sender = threading.Thread(target=send_all)
            sender.start()  # replies are read meanwhile: the agent's writes never block
            replies = [client.reply(size) for _ in range(count)]
            sender.join(30)
            for error, cookie, data in replies:
                assert error == 0 and data == DATA[sent[cookie] : sent[cookie] + size]
    finally:
        stop(proc)


def test_a_bad_local_client_loses_only_its_own_connection(farm, tmp_path):
    _, _, stub = farm
    proc, sock = start_agent(tmp_path, stub.url)
    try:
        good = socket.socket(socket.AF_UNIX)
        good.connect(str(sock))
        client = RawClient.__new__(RawClient)
        client.sock, client.cookie = good, 0
        client.greeting()
        client.send_client_flags()
        client.go(DEVICE)
        for garbage in (b"\xff" * 100, b""):  # garbage, then a client gone mid-request
            bad = socket.socket(socket.AF_UNIX)
            bad.connect(str(sock))
            bad.recv(18)
            bad.sendall(b"\0\0\0\3" + garbage if garbage else b"\0\0\0\3")
            if not garbage:
                bad.sendall(b"IHAVEOPT\0\0\0\7\0\0\1\0")  # an option cut short
            bad.close()
        wrong = RawClient.__new__(RawClient)
        wrong.sock = socket.socket(socket.AF_UNIX)
        wrong.sock.connect(str(sock))
        wrong.greeting()
        wrong.send_client_flags()
        with pytest.raises(Exception, match="option error"):
            wrong.go("other-device")
        error, data = client.call(CMD_READ, 4096, 4096)
        assert error == 0 and data == DATA[4096:8192]
        assert proc.poll() is None
    finally:
        stop(proc)


def run_cli(*args):
    return subprocess.run([*VDFARM, *args], capture_output=True, text=True, timeout=60)


def test_bad_input_is_one_line_and_exit_2(farm, tmp_path):
    _, _, stub = farm
    sock = f"unix:{tmp_path}/x.sock"
    dead = f"http://127.0.0.1:{free_port()}"
    cases = [
        (["--farm", dead, "--device", DEVICE, "--listen", sock], "127.0.0.1"),
        (["--farm", stub.url, "--device", "nobody", "--listen", sock], "no device named"),
        (["--farm", stub.url, "--device", DEVICE, "--listen", "tcp:10.0.0.1:99"], "loopback"),
        (["--farm", "ftp://x", "--device", DEVICE, "--listen", sock], "http"),
        (["--device", DEVICE, "--listen", sock], "--farm"),
    ]
    other = StubFarm(lambda body: (200, b"<html>a web page</html>"))
    cases.append((["--farm", other.url, "--device", DEVICE, "--listen", sock], "not a vdfarm farm"))
    try:
        for args, words in cases:
            result = run_cli("agent", *args)
            assert result.returncode == 2, (args, result.stderr)
            lines = result.stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("vdfarm: error:"), result.stderr
            assert words in lines[0], lines
        missing = run_cli("agent", "status", "--listen", sock)
        assert missing.returncode == 2 and "no agent status" in missing.stderr
    finally:
        other.close()
