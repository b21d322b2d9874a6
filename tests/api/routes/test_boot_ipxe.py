"""GET /boot/ipxe?mac=… through the real app: no token; a known device is
logged in (a reservation) and gets a script that boots its version's
kernel and initramfs from this server with its parameters; every refusal
is a script that says why in one line and tries again, changing nothing;
a missing or malformed MAC (or an injection attempt) is 400; auto-add
registers unknown MACs only when set, within its caps; the boot stages
(ipxe, kernel, streaming, up) are recorded and shown, stuck after a minute."""

from __future__ import annotations

import hashlib
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from tests.api.conftest import OTHER_HOST, error_of, unchanged
from tests.api.routes.test_boot_files import INITRD, KERNEL, app, booting, transfer  # noqa: F401
from vdfarm.api.app import create_app
from vdfarm.api.limits import ApiLimits
from vdfarm.service.auto_add import AUTO_ADD_PER_MINUTE
from vdfarm.service.login import set_subnet_affinity

MAC = "aa:bb:cc:00:00:01"  # pc1's (the `populated` fixture)
UNKNOWN = "52:54:00:00:00:99"
HOST = "10.0.2.2:8080"  # the Host the client reached


def ipxe(client, mac: str | None = MAC, host: str = HOST):
    query = "" if mac is None else f"?mac={quote(mac, safe='')}"
    return client.get(f"/boot/ipxe{query}", headers={"Host": host})


def script_of(answer) -> list[str]:
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain")
    lines = answer.text.splitlines()
    assert lines[0] == "#!ipxe"
    return lines


def assert_retry(answer, says: str, mac: str = MAC) -> str:
    """The refusal script: one echo line saying SAYS, a wait, the same URL again."""
    lines = script_of(answer)
    assert lines[1].startswith("echo vdfarm: ") and says in lines[1], lines
    assert lines[2:] == [
        "echo vdfarm: trying again in 15 s",
        "sleep 15",
        f"chain --autofree http://{HOST}/boot/ipxe?mac={mac}",
    ]
    return lines[1]


@pytest.fixture
def up(booting, farm):  # noqa: F811
    """pc1 boots w (with boot files) and this server is up."""
    farm.servers.register(10809, 8080, advertise="10.0.2.2")
    return farm


def reservations(farm) -> int:
    with farm.engine.connect() as conn:
        return conn.execute(text("SELECT count(*) FROM login_reservations")).scalar()


def test_a_known_device_gets_a_script_that_boots_its_version(up, remote, booting):  # noqa: F811
    lines = script_of(ipxe(remote))
    kernel_sha = hashlib.sha256(KERNEL).hexdigest()
    initrd_sha = hashlib.sha256(INITRD).hexdigest()
    files = f"http://{HOST}/boot/files/w/0"
    assert lines[1] == f"echo vdfarm: pc1 boots version 0 of vDisk w from server {up.server_name}"
    assert lines[2] == (
        f"kernel {files}/kernel?sha256={kernel_sha}&mac={MAC} console=ttyS0 "
        "vdfarm.server=10.0.2.2:10809 vdfarm.export=pc1 vdfarm.id=pc1 "
        "vdfarm.farm=http://10.0.2.2:8080"
    )
    assert lines[3] == f"initrd {files}/initrd?sha256={initrd_sha}&mac={MAC}"
    assert lines[4:] == ["boot"]
    assert reservations(up) == 1  # logged in: the server counts it until it connects
    assert up.devices.show("pc1").stage == "ipxe"
    # The MAC in any spelling iPXE or a person may use; a name is not a MAC.
    assert script_of(ipxe(remote, "AA-BB-CC-00-00-01"))[2] == lines[2]


def test_the_script_follows_login(up, remote):
    """The same login as POST /login: here, fixed subnet affinity from the
    device's address."""
    set_subnet_affinity(up, "w", "fixed")
    up.servers.configure(up.server_name, subnet="10.9.0.0/16")  # not the remote's
    assert_retry(ipxe(remote), "fixed subnet affinity")
    up.servers.configure(up.server_name, subnet="192.0.2.0/24")
    assert script_of(ipxe(remote))[-1] == "boot"


def test_an_unknown_mac_is_told_so_and_nothing_changes(up, remote):
    with unchanged(up):
        says = assert_retry(ipxe(remote, UNKNOWN), f"unknown MAC {UNKNOWN}", UNKNOWN)
    assert f"vdfarm device add NAME --mac {UNKNOWN} --vdisk VDISK" in says


