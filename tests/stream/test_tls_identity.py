"""NBD over TLS in the stream, fast: a real StreamServer on loopback with
the in-memory farm (fake_port.py), raw NBD clients that do STARTTLS with
Python's ssl and the certificates of pki.py, from 127.0.0.1 and 127.0.0.2.

What a verified client certificate may open (its device, or anything for
`admin`), the session bound to the certificate instead of the address,
plain clients under `require` and `optional`, failed handshakes, sendfile
off under TLS, and the settings and files refused before a server starts.
"""

from __future__ import annotations

import asyncio
import logging
import ssl

import pytest
import uvloop

from tests.stream import test_port_fake as base
from tests.stream.fake_port import FakeFarm, target
from tests.stream.pki import Pki, make_pki
from tests.stream.rawclient import (
    CMD_READ,
    CMD_WRITE,
    OPT_STARTTLS,
    REP_ACK,
    REP_ERR_POLICY,
    NBDOptionError,
    RawClient,
)
from tests.stream.test_port_fake import eventually, goodbye, serving
from vdfarm.nbd.tls import TLSPolicy
from vdfarm.nbd.tls_config import TLSFilesError, TLSSettings
from vdfarm.stream import access as access_module
from vdfarm.stream.access import (
    certificate_binding,
    certificate_grant,
    may_open_views,
    peer_refusal,
)
from vdfarm.stream.tls import certificate_names, server_context

REP_ERR_TLS_REQD = 0x80000005
MAC = "52:54:00:12:34:01"

db_kind = base.db_kind
image = base.image


LOOPS = {"asyncio": asyncio.run, "uvloop": uvloop.run}
_loop = ["asyncio"]


@pytest.fixture(params=sorted(LOOPS), autouse=True)
def event_loop_kind(request) -> str:
    """Each test on asyncio's loop and on uvloop (the server's): their TLS
    layers differ in when they hand over the first decrypted bytes and in
    what they report after a failed handshake."""
    _loop[0] = request.param
    return request.param


def run(scenario) -> None:
    LOOPS[_loop[0]](asyncio.wait_for(scenario(), 30))


@pytest.fixture
def fake(tmp_path, image) -> FakeFarm:
    """pc1 (also by its MAC), pc2: standard on golden; solo: private."""
    private = tmp_path / "mine.raw"
    private.write_bytes(image.read_bytes())
    farm = FakeFarm(
        target(1, "pc1", image),
        target(2, "pc2", image),
        target(3, "solo", private, mode="private", vdisk_id=2, vdisk="mine"),
    )
    farm.targets[MAC] = farm.targets["pc1"]
    return farm


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def settings(pki: Pki, policy: str = "require", ca: bool = True) -> TLSSettings:
    return TLSSettings(TLSPolicy(policy), pki.cert, pki.key, pki.ca if ca else None)


def starttls(client: RawClient, pki: Pki, name: str | None) -> None:
    """STARTTLS on a fresh connection, then the TLS handshake as client NAME
    (None: no client certificate)."""
    client.greeting()
    client.send_client_flags()
    client.send_option(OPT_STARTTLS)
    assert client.option_reply()[1] == REP_ACK
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(pki.ca)
    if name is not None:
        d = pki.client(name)
        context.load_cert_chain(d / "client-cert.pem", d / "client-key.pem")
    client.sock = context.wrap_socket(client.sock, server_hostname="127.0.0.1")


def tls_open(port: int, pki: Pki, cert: str | None, export: str, source: str | None = None):
    """A client that did STARTTLS as CERT and went to EXPORT (raises
    NBDOptionError if refused)."""
    client = RawClient(port, source=source)
    try:
        starttls(client, pki, cert)
        client.go(export)
    except BaseException:
        client.close()
        raise
    return client


async def opened(port, pki, cert, export, source=None) -> RawClient:
    return await asyncio.to_thread(tls_open, port, pki, cert, export, source)


async def refused(port, pki, cert, export, source=None) -> NBDOptionError:
    with pytest.raises(NBDOptionError) as info:
        await opened(port, pki, cert, export, source)
    return info.value


