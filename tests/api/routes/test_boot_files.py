"""Boot files through the API: given to a vDisk's newest version from the
transfer directory (admin only; paths outside it, links and hard links
refused with one line, nothing changed), shown with the version, and served
to booting devices by GET /boot/files/… — no token, rate-limited per
source, whole or by Range (206/416), and only what the farm recorded."""

from __future__ import annotations

import hashlib
import os

import httpx
import pytest
from fastapi.testclient import TestClient

from tests.api.conftest import OTHER_ACTOR, OTHER_HOST, error_of, unchanged
from tests.api.serving import serving
from vdfarm.api.app import create_app
from vdfarm.api.limits import ApiLimits
from vdfarm.api.recent_answers import RecentAnswers

KERNEL = bytes(range(256)) * 4000  # 1,024,000 bytes
INITRD = b"initramfs" * 30000


@pytest.fixture
def transfer(tmp_path):
    path = tmp_path / "transfer"
    path.mkdir()
    (path / "vmlinuz").write_bytes(KERNEL)
    (path / "initrd.gz").write_bytes(INITRD)
    return path


@pytest.fixture
def app(farm, transfer):
    return create_app(farm, transfer_dir=transfer)


@pytest.fixture
def booting(populated, admin):
    answer = admin.post(
        "/api/v1/vdisks/w/boot",
        json={"kernel": "vmlinuz", "initrd": "initrd.gz", "cmdline": "console=ttyS0"},
    )
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_an_admin_gives_boot_files_from_the_transfer_directory(booting, admin, farm, transfer):
    assert booting["number"] == 0 and booting["boot"]["cmdline"] == "console=ttyS0"
    assert booting["boot"]["kernel"]["sha256"] == hashlib.sha256(KERNEL).hexdigest()
    assert booting["boot"]["initrd"]["size"] == len(INITRD)
    shown = admin.get("/api/v1/vdisks/w/versions/0").json()
    assert shown["boot"] == booting["boot"]
    [entry] = farm.audit.list(limit=1)
    assert (entry.action, entry.actor) == ("version.boot", OTHER_ACTOR)
    assert entry.after["sources"]["kernel"] == str(transfer / "vmlinuz")
    assert error_of(admin.get("/api/v1/vdisks/w/versions/7"), 404) == "vDisk w has no version 7"
    cleared = admin.post("/api/v1/vdisks/w/boot", json={"clear": True})
    assert cleared.status_code == 200 and cleared.json()["boot"] is None


def test_paths_outside_links_and_bad_lines_are_refused(populated, admin, farm, transfer, tmp_path):
    outside = tmp_path / "outside"
    outside.write_bytes(KERNEL)
    (transfer / "link").symlink_to(outside)
    os.link(outside, transfer / "hard")
    cases = {
        str(outside): "is outside the transfer directory",
        "../outside": "'..' is not allowed",
        "link": "is a symbolic link: refused in the transfer directory",
        "hard": "has other hard links",
        "nope": "kernel file",
    }
    with unchanged(farm):
        for path, message in cases.items():
            detail = error_of(admin.post("/api/v1/vdisks/w/boot", json={"kernel": path}), 400)
            assert message in detail, (path, detail)
        detail = error_of(
            admin.post("/api/v1/vdisks/w/boot", json={"kernel": "vmlinuz", "cmdline": "a\nb"}),
            400,
        )
        assert "printable ASCII" in detail
        error_of(admin.post("/api/v1/vdisks/w/boot", json={"kernel": "", "clear": 1}), 422)
        error_of(admin.post("/api/v1/vdisks/w/boot", json={"kernel": "vmlinuz", "x": 1}), 422)


def test_only_an_admin_may_give_boot_files(populated, app, farm):
    reader = farm.tokens.add("r", "operator", actor="test").secret
    client = TestClient(app, client=OTHER_HOST, headers={"Authorization": f"Bearer {reader}"})
    detail = error_of(client.post("/api/v1/vdisks/w/boot", json={"kernel": "vmlinuz"}), 403)
    assert detail == "token r has role operator; POST /vdisks/{name}/boot needs role admin"
    with unchanged(farm):
        error_of(TestClient(app, client=OTHER_HOST).post("/api/v1/vdisks/w/boot", json={}), 401)
    assert farm.versions.show("w", 0).boot is None


def test_a_booting_device_gets_the_files_without_a_token(booting, remote):
    whole = remote.get("/boot/files/w/0/kernel")
    assert whole.status_code == 200 and whole.content == KERNEL
    assert whole.headers["accept-ranges"] == "bytes"
    assert whole.headers["etag"] == f'"{hashlib.sha256(KERNEL).hexdigest()}"'
    part = remote.get("/boot/files/w/0/kernel", headers={"Range": "bytes=1000-1999999"})
    assert part.status_code == 206 and part.content == KERNEL[1000:]
    assert part.headers["content-range"] == f"bytes 1000-{len(KERNEL) - 1}/{len(KERNEL)}"
    tail = remote.get("/boot/files/w/0/initrd", headers={"Range": "bytes=-10"})
    assert tail.status_code == 206 and tail.content == INITRD[-10:]
    sha = booting["boot"]["initrd"]["sha256"]
    assert remote.get(f"/boot/files/w/0/initrd?sha256={sha}").content == INITRD


