"""A vDisk that requires TLS (`vdisk set NAME --require-tls`), fast: a real
StreamServer on loopback with the in-memory farm (fake_port.py) and raw NBD
clients that do STARTTLS with Python's ssl (test_tls_identity.py's helpers).

pc1 boots golden, which requires TLS; pc2 boots plain, which does not.
Under `--tls optional` a plaintext client is answered NBD_REP_ERR_TLS_REQD
(INFO, GO, the `vdisk/golden` view) and is served once it did STARTTLS on
the same connection; under `--tls off` it is NBD_REP_ERR_POLICY with one
line and an error in the log. plain keeps serving plaintext clients.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import struct

import pytest

from tests.stream import test_port_fake as base
from tests.stream import test_tls_identity as tls
from tests.stream.fake_port import FakeFarm, target
from tests.stream.pki import Pki
from tests.stream.rawclient import (
    OPT_EXPORT_NAME,
    OPT_INFO,
    OPT_STARTTLS,
    REP_ACK,
    REP_ERR_POLICY,
    NBDOptionError,
    RawClient,
)
from tests.stream.test_port_fake import goodbye, serving
from tests.stream.test_tls_identity import REP_ERR_TLS_REQD, opened, read, run, settings
from vdfarm.stream.access import TLSRequired, TLSUnavailable, tls_refusal

db_kind = base.db_kind
image = base.image
pki = tls.pki
event_loop_kind = tls.event_loop_kind  # every test on asyncio's loop and on uvloop

OFF_LINE = "vDisk golden requires TLS; this server's --tls is off"


@pytest.fixture
def fake(tmp_path, image) -> FakeFarm:
    """pc1 on golden (requires TLS), pc2 on plain (does not)."""
    other = tmp_path / "plain.raw"
    other.write_bytes(image.read_bytes())
    return FakeFarm(
        target(1, "pc1", image, require_tls=True),
        target(2, "pc2", other, vdisk_id=2, vdisk="plain"),
    )


def info(client: RawClient, export: str) -> tuple[int, str]:
    """NBD_OPT_INFO for EXPORT: (the final reply type, its text)."""
    raw = export.encode()
    client.send_option(OPT_INFO, struct.pack(">I", len(raw)) + raw + struct.pack(">H", 0))
    while True:
        _, rtype, data = client.option_reply()
        if rtype == REP_ACK or rtype & 0x80000000:
            return rtype, data.decode(errors="replace")


def refused_in_plaintext(client: RawClient, export: str) -> list[tuple[int, str]]:
    """INFO then GO for EXPORT in plaintext on CLIENT (after the greeting):
    both refusals, (type, text) each."""
    answers = [info(client, export)]
    with pytest.raises(NBDOptionError) as go:
        client.go(export)
    return [*answers, (go.value.rtype, go.value.message)]


def hello(port: int) -> RawClient:
    client = RawClient(port)
    client.greeting()
    client.send_client_flags()
    return client


def upgrade(client: RawClient, pki: Pki, name: str) -> None:
    """STARTTLS on CLIENT's open connection, then the TLS handshake as NAME."""
    client.send_option(OPT_STARTTLS)
    assert client.option_reply()[1] == REP_ACK
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(pki.ca)
    d = pki.client(name)
    context.load_cert_chain(d / "client-cert.pem", d / "client-key.pem")
    client.sock = context.wrap_socket(client.sock, server_hostname="127.0.0.1")


def refused_then_upgraded(port: int, pki: Pki, cert: str, export: str):
    """A plaintext client refused EXPORT, then on the same connection it
    does STARTTLS as CERT and asks again: (the refusals, the client)."""
    client = hello(port)
    try:
        answers = refused_in_plaintext(client, export)
        upgrade(client, pki, cert)
        assert info(client, export)[0] == REP_ACK
        client.go(export)
    except BaseException:
        client.close()
        raise
    return answers, client