async def read(client: RawClient, offset: int, length: int) -> bytes:
    error, data = await asyncio.to_thread(client.call, CMD_READ, offset, length)
    assert error == 0
    return data


def only_127_0_0_1_is_this_host(monkeypatch) -> None:
    """127.0.0.0/8 is all loopback; here only 127.0.0.1 counts as this host."""
    monkeypatch.setattr(access_module, "is_loopback", lambda ip: ip == "127.0.0.1")


# -- settings and files -----------------------------------------------------------


def test_settings_need_a_certificate_and_refuse_files_with_tls_off(pki):
    assert not TLSSettings().enabled
    with pytest.raises(ValueError, match="--tls require needs --tls-cert and --tls-key"):
        TLSSettings(TLSPolicy.REQUIRE)
    with pytest.raises(ValueError, match="--tls optional needs"):
        TLSSettings(TLSPolicy.OPTIONAL, cert=pki.cert)
    with pytest.raises(ValueError, match="given with --tls off"):
        TLSSettings(TLSPolicy.OFF, ca=pki.ca)
    with pytest.raises(ValueError):
        TLSSettings("sometimes")  # type: ignore[arg-type]
    on = settings(pki)
    assert on.enabled and on.verifies_clients
    assert not settings(pki, ca=False).verifies_clients
    assert server_context(TLSSettings()) is None


def test_a_context_is_tls_1_2_or_newer_and_verifies_clients_only_with_a_ca(pki):
    with_ca = server_context(settings(pki))
    assert with_ca.minimum_version == ssl.TLSVersion.TLSv1_2
    assert with_ca.verify_mode == ssl.CERT_REQUIRED
    assert server_context(settings(pki, ca=False)).verify_mode == ssl.CERT_NONE


def test_unusable_files_are_one_line(pki, tmp_path):
    cases = [
        TLSSettings(TLSPolicy.REQUIRE, tmp_path / "missing.pem", pki.key),
        TLSSettings(TLSPolicy.REQUIRE, pki.cert, pki.client("pc1") / "client-key.pem"),
        TLSSettings(TLSPolicy.REQUIRE, pki.cert, pki.key, pki.key),  # a key is no CA
        TLSSettings(TLSPolicy.REQUIRE, pki.cert, pki.key, tmp_path / "none.pem"),
    ]
    for case in cases:
        with pytest.raises(TLSFilesError) as info:
            server_context(case)
        assert "\n" not in str(info.value) and "NBD TLS" in str(info.value)


# -- pure identity rules ------------------------------------------------------------


def test_certificate_names_are_subject_cns_and_dns_alt_names():
    cert = {
        "subject": ((("countryName", "DE"),), (("commonName", "pc1"),)),
        "subjectAltName": (("DNS", "pc1.lan"), ("IP Address", "10.0.0.1")),
    }
    assert certificate_names(cert) == {"pc1", "pc1.lan"}
    assert certificate_names({}) == frozenset()
    assert certificate_names(None) == frozenset()


def test_what_a_certificate_may_open():
    assert certificate_grant(frozenset({"pc1"}), "pc1") == "pc1"
    assert certificate_grant(frozenset({"pc2"}), "pc1") is None
    assert certificate_grant(frozenset({"admin"}), "pc1") == "admin"
    assert certificate_grant(frozenset({"admin", "pc1"}), "pc1") == "pc1"
    assert certificate_grant(frozenset(), "pc1") is None
    assert may_open_views("127.0.0.1", None)
    assert may_open_views("10.0.0.9", frozenset({"admin"}))
    assert not may_open_views("10.0.0.9", frozenset({"pc1"}))
    assert not may_open_views("10.0.0.9", None)
    pc1, admin = certificate_binding("pc1"), certificate_binding("admin")
    assert peer_refusal(pc1, pc1, "pc1") is None
    assert "another client certificate" in peer_refusal(pc1, admin, "pc1")
    assert "another client certificate" in peer_refusal(pc1, "10.0.0.2", "pc1")
    assert "without a certificate" in peer_refusal("10.0.0.2", pc1, "pc1")


# -- over the wire --------------------------------------------------------------------