def test_a_real_server_sends_the_files_from_the_page_cache(booting, farm):
    """Through uvicorn on a socket the body goes out with sendfile(2)
    (`zerocopy_h11`): the same bytes, ranges and headers as above, several
    answers on one connection, and no file left open."""
    open_before = len(os.listdir("/proc/self/fd"))
    with serving(farm) as port, httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
        whole = client.get("/boot/files/w/0/kernel")
        assert whole.status_code == 200 and whole.content == KERNEL
        assert whole.headers["content-length"] == str(len(KERNEL))
        assert whole.headers["etag"] == f'"{hashlib.sha256(KERNEL).hexdigest()}"'
        part = client.get("/boot/files/w/0/kernel", headers={"Range": "bytes=1000-1999"})
        assert part.status_code == 206 and part.content == KERNEL[1000:2000]
        assert part.headers["content-range"] == f"bytes 1000-1999/{len(KERNEL)}"
        tail = client.get("/boot/files/w/0/initrd", headers={"Range": "bytes=-10"})
        assert tail.status_code == 206 and tail.content == INITRD[-10:]
        beyond = client.get("/boot/files/w/0/kernel", headers={"Range": f"bytes={len(KERNEL)}-"})
        assert beyond.status_code == 416
        assert client.get("/boot/files/w/0/initrd").content == INITRD
    assert len(os.listdir("/proc/self/fd")) == open_before


def test_what_was_not_recorded_or_cannot_be_answered_is_refused(booting, remote, farm):
    with unchanged(farm):
        beyond = remote.get("/boot/files/w/0/kernel", headers={"Range": f"bytes={len(KERNEL)}-"})
        assert "starts past the end" in error_of(beyond, 416)
        assert beyond.headers["content-range"] == f"bytes */{len(KERNEL)}"
        error_of(remote.get("/boot/files/w/0/kernel", headers={"Range": "bytes=1-2,5-6"}), 416)
        for path in (
            "/boot/files/w/1/kernel",  # no such version
            "/boot/files/w/0/bios",  # no such kind
            "/boot/files/x/0/kernel",  # no such vDisk
            "/boot/files/w/0/kernel?sha256=" + "0" * 64,  # not that file (any more)
            "/boot/files/..%2Fw/0/kernel",
        ):
            error_of(remote.get(path), 404)
        error_of(remote.get("/boot/files/w/zero/kernel"), 422)
    (farm.store.root / "w" / booting["boot"]["kernel"]["file"]).unlink()  # vanished
    detail = error_of(remote.get("/boot/files/w/0/kernel"), 404)
    assert detail == "this server holds no kernel of version 0 of vDisk w"
    assert remote.get("/boot/files/w/0/initrd").status_code == 200  # the server goes on


def test_boot_requests_are_rate_limited_per_source(farm, transfer, booting):
    app = create_app(
        farm, transfer_dir=transfer, limits=ApiLimits(boot_rate_per_s=0.01, boot_burst=2)
    )
    one = TestClient(app, client=("192.0.2.8", 1))
    two = TestClient(app, client=("192.0.2.9", 1))
    assert [one.get("/boot/files/w/0/initrd").status_code for _ in range(2)] == [200, 200]
    refused = one.get("/boot/files/w/0/initrd")
    assert "too many boot requests from 192.0.2.8" in error_of(refused, 429)
    assert int(refused.headers["retry-after"]) >= 1
    assert two.get("/boot/files/w/0/initrd").status_code == 200  # another source
    login = one.post("/api/v1/login", json={"device": "pc1", "reserve": False})
    assert login.status_code != 429  # logins have their own bucket (503 here: no server up)


def test_a_boot_storm_asks_the_database_once_a_second(booting, farm, transfer, monkeypatch):
    """The database's answer for a file is kept a second (per server): a
    hundred devices fetching it make one look-up; a refusal is not kept,
    so a file given a moment later is served at once."""
    asked = []
    held = farm.boot.held

    def counted(*args):
        asked.append(args)
        return held(*args)

    monkeypatch.setattr(farm.boot, "held", counted)
    app = create_app(farm, transfer_dir=transfer, limits=ApiLimits(boot_burst=1000))
    remote = TestClient(app, client=OTHER_HOST)
    clock = Clock()
    app.state.held_boot_files = RecentAnswers(ttl_s=1.0, clock=clock)
    for _ in range(100):
        assert remote.get("/boot/files/w/0/initrd").content == INITRD
    assert len(asked) == 1
    clock.now += 1.0
    assert remote.get("/boot/files/w/0/initrd").status_code == 200
    assert len(asked) == 2
    for _ in range(3):
        error_of(remote.get("/boot/files/w/1/initrd"), 404)
    assert len(asked) == 5  # each refusal was a look-up of its own


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now