def test_the_refusal_rule():
    assert tls_refusal("g", require_tls=False, tls_active=False, starttls_possible=False) is None
    assert tls_refusal("g", require_tls=True, tls_active=True, starttls_possible=True) is None
    asked = tls_refusal("g", require_tls=True, tls_active=False, starttls_possible=True)
    assert type(asked) is TLSRequired and "send NBD_OPT_STARTTLS" in str(asked)
    off = tls_refusal("g", require_tls=True, tls_active=False, starttls_possible=False)
    assert type(off) is TLSUnavailable
    assert str(off) == "vDisk g requires TLS; this server's --tls is off"


def test_optional_asks_a_plain_client_for_tls_then_serves_it_over_tls(fake, tmp_path, pki, image):
    async def scenario() -> None:
        async with serving(fake, tmp_path, tls=settings(pki, "optional")) as (server, port):
            answers, client = await asyncio.to_thread(
                refused_then_upgraded, port, pki, "pc1", "pc1"
            )
            for rtype, text in answers:  # INFO, GO
                assert rtype == REP_ERR_TLS_REQD and "vDisk golden requires TLS" in text
            [conn] = server.connections
            assert conn.nbd.tls_active and 1 in server.registry.sessions
            assert await read(client, 0, 1 << 20) == image.read_bytes()
            await goodbye(client)

    run(scenario)


def test_optional_asks_for_tls_for_the_vdisk_view_too(fake, tmp_path, pki):
    async def scenario() -> None:
        async with serving(fake, tmp_path, tls=settings(pki, "optional")) as (_server, port):
            answers, client = await asyncio.to_thread(
                refused_then_upgraded, port, pki, "admin", "vdisk/golden"
            )
            assert [rtype for rtype, _ in answers] == [REP_ERR_TLS_REQD] * 2
            await read(client, 0, 4096)
            await goodbye(client)

    run(scenario)


def test_optional_serves_a_vdisk_without_the_flag_to_plain_clients(fake, tmp_path, pki):
    async def scenario() -> None:
        async with serving(fake, tmp_path, tls=settings(pki, "optional")) as (server, port):
            for export in ("pc2", "vdisk/plain"):
                client = await base.connect(port, export)
                assert not any(c.nbd.tls_active for c in server.connections)
                await read(client, 0, 4096)
                await goodbye(client)

    run(scenario)


def test_optional_closes_a_plain_export_name_request(fake, tmp_path, pki):
    """NBD_OPT_EXPORT_NAME has no error reply: the refusal closes."""

    async def scenario() -> None:
        async with serving(fake, tmp_path, tls=settings(pki, "optional")) as (server, port):
            client = await asyncio.to_thread(hello, port)
            client.send_option(OPT_EXPORT_NAME, b"pc1")
            assert await asyncio.to_thread(client.is_closed_by_server, 5)
            client.close()
            assert not server.registry.sessions

    run(scenario)


def test_off_refuses_with_policy_and_logs_an_error(fake, tmp_path, caplog):
    caplog.set_level(logging.INFO, "vdfarm.stream")

    async def scenario() -> None:
        async with serving(fake, tmp_path) as (server, port):
            for export in ("pc1", "vdisk/golden"):
                client = await asyncio.to_thread(hello, port)
                answers = await asyncio.to_thread(refused_in_plaintext, client, export)
                assert answers == [(REP_ERR_POLICY, OFF_LINE)] * 2
                client.close()
            assert not server.registry.sessions
            plain = await base.connect(port, "pc2")  # a vDisk without the flag: as before
            await read(plain, 0, 4096)
            await goodbye(plain)

    run(scenario)
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 4 and all(OFF_LINE in line for line in errors)
    assert "--no-require-tls" in errors[0] and "\n" not in errors[0]


def test_require_serves_it_over_tls(fake, tmp_path, pki):
    async def scenario() -> None:
        async with serving(fake, tmp_path, tls=settings(pki)) as (_server, port):
            for cert, export in (("pc1", "pc1"), ("admin", "vdisk/golden")):
                client = await opened(port, pki, cert, export)
                await read(client, 0, 4096)
                await goodbye(client)

    run(scenario)