def test_auto_add_registers_an_unknown_mac_with_the_vdisk_and_boots_it(up, remote):
    up.settings.change(auto_add_vdisk="w")
    lines = script_of(ipxe(remote, UNKNOWN))
    assert "vdfarm.export=pxe-525400000099" in lines[2] and lines[-1] == "boot"
    device = up.devices.show(UNKNOWN)
    assert (device.name, device.vdisk, device.auto_added) == ("pxe-525400000099", "w", True)
    assert device.stage == "ipxe"
    [entry] = [e for e in up.audit.list() if e.action == "device.add" and e.after["auto_added"]]
    assert entry.actor == f"auto-add@{OTHER_HOST[0]}"
    assert script_of(ipxe(remote, UNKNOWN))[2] == lines[2]  # known now: not added twice
    assert len([d for d in up.devices.list() if d.auto_added]) == 1


def test_auto_add_is_capped_in_number_and_per_minute(up, remote, clock):
    up.settings.change(auto_add_vdisk="w", auto_add_limit=1)
    script_of(ipxe(remote, UNKNOWN))
    other = "52:54:00:00:01:00"
    with unchanged(up):
        assert_retry(ipxe(remote, other), "holds 1 auto-added devices, its limit", other)
    up.settings.change(auto_add_limit=1000)
    macs = [f"52:54:00:00:02:{n:02x}" for n in range(AUTO_ADD_PER_MINUTE)]
    for mac in macs[1:]:
        script_of(ipxe(remote, mac))
    with unchanged(up):
        assert_retry(ipxe(remote, macs[0]), "auto-added in the last minute", macs[0])
    clock.advance(61)
    up.servers.register(10809, 8080, advertise="10.0.2.2")  # its heartbeat, at the new time
    assert script_of(ipxe(remote, macs[0]))[-1] == "boot"
    assert up.devices.show(macs[0]).auto_added


def test_auto_add_is_off_again_once_cleared(up, remote):
    up.settings.change(auto_add_vdisk="w")
    up.settings.change(auto_add_vdisk="")
    with unchanged(up):
        assert_retry(ipxe(remote, UNKNOWN), "unknown MAC", UNKNOWN)


@pytest.mark.parametrize(
    "mac, says",
    [
        (None, "give the device's MAC"),
        ("", "give the device's MAC"),
        ("zz:zz", "invalid mac"),
        ("${net0/mac}", "invalid mac"),  # an iPXE that did not expand it
        (f"{MAC} || shell", "invalid mac"),
        (f"{MAC}&&boot", "invalid mac"),
        ("aa:bb:cc:00:00:01:02", "invalid mac"),
    ],
)
def test_a_missing_malformed_or_hostile_mac_is_refused(up, remote, mac, says):
    with unchanged(up):
        assert says in error_of(ipxe(remote, mac), 400)
    assert ipxe(remote).status_code == 200  # the server goes on


def test_an_overlong_mac_and_a_hostile_host_are_refused(up, remote):
    with unchanged(up):
        error_of(ipxe(remote, "a" * 65), 422)
        for host in ("evil||shell", "x${net0/mac}", "a b", "h:port"):
            assert "invalid Host" in error_of(ipxe(remote, host=host), 400)


def test_a_device_without_a_vdisk_or_boot_files_is_told_so(populated, farm, remote):
    farm.servers.register(10809, 8080, advertise="10.0.2.2")
    farm.devices.add("bare", mac="aa:bb:cc:00:00:02")
    with unchanged(farm):
        says = assert_retry(ipxe(remote, "aa:bb:cc:00:00:02"), "device bare", "aa:bb:cc:00:00:02")
        assert "has no vDisk assigned (vdfarm device assign bare VDISK)" in says
        says = assert_retry(ipxe(remote), "version 0 of vDisk w has no boot files")
    assert reservations(farm) == 0


def test_no_server_up_is_said_and_the_device_waiting_gets_stuck(
    booting,  # noqa: F811
    farm,
    remote,
    clock,
):
    assert_retry(ipxe(remote), "no server is up")
    assert reservations(farm) == 0
    assert farm.devices.show("pc1").stage == "ipxe"  # waiting: "No Server"
    for _ in range(5):  # it tries again every 15 s: the same wait, not a new boot
        clock.advance(15)
        assert_retry(ipxe(remote), "no server is up")
    shown = farm.devices.show("pc1")
    assert (shown.stage, shown.stuck) == ("ipxe", True)


