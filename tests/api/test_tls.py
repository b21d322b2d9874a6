"""Native TLS of the API: `ApiServer(tls_cert=, tls_key=)` serves HTTPS only
(TLS 1.2 or newer); httpx and the farm client trust it through the CA that
signed it and refuse it with another CA (or the system's); unusable files
are refused when the server is made."""

from __future__ import annotations

import asyncio
import ssl

import httpx
import pytest

from tests.api.serving import WAIT_S, serving
from tests.api.tls import make_tls_files
from vdfarm.api.server import ApiServer, ApiTlsError
from vdfarm.client.farm import FarmClient
from vdfarm.client.http import Unreachable
from vdfarm.service.errors import Invalid


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    return make_tls_files(tmp_path_factory.mktemp("tls"))


def test_https_with_the_farm_ca(farm, token, tls):
    """Fails before: ApiServer had no TLS (the token crossed the network in clear)."""
    with serving(farm, tls_cert=tls.cert, tls_key=tls.key) as port:
        url = f"https://127.0.0.1:{port}"
        context = ssl.create_default_context(cafile=str(tls.ca))
        with httpx.Client(base_url=url, verify=context, timeout=WAIT_S) as client:
            answer = client.get("/api/v1/servers", headers={"Authorization": f"Bearer {token}"})
            assert answer.status_code == 200, answer.text
            assert client.get("/api/v1/servers").status_code == 200  # loopback, Host 127.0.0.1
        with FarmClient(url, token, ca_file=tls.ca) as remote:
            remote.devices.add("pc1")
            assert [d.name for d in remote.devices.list()] == ["pc1"]
        for wrong in (FarmClient(url, token, ca_file=tls.other_ca), FarmClient(url, token)):
            with wrong, pytest.raises(Unreachable, match="CERTIFICATE_VERIFY_FAILED"):
                wrong.devices.list()
        with pytest.raises(httpx.HTTPError):  # plain HTTP on the TLS port
            httpx.get(f"http://127.0.0.1:{port}/api/v1/servers", timeout=WAIT_S)
    assert [d.name for d in farm.devices.list()] == ["pc1"]


def test_the_server_speaks_tls_1_2_or_newer(farm, tls):
    async def started_context() -> ssl.SSLContext:
        api = ApiServer(farm, "127.0.0.1", 0, tls_cert=tls.cert, tls_key=tls.key)
        await api.start()
        try:
            assert api.config.ssl is not None
            return api.config.ssl
        finally:
            await api.stop()

    context = asyncio.run(started_context())
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2


def test_unusable_files_are_refused_at_once(farm, tls, tmp_path):
    with pytest.raises(ApiTlsError, match="cannot use the API TLS certificate"):
        ApiServer(farm, tls_cert=tmp_path / "nope.pem", tls_key=tls.key)
    with pytest.raises(ApiTlsError, match="cannot use the API TLS certificate"):
        ApiServer(farm, tls_cert=tls.cert, tls_key=tls.ca)  # not its key
    with pytest.raises(ApiTlsError, match="needs its certificate"):
        ApiServer(farm, tls_key=tls.key)


def test_a_bad_ca_file_is_one_error(tmp_path):
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate\n")
    with pytest.raises(Invalid, match="cannot use the CA file"):
        FarmClient("https://127.0.0.1:1", ca_file=bad)
    with pytest.raises(Invalid, match="cannot use the CA file .*No such file"):
        FarmClient("https://127.0.0.1:1", ca_file=tmp_path / "missing.pem")