def test_a_device_certificate_opens_its_device_and_reads_through_tls(fake, tmp_path, pki, image):
    """1 MiB reads (sendfile-sized) come back right: sendfile is off."""
    content = image.read_bytes()

    async def scenario() -> None:
        async with serving(fake, tmp_path, tls=settings(pki)) as (server, port):
            client = await opened(port, pki, "pc1", "pc1")
            [conn] = server.connections
            assert conn.nbd.tls_active and conn._sock_fd == -1
            assert conn.cert_names == {"pc1"}
            assert await read(client, 0, 1 << 20) == content
            assert await read(client, 4096, 128 << 10) == content[4096 : 4096 + (128 << 10)]
            data = bytes(range(256)) * 256
            error, _ = await asyncio.to_thread(client.call, CMD_WRITE, 65536, len(data), 0, data)
            assert error == 0
            assert await read(client, 65536, len(data)) == data
            by_mac = await opened(port, pki, "pc1", MAC)  # the device, not the export name
            assert await read(by_mac, 65536, len(data)) == data  # the same session
            by_mac.close()
            await goodbye(client)

    run(scenario)


def test_a_certificate_for_another_device_is_refused_and_logged(fake, tmp_path, pki, caplog):
    caplog.set_level(logging.INFO, "vdfarm.stream")

    async def scenario() -> None:
        async with serving(fake, tmp_path, tls=settings(pki)) as (server, port):
            for export in ("pc1", MAC):
                error = await refused(port, pki, "pc2", export)
                assert error.rtype == REP_ERR_POLICY
                assert "does not name device pc1" in error.message
            assert 1 not in server.registry.sessions
            mine = await opened(port, pki, "pc2", "pc2")  # named by its DNS alt name
            await read(mine, 0, 4096)
            mine.close()

    run(scenario)
    warned = [r.message for r in caplog.records if "refused device pc1" in r.message]
    assert warned and "certificate (pc2, second desk)" in warned[0]


def test_admin_opens_any_device_and_vdisk_views_from_anywhere(fake, tmp_path, pki, monkeypatch):
    only_127_0_0_1_is_this_host(monkeypatch)

    async def scenario() -> None:
        async with serving(fake, tmp_path, tls=settings(pki)) as (_server, port):
            for export in ("pc1", "solo", "vdisk/golden"):
                client = await opened(port, pki, "admin", export, source="127.0.0.2")
                await read(client, 0, 4096)
                await goodbye(client)
            view = await refused(port, pki, "pc1", "vdisk/golden", source="127.0.0.2")
            assert view.rtype == REP_ERR_POLICY and "admin certificate" in view.message
            local = await opened(port, pki, "pc1", "vdisk/golden")  # this host: as before
            local.close()

    run(scenario)


def test_a_session_is_bound_to_its_certificate_not_its_address(fake, tmp_path, pki):
    async def scenario() -> None:
        async with serving(fake, tmp_path, tls=settings(pki, "optional")) as (server, port):
            first = await opened(port, pki, "pc1", "pc1")
            moved = await opened(port, pki, "pc1", "pc1", source="127.0.0.2")  # new address
            assert await read(moved, 0, 4096) == await read(first, 0, 4096)
            admin = await refused(port, pki, "admin", "pc1")
            assert "another client certificate" in admin.message
            plain = RawClient(port)  # same address, no certificate
            with pytest.raises(NBDOptionError) as info:
                await asyncio.to_thread(plain.connect, "pc1")
            assert info.value.rtype == REP_ERR_POLICY
            plain.close()
            first.close()
            moved.close()  # unclean: the session waits out its grace, still bound
            await eventually(lambda: server.registry.sessions[1].connections == 0, "both gone")
            back = await opened(port, pki, "pc1", "pc1", source="127.0.0.3")
            await goodbye(back)
            await eventually(lambda: 1 not in server.registry.sessions, "session over")
            admin_now = await opened(port, pki, "admin", "pc1")  # free again
            admin_now.close()

    run(scenario)


