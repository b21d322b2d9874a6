"""/api/v1/replication/files: a version file's chunk list and its bytes by
Range, given only when held verified here and only to a `replica` (or
admin) token; /replication/sent counts what went out."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from datetime import UTC, datetime

import pytest
from fastapi.testclient import TestClient

from tests.api.conftest import OTHER_HOST, error_of, unchanged
from tests.store.replica_helpers import list_of
from vdfarm.farm import db
from vdfarm.service import replica_source
from vdfarm.service.tokens import TokenInfo
from vdfarm.store import recovery
from vdfarm.store.chunks import CHUNK_SIZE
from vdfarm.store.chunks import chunk_list as real_chunk_list
from vdfarm.store.manifest import write_manifest
from vdfarm.store.wire_frames import Unframer

FILES = "/api/v1/replication/files"
SIZE = 2 * CHUNK_SIZE + 3 * 512
REPLICA_SECRET = "replica-secret-for-tests"
WAIT_S = 30


@pytest.fixture
def image(tmp_path):
    data = os.urandom(SIZE)
    (tmp_path / "src.raw").write_bytes(data)
    return data


@pytest.fixture
def held(farm, image, tmp_path):
    """vDisk w imported from IMAGE; its base.raw is held verified here."""
    farm.vdisks.import_image("w", tmp_path / "src.raw")
    return farm


def test_the_chunk_list_is_the_databases_file(admin, held, image):
    response = admin.get(f"{FILES}/w/base.raw/chunks")
    assert response.status_code == 200, response.text
    listed = response.json()
    assert listed == list_of(image, CHUNK_SIZE).to_dict()
    base = held.versions.list("w")[0]
    assert (listed["size"], listed["sha256"]) == (base.size, base.sha256)
    assert admin.get(f"{FILES}/w/base.raw/chunks").json() == listed  # from its cache now


@pytest.mark.parametrize(
    ("header", "start", "end"),
    [
        ("bytes=0-99", 0, 100),
        ("bytes=100-", 100, SIZE),
        (f"bytes={CHUNK_SIZE}-{2 * CHUNK_SIZE - 1}", CHUNK_SIZE, 2 * CHUNK_SIZE),
        (f"bytes=10-{SIZE * 3}", 10, SIZE),
        ("bytes=-512", SIZE - 512, SIZE),
    ],
)
def test_a_range_is_answered_206(admin, held, image, header, start, end):
    response = admin.get(f"{FILES}/w/base.raw", headers={"Range": header})
    assert response.status_code == 206, response.text
    assert response.headers["content-range"] == f"bytes {start}-{end - 1}/{SIZE}"
    assert response.headers["content-length"] == str(end - start)
    assert response.content == image[start:end]


def test_no_range_gives_the_whole_file(admin, held, image):
    response = admin.get(f"{FILES}/w/base.raw")
    assert response.status_code == 200
    assert response.headers["accept-ranges"] == "bytes"
    assert hashlib.sha256(response.content).hexdigest() == held.versions.list("w")[0].sha256


@pytest.mark.parametrize(
    "header",
    ["bytes=5-2", f"bytes={SIZE}-", "items=0-1", "bytes=0-1,4-5", "bytes=-0", "bytes=-", "x"],
)
def test_a_range_that_cannot_be_answered_is_416(admin, held, header):
    response = admin.get(f"{FILES}/w/base.raw", headers={"Range": header})
    error_of(response, 416)
    assert response.headers["content-range"] == f"bytes */{SIZE}"


def test_bytes_sent_are_counted_per_file(admin, held, local):
    assert local.get("/api/v1/replication/sent").json() == {}
    admin.get(f"{FILES}/w/base.raw", headers={"Range": "bytes=0-999"})
    admin.get(f"{FILES}/w/base.raw", headers={"Range": f"bytes={SIZE - 24}-"})
    admin.get(f"{FILES}/w/base.raw/chunks")
    admin.get(f"{FILES}/w/base.raw", headers={"Range": "bytes=9-1"})
    assert local.get("/api/v1/replication/sent").json() == {"w/base.raw": 1024}


def test_only_files_held_verified_are_given(admin, held, farm):
    farm.versions.new("w")  # v1 open for maintenance: no sha256 yet
    v1 = farm.versions.list("w")[1].file
    for url in (
        f"{FILES}/nope/base.raw",
        f"{FILES}/w/nope.qcow2",
        f"{FILES}/w/{v1}",
        f"{FILES}/w/{v1}/chunks",
    ):
        assert "verified" in error_of(admin.get(url), 404)
    farm.versions.promote("w", "test")
    assert admin.get(f"{FILES}/w/{v1}/chunks").status_code == 200
    recovery.mark_unverified(farm.store, "w", v1)  # a device wrote it since
    assert "verified" in error_of(admin.get(f"{FILES}/w/{v1}"), 404)


def test_a_file_changed_behind_vdfarms_back_is_not_listed(admin, held, farm):
    path = farm.store.root / "w" / "base.raw"
    with open(path, "r+b") as fh:
        fh.seek(5000)
        fh.write(b"drift")
    detail = error_of(admin.get(f"{FILES}/w/base.raw/chunks"), 404)
    assert detail == "this server's copy of base.raw of vDisk w does not match the farm database"


def test_a_manifest_that_disagrees_with_the_database_is_not_served(admin, held, farm):
    manifest = farm.store.manifest("w")
    base = manifest.files[0]
    other = type(base)(base.name, base.format, base.size, "0" * 64)
    write_manifest(farm.store.root / "w", type(manifest)("w", (other,)))
    error_of(admin.get(f"{FILES}/w/base.raw"), 404)
    (farm.store.root / "w" / "manifest.json").unlink()
    error_of(admin.get(f"{FILES}/w/base.raw/chunks"), 404)


@pytest.mark.parametrize("name", ["%2E%2E", ".hidden", "a%00b", "manifest.json"])
def test_names_must_be_plain(admin, held, name):
    assert "invalid file name" in error_of(admin.get(f"{FILES}/w/{name}"), 400)
    error_of(admin.get(f"{FILES}/w/{name}/chunks"), 400)
    error_of(admin.get(f"{FILES}/%2E%2E/base.raw"), 400)
    assert admin.get(f"{FILES}/w/a%2Fb").status_code == 404


@pytest.fixture
def as_role(app, farm):
    def client(role: str) -> TestClient:
        secret = farm.tokens.add(f"t-{role}", role, actor="test").secret
        return TestClient(app, client=OTHER_HOST, headers={"Authorization": f"Bearer {secret}"})

    return client


def test_read_and_operator_never_download_a_vdisk(as_role, held, local, farm):
    for role in ("read", "operator"):
        client = as_role(role)
        assert client.get("/api/v1/replication/sent").status_code == 200  # may read that
        with unchanged(farm):
            detail = error_of(client.get(f"{FILES}/w/base.raw"), 403)
            assert detail == (
                f"token t-{role} has role {role}; GET /replication/files/{{vdisk}}/{{file_name}} "
                "needs role replica"
            )
            error_of(client.get(f"{FILES}/w/base.raw/chunks"), 403)
    error_of(local.get(f"{FILES}/w/base.raw"), 401)  # the open loopback reads stop here


@pytest.fixture
def replica(app, farm, monkeypatch):
    """A client with a `replica` token. The database refuses the role until
    its migration (0012) exists, so the token's lookup is stood in for; the
    role rules and the routes are the real ones."""
    real = farm.tokens.authenticate

    def authenticate(secret):
        if secret == REPLICA_SECRET:
            at = datetime(2030, 1, 1, tzinfo=UTC)
            return TokenInfo("peer-b", "replica", at, "test", None, None)
        return real(secret)

    monkeypatch.setattr(farm.tokens, "authenticate", authenticate)
    return TestClient(app, client=OTHER_HOST, headers={"Authorization": f"Bearer {REPLICA_SECRET}"})


def test_a_replica_token_fetches_files_and_does_nothing_else(replica, held, image, farm):
    assert replica.get(f"{FILES}/w/base.raw/chunks").status_code == 200
    assert replica.get(f"{FILES}/w/base.raw", headers={"Range": "bytes=0-9"}).content == image[:10]
    with unchanged(farm):
        detail = error_of(replica.get("/api/v1/devices"), 403)
        assert detail == "token peer-b has role replica; GET /devices needs role read"
        error_of(replica.post("/api/v1/vdisks", json={"name": "x", "source_path": "y"}), 403)
        error_of(replica.get("/api/v1/replication/sent"), 403)
        error_of(replica.get("/api/v1/tokens"), 403)
        error_of(replica.post("/api/v1/locks/w/release"), 403)


@pytest.mark.skipif(
    db.HEAD_REVISION < "0012", reason="the database accepts role replica from migration 0012"
)
def test_a_replica_token_made_by_the_service(as_role, held):
    client = as_role("replica")
    assert client.get(f"{FILES}/w/base.raw/chunks").status_code == 200
    error_of(client.get("/api/v1/devices"), 403)


def test_a_peer_is_asked_to_come_back_while_the_list_is_computed(admin, held, farm, monkeypatch):
    """Hashing a big file outlasts a peer's read timeout: the peer gets 503
    at once, one hashing goes on (however many ask) and fills the cache."""
    release, calls = threading.Event(), []

    def slow_chunk_list(path):
        calls.append(path)
        release.wait(WAIT_S)
        return real_chunk_list(path)

    monkeypatch.setattr(replica_source, "chunk_list", slow_chunk_list)
    monkeypatch.setattr(farm.replica_source, "wait_s", 0.05)
    for _ in range(2):
        assert "ask again" in error_of(admin.get(f"{FILES}/w/base.raw/chunks"), 503)
    assert len(calls) == 1
    release.set()
    deadline = time.monotonic() + WAIT_S
    while (answer := admin.get(f"{FILES}/w/base.raw/chunks")).status_code == 503:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert answer.status_code == 200
    assert answer.json()["sha256"] == farm.versions.list("w")[0].sha256


@pytest.fixture
def tables(farm, tmp_path):
    """vDisk t: a chunk of qcow2-like tables (mostly zeroes) between random ones."""
    table = bytearray(CHUNK_SIZE)
    for at in range(0, CHUNK_SIZE, 4096):
        table[at : at + 8] = os.urandom(8)
    data = os.urandom(CHUNK_SIZE) + bytes(table) + os.urandom(1024)
    (tmp_path / "t.raw").write_bytes(data)
    farm.vdisks.import_image("t", tmp_path / "t.raw")
    return data


def test_frames_are_sent_only_to_who_asks(admin, tables, local):
    whole = {"Range": f"bytes=0-{len(tables) - 1}"}
    plain = admin.get(f"{FILES}/t/base.raw", headers=whole)
    assert plain.status_code == 206 and plain.content == tables
    assert "x-vdfarm-frames" not in plain.headers
    framed = admin.get(f"{FILES}/t/base.raw", headers=whole | {"X-Vdfarm-Frames": "zlib"})
    assert framed.status_code == 206
    assert framed.headers["x-vdfarm-frames"] == "zlib"
    assert framed.headers["content-range"] == f"bytes 0-{len(tables) - 1}/{len(tables)}"
    assert "content-length" not in framed.headers  # chunked: the size is known once packed
    unframer = Unframer(len(tables))
    assert b"".join(bytes(p) for p in unframer.feed(framed.content)) == tables
    assert unframer.complete
    assert len(framed.content) < len(tables) - CHUNK_SIZE // 2  # the table chunk went small
    sent = local.get("/api/v1/replication/sent").json()["t/base.raw"]
    assert sent == len(tables) + len(framed.content)  # what went on the wire, both times


@pytest.mark.parametrize(
    "headers",
    [{"X-Vdfarm-Frames": "zlib"}, {"X-Vdfarm-Frames": "lz77", "Range": "bytes=0-99"}],
    ids=["no-range", "unknown-kind"],
)
def test_frames_need_a_range_and_a_kind_this_server_packs(admin, tables, headers):
    response = admin.get(f"{FILES}/t/base.raw", headers=headers)
    assert response.status_code in (200, 206)
    assert "x-vdfarm-frames" not in response.headers
    assert response.content == tables[: len(response.content)]
    assert response.headers["content-length"] == str(len(response.content))
