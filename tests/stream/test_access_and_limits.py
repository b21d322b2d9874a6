"""Who may open what, and what one client may make the server hold: a
real StreamServer on loopback with the in-memory farm (fake_port.py), raw
NBD clients from 127.0.0.1 and 127.0.0.2 (a second client address)."""

from __future__ import annotations

import asyncio
import socket
import struct

import pytest

from tests.stream import test_port_fake as base
from tests.stream.rawclient import CMD_READ, REP_ERR_POLICY, NBDOptionError, RawClient
from tests.stream.test_port_fake import connect, eventually, goodbye, run, serving
from vdfarm.nbd.limits import ConnectionLimits
from vdfarm.stream import access as access_module
from vdfarm.stream.access import is_loopback, peer_refusal
from vdfarm.stream.limits import Admission, RefusalLog

OPT_LIST = 3

# The in-memory farm of the fake-port tests: no database, pc1/pc2/solo.
db_kind = base.db_kind
image = base.image
fake = base.fake


# -- pure rules -----------------------------------------------------------------


@pytest.mark.parametrize(
    "address, loopback",
    [
        ("127.0.0.1", True),
        ("127.9.8.7", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),
        ("10.0.0.1", False),
        ("::ffff:10.0.0.1", False),
        ("fe80::1%eth0", False),
        ("", False),
        (None, False),
        ("not an address", False),
    ],
)
def test_is_loopback(address, loopback):
    assert is_loopback(address) is loopback


def test_peer_refusal():
    assert peer_refusal(None, "10.0.0.2", "pc1") is None  # no live session
    assert peer_refusal("10.0.0.2", "10.0.0.2", "pc1") is None
    assert "pc1" in peer_refusal("10.0.0.2", "10.0.0.3", "pc1")


def test_admission_counts_and_bounds():
    admission = Admission(ConnectionLimits(max_connections=3, max_per_address=2, max_handshaking=2))
    assert admission.refusal("a") is None
    admission.admitted("a")
    admission.admitted("a")
    assert "from this address" in admission.refusal("a")
    assert "in the handshake" in admission.refusal("b")
    admission.handshake_done()
    admission.admitted("b")
    assert "connection limit" in admission.refusal("c")
    admission.left("a", in_handshake=True)
    assert admission.refusal("a") is None
    assert (admission.total, admission.handshaking, dict(admission.per_address)) == (
        2,
        1,
        {"a": 1, "b": 1},
    )
    admission.left("b", in_handshake=False)
    assert "b" not in admission.per_address  # no count kept for a gone address
    unbounded = Admission(ConnectionLimits(0, 0, 0))
    for _ in range(10_000):
        unbounded.admitted("a")
    assert unbounded.refusal("a") is None


def test_a_refusal_is_logged_once_a_minute_per_address_and_reason(caplog):
    now = [0.0]
    refusals = RefusalLog(clock=lambda: now[0])
    assert refusals.refused("a", "too many")
    assert not refusals.refused("a", "too many")
    assert refusals.refused("a", "handshake")  # another reason
    assert refusals.refused("b", "too many")  # another address
    now[0] = 61
    assert refusals.refused("a", "too many")
    assert sum("refused a: too many" in r.message for r in caplog.records) == 2


# -- access ---------------------------------------------------------------------


def test_a_live_session_is_bound_to_its_first_address(fake, tmp_path):
    async def scenario() -> None:
        async with serving(fake, tmp_path, grace=30) as (server, port):
            first = await connect(port, "pc1")
            thief = RawClient(port, source="127.0.0.2")
            with pytest.raises(NBDOptionError) as refused:
                await asyncio.to_thread(thief.connect, "pc1")
            assert refused.value.rtype == REP_ERR_POLICY
            assert "another address" in str(refused.value)
            thief.close()
            second = await connect(port, "pc1")  # the same address: multi-conn holds
            assert (await asyncio.to_thread(second.call, CMD_READ, 0, 4096))[0] == 0
            first.close()
            second.close()  # unclean: the session waits out its grace, still bound
            await eventually(lambda: server.registry.sessions[1].connections == 0, "both gone")
            late = RawClient(port, source="127.0.0.2")
            with pytest.raises(NBDOptionError):
                await asyncio.to_thread(late.connect, "pc1")
            late.close()
            owner = await connect(port, "pc1")  # the owner comes back within grace
            await goodbye(owner)  # a clean end: the session is over
            await eventually(lambda: 1 not in server.registry.sessions, "session over")
            now_theirs = RawClient(port, source="127.0.0.2")
            await asyncio.to_thread(now_theirs.connect, "pc1")
            assert (await asyncio.to_thread(now_theirs.call, CMD_READ, 0, 4096))[0] == 0
            now_theirs.close()

    run(scenario)