def test_require_refuses_plain_clients(fake, tmp_path, pki):
    async def scenario() -> None:
        async with serving(fake, tmp_path, tls=settings(pki)) as (server, port):
            plain = RawClient(port)
            with pytest.raises(NBDOptionError) as info:
                await asyncio.to_thread(plain.connect, "pc1")
            assert info.value.rtype == REP_ERR_TLS_REQD
            plain.close()
            assert not server.registry.sessions

    run(scenario)


def test_optional_serves_plain_clients_by_address_with_sendfile(fake, tmp_path, pki, image):
    async def scenario() -> None:
        async with serving(fake, tmp_path, tls=settings(pki, "optional")) as (server, port):
            plain = await base.connect(port, "pc1")
            [conn] = server.connections
            assert not conn.nbd.tls_active and conn._sock_fd >= 0 and conn.cert_names is None
            assert await read(plain, 0, 1 << 20) == image.read_bytes()
            thief = RawClient(port, source="127.0.0.2")
            with pytest.raises(NBDOptionError) as info:
                await asyncio.to_thread(thief.connect, "pc1")
            assert "another address" in info.value.message
            thief.close()
            with_cert = await refused(port, pki, "pc1", "pc1")  # bound to a plain address
            assert "without a certificate" in with_cert.message
            plain.close()

    run(scenario)


def test_without_a_ca_tls_only_encrypts_and_the_address_rules_stay(fake, tmp_path, pki):
    async def scenario() -> None:
        async with serving(fake, tmp_path, tls=settings(pki, ca=False)) as (server, port):
            client = await opened(port, pki, None, "pc1")
            [conn] = server.connections
            assert conn.nbd.tls_active and conn.cert_names is None
            thief = await refused(port, pki, None, "pc1", source="127.0.0.2")
            assert "another address" in thief.message
            await goodbye(client)

    run(scenario)


@pytest.mark.parametrize("who", ["rogue", None])
def test_a_certificate_of_another_ca_or_none_fails_the_handshake(fake, tmp_path, pki, who):
    async def scenario() -> None:
        async with serving(fake, tmp_path, tls=settings(pki)) as (server, port):
            with pytest.raises((ssl.SSLError, OSError, EOFError)):
                client = await opened(port, pki, who, "pc1")
                client.close()
            await eventually(lambda: server.admission.total == 0, "the connection is gone")
            assert server.admission.handshaking == 0 and not server.connections
            assert not server.registry.sessions
            ok = await opened(port, pki, "pc1", "pc1")  # the server goes on
            ok.close()

    run(scenario)


def acked_starttls(port: int) -> RawClient:
    """A client whose STARTTLS was acknowledged, before any TLS."""
    client = RawClient(port)
    client.greeting()
    client.send_client_flags()
    client.send_option(OPT_STARTTLS)
    assert client.option_reply()[1] == REP_ACK
    return client


def test_plaintext_instead_of_a_tls_handshake_closes(fake, tmp_path, pki):
    async def scenario() -> None:
        async with serving(fake, tmp_path, tls=settings(pki)) as (server, port):
            client = await asyncio.to_thread(acked_starttls, port)
            client.send_option(7, b"\0\0\0\3pc1\0\0")  # GO in plaintext
            assert await asyncio.to_thread(client.is_closed_by_server, 5)
            client.close()
            await eventually(lambda: server.admission.total == 0, "the connection is gone")

    run(scenario)


def test_the_handshake_timeout_covers_tls(fake, tmp_path, pki):
    from vdfarm.nbd.limits import ConnectionLimits

    async def scenario() -> None:
        limits = ConnectionLimits(handshake_timeout_s=0.5)
        async with serving(fake, tmp_path, limits=limits, tls=settings(pki)) as (server, port):
            client = await asyncio.to_thread(acked_starttls, port)  # then no ClientHello
            assert await asyncio.to_thread(client.is_closed_by_server, 5)
            client.close()
            await eventually(lambda: server.admission.total == 0, "the connection is gone")

    run(scenario)


def test_the_machine_gets_the_listeners_policy(fake, tmp_path, pki):
    async def scenario() -> None:
        async with serving(fake, tmp_path) as (server, port):
            client = await base.connect(port, "pc1")
            [conn] = server.connections
            assert conn.nbd.tls_policy is TLSPolicy.OFF
            client.close()

    run(scenario)