def test_a_command_line_ipxe_would_interpret_is_refused(up, admin, remote):
    answer = admin.post("/api/v1/vdisks/w/boot", json={"cmdline": "console=ttyS0 ${evil}"})
    assert answer.status_code == 200, answer.text
    with unchanged(up):
        assert_retry(ipxe(remote), "the kernel command line holds U+0024")


def test_a_vanished_boot_file_is_said_and_the_server_goes_on(up, remote, booting):  # noqa: F811
    (up.store.root / "w" / booting["boot"]["kernel"]["file"]).unlink()
    with unchanged(up):
        says = assert_retry(ipxe(remote), "this server holds no kernel of version 0 of vDisk w")
        assert reservations(up) == 0
    beyond = remote.get("/boot/files/w/0/initrd", headers={"Range": f"bytes={len(INITRD)}-"})
    assert error_of(beyond, 416) and "\n" not in says
    assert remote.get("/boot/files/w/0/initrd").content == INITRD


def test_the_route_is_rate_limited_per_source(up, transfer):  # noqa: F811
    limited = create_app(
        up, transfer_dir=transfer, limits=ApiLimits(boot_rate_per_s=0.01, boot_burst=2)
    )
    client = TestClient(limited, client=("192.0.2.8", 1))
    assert [ipxe(client).status_code for _ in range(2)] == [200, 200]
    assert "too many boot requests" in error_of(ipxe(client), 429)
    assert ipxe(TestClient(limited, client=("192.0.2.9", 1))).status_code == 200


def test_one_source_reserves_for_a_bounded_number_of_devices(up, transfer):  # noqa: F811
    capped = create_app(up, transfer_dir=transfer, limits=ApiLimits(reservations_per_source=1))
    client = TestClient(capped, client=("192.0.2.8", 1))
    up.devices.add("pc2", mac="aa:bb:cc:00:00:03", vdisk="w")
    assert script_of(ipxe(client))[-1] == "boot"
    assert_retry(ipxe(client, "aa:bb:cc:00:00:03"), "too many devices booting", "aa:bb:cc:00:00:03")


def test_the_stages_are_recorded_in_order_and_a_device_stuck_is_flagged(up, remote, admin, clock):
    lines = script_of(ipxe(remote))
    kernel = lines[2].split(" ")[1].replace(f"http://{HOST}", "")
    initrd = lines[3].split(" ")[1].replace(f"http://{HOST}", "")
    # Anyone may fetch boot files; only the address that fetched the script moves pc1.
    stranger = TestClient(remote.app, client=("192.0.2.99", 5))
    assert stranger.get(kernel).status_code == 200
    assert up.devices.show("pc1").stage == "ipxe"
    clock.advance(1)
    assert remote.get(kernel).content == KERNEL
    clock.advance(1)
    assert remote.get(initrd).content == INITRD  # the same stage: its time stays
    device_id = up.devices.show("pc1").id
    clock.advance(1)
    up.sessions.started(device_id, up.vdisks.show("w").id, 0, OTHER_HOST[0])
    clock.advance(1)
    up.sessions.report_cache_usage({device_id: 4096})
    shown = up.devices.show("pc1")
    times = list(shown.boot_stages.values())
    assert list(shown.boot_stages) == ["ipxe", "kernel", "streaming", "up"]
    assert all(t is not None for t in times) and times == sorted(times)
    assert (times[1] - times[0]).total_seconds() == 1  # the kernel, not the initramfs
    assert (shown.stage, shown.stuck) == ("up", False)
    body = admin.get("/api/v1/devices/pc1").json()
    assert body["stage"] == "up" and list(body["boot_stages"]) == list(shown.boot_stages)
    assert body["last_seen"] is not None
    # A new boot starts over; more than a minute at ipxe is stuck.
    script_of(ipxe(remote))
    assert up.devices.show("pc1").boot_stages["kernel"] is None
    clock.advance(61)
    [listed] = [d for d in admin.get("/api/v1/devices").json() if d["name"] == "pc1"]
    assert (listed["stage"], listed["stuck"]) == ("ipxe", True)