def test_a_vdisk_view_is_served_to_this_host_only(fake, tmp_path, monkeypatch):
    # 127.0.0.0/8 is all loopback; here only 127.0.0.1 counts as this host.
    monkeypatch.setattr(access_module, "is_loopback", lambda ip: ip == "127.0.0.1")

    async def scenario() -> None:
        async with serving(fake, tmp_path) as (_server, port):
            outsider = RawClient(port, source="127.0.0.2")
            with pytest.raises(NBDOptionError) as refused:
                await asyncio.to_thread(outsider.connect, "vdisk/golden")
            assert refused.value.rtype == REP_ERR_POLICY
            outsider.close()
            local = await connect(port, "vdisk/golden")
            assert (await asyncio.to_thread(local.call, CMD_READ, 0, 4096))[0] == 0
            local.close()

    run(scenario)


def export_list(port: int) -> list[bytes]:
    client = RawClient(port)
    client.greeting()
    client.send_client_flags()
    client.send_option(OPT_LIST)
    names = []
    while True:
        _option, rtype, data = client.option_reply()
        if rtype == 1:  # NBD_REP_ACK
            break
        names.append(data[4 : 4 + struct.unpack(">I", data[:4])[0]])
    client.close()
    return names


def test_the_export_list_is_empty_unless_asked_for(fake, tmp_path):
    async def scenario() -> None:
        async with serving(fake, tmp_path) as (_server, port):
            assert await asyncio.to_thread(export_list, port) == []
        async with serving(fake, tmp_path, limits=ConnectionLimits(list_exports=True)) as (
            _server,
            port,
        ):
            listed = sorted(await asyncio.to_thread(export_list, port))
            assert listed == [b"pc1", b"pc2", b"pc4", b"solo"]

    run(scenario)


# -- limits ---------------------------------------------------------------------


def closed_at_once(port: int, source: str = "127.0.0.1") -> bool:
    """True if the server closes a new connection before its greeting."""
    with socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0)) as s:
        try:
            return s.recv(1) == b""
        except ConnectionResetError:
            return True


def test_connection_bounds_refuse_before_the_greeting(fake, tmp_path):
    limits = ConnectionLimits(max_connections=6, max_per_address=3, max_handshaking=4)

    async def scenario() -> None:
        async with serving(fake, tmp_path, limits=limits) as (server, port):
            idle = [RawClient(port) for _ in range(3)]
            for c in idle:
                await asyncio.to_thread(c.greeting)
            assert await asyncio.to_thread(closed_at_once, port)  # 4th from 127.0.0.1
            other = RawClient(port, source="127.0.0.2")
            await asyncio.to_thread(other.greeting)  # another address gets in
            assert await asyncio.to_thread(closed_at_once, port, "127.0.0.3")  # 4 handshaking
            idle.pop().close()
            await eventually(lambda: server.admission.handshaking == 3, "one idle gone")
            streaming = await connect(port, "pc2")  # in, and out of the handshake
            assert server.admission.handshaking == 3
            assert (await asyncio.to_thread(streaming.call, CMD_READ, 0, 4096))[0] == 0
            for c in (*idle, other, streaming):
                c.close()
            await eventually(lambda: server.admission.total == 0, "every count back to 0")

    run(scenario)


def test_a_handshake_that_takes_too_long_is_closed(fake, tmp_path):
    async def scenario() -> None:
        limits = ConnectionLimits(handshake_timeout_s=0.5)
        async with serving(fake, tmp_path, limits=limits) as (server, port):
            slow = RawClient(port)
            await asyncio.to_thread(slow.greeting)  # ... and nothing more
            assert await asyncio.to_thread(slow.is_closed_by_server, 5)
            fast = await connect(port, "pc1")
            await asyncio.sleep(1.0)  # in transmission: the timer no longer applies
            assert (await asyncio.to_thread(fast.call, CMD_READ, 0, 4096))[0] == 0
            fast.close()
            await eventually(lambda: server.admission.total == 0, "counts back to 0")

    run(scenario)


def test_unread_replies_stop_the_reading_of_requests(fake, tmp_path):
    """A client that sends many big READs and never reads the replies makes
    the server queue about one reply-buffer's worth, not every reply."""
    limits = ConnectionLimits(max_reply_buffer=1 << 20)

    async def scenario() -> None:
        async with serving(fake, tmp_path, limits=limits) as (server, port):
            hog = await connect(port, "pc1")
            hog.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
            for _ in range(64):  # 64 x 1 MiB asked, none read
                hog.request(CMD_READ, 0, 1 << 20)
            (conn,) = [c for c in server.connections if c.session is not None]
            await eventually(lambda: conn._write_paused, "reading paused")
            await asyncio.sleep(0.3)
            queued = conn.transport.get_write_buffer_size()
            assert queued <= 4 << 20, queued  # the bound plus a reply or two, not 64 MiB
            for _ in range(64):  # the client reads after all: every reply arrives
                assert (await asyncio.to_thread(hog.reply, 1 << 20))[0] == 0
            hog.close()

    run(scenario)
