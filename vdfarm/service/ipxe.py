"""The iPXE script of a booting device (`GET /boot/ipxe?mac=…`): log it in
and tell its iPXE what to boot.

Rules:
- The device is found by its MAC only (normalised; a malformed one is
  Invalid: the route answers 400). An unknown MAC is auto-added when the
  farm's `auto_add_vdisk` is set (`auto_add`, with its caps), else told so.
- The decision is the same `login` as `POST /login` (placement,
  max-booting, subnet affinity, home rule) from the device's address. It
  is asked twice: first without a reservation, so that a refusal found
  after it (no boot files, a file this server does not hold, a command
  line or server address iPXE would interpret) leaves nothing behind; then
  with one, for the answer. A version or server that changed in between
  is checked again.
- The answer boots the version login chose: `kernel` and `initrd` from
  this server's `/boot/files/…` (BASE_URL: the address the client
  reached), each URL naming the file's sha256 (so a kernel is never booted
  with another kernel's initramfs) and the device's MAC (its `kernel`
  stage), and the command line = the version's own + the device's
  parameters (`ipxe_script.device_params`: the chosen server's NBD
  address and port, the export = the device's name, the farm's API URLs
  = the chosen server and its alternatives).
- Any refusal is a script that echoes one line and tries again
  (`ipxe_script.retry_script`): unknown MAC, no vDisk, no server
  (Unavailable), no boot files, a boot file this server does not hold, a
  server address or command line unsafe in a script.
- The boot stage `ipxe` is recorded (with the client's address) when the
  device gets its boot script, and when it is known and assigned but no
  server can take it now (so `device list` shows it stuck at ipxe, the
  "No Server" case); configuration refusals change nothing.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from sqlalchemy import select

from vdfarm.farm.boot_stages import IPXE
from vdfarm.farm.models import Device, Vdisk, VdiskVersion, VersionBootFile
from vdfarm.service.audit import AuditWriter
from vdfarm.service.auto_add import auto_add
from vdfarm.service.boot import BootService, HeldBootFile
from vdfarm.service.boot_records import INITRD, KERNEL
from vdfarm.service.boot_stages import record_stage
from vdfarm.service.deps import Clock, SessionFactory
from vdfarm.service.errors import Invalid, NotFound, ServiceError, Unavailable
from vdfarm.service.ipxe_script import (
    UnsafeScriptText,
    boot_script,
    check_script_text,
    device_params,
    retry_script,
)
from vdfarm.service.login import LoginResult, LoginService
from vdfarm.service.settings import SettingsService
from vdfarm.service.validation import parse_mac

log = logging.getLogger("vdfarm.boot")

# scheme://host[:port], host a DNS name, an IPv4 address or a bracketed IPv6 one
_BASE_URL = re.compile(r"https?://([A-Za-z0-9.-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\])(:[0-9]{1,5})?")
MAX_MAC_TEXT = 64


class Refusal(Exception):
    """Why a device cannot boot now (its script says it and tries again)."""


@dataclass(frozen=True)
class IpxeAnswer:
    """An iPXE script, and whether it boots (False: it says why and retries)."""

    script: str
    boots: bool
    device: str | None = None


def check_base_url(base_url: str) -> str:
    """BASE_URL (scheme://host[:port], no path) if it may start URLs in a
    script. Raises Invalid."""
    if not _BASE_URL.fullmatch(base_url):
        raise Invalid(f"invalid Host for a boot script: {base_url[:80]!r}")
    return base_url


def check_mac(text: str | None) -> str:
    """TEXT as a normalised MAC. Raises Invalid (missing or malformed)."""
    if not text:
        raise Invalid("give the device's MAC: GET /boot/ipxe?mac=${net0/mac}")
    mac = parse_mac(text) if len(text) <= MAX_MAC_TEXT else None
    if mac is None:
        raise Invalid("invalid mac: give the MAC as aa:bb:cc:dd:ee:ff (mac=${net0/mac})")
    return mac


class IpxeService:
    """Per-device iPXE scripts for the boot route."""

    def __init__(
        self,
        session: SessionFactory,
        clock: Clock,
        audit: AuditWriter,
        settings: SettingsService,
        logins: LoginService,
        boot: BootService,
    ) -> None:
        self._session = session
        self._clock = clock
        self._audit = audit
        self._settings = settings
        self._logins = logins
        self._boot = boot

    def script(self, base_url: str, mac_text: str | None, client_ip: str | None) -> IpxeAnswer:
        """The script for the device of MAC_TEXT, fetched from CLIENT_IP at
        BASE_URL (scheme://host[:port] the client reached).

        Raises Invalid (a missing or malformed MAC, a bad BASE_URL),
        Unavailable (the database is away).
        """
        base = check_base_url(base_url)
        mac = check_mac(mac_text)
        retry_url = f"{base}/boot/ipxe?mac={mac}"
        try:
            name = self._known_device(mac, client_ip)
            return IpxeAnswer(self._boot_script(base, mac, name, client_ip), True, name)
        except Refusal as why:
            log.info("iPXE boot of %s from %s refused: %s", mac, client_ip, why)
            return IpxeAnswer(retry_script(str(why), retry_url), False)

    def _known_device(self, mac: str, client_ip: str | None) -> str:
        """The name of MAC's device (auto-added if the farm says so).

        Raises Refusal, Unavailable (database).
        """
        with self._session() as session:
            found = session.execute(
                select(Device.name, Device.vdisk_id).where(Device.mac == mac)
            ).first()
        name, vdisk_id = found if found is not None else self._auto_add(mac, client_ip)
        if vdisk_id is None:
            raise Refusal(
                f"device {name} ({mac}) has no vDisk assigned (vdfarm device assign {name} VDISK)"
            )
        return str(name)

    def _auto_add(self, mac: str, client_ip: str | None) -> tuple[str, int | None]:
        """(name, vDisk id) of the device auto-added for MAC. Raises Refusal."""
        settings = self._settings.current()
        if settings.auto_add_vdisk is None:
            raise Refusal(
                f"unknown MAC {mac}: no device has it "
                f"(vdfarm device add NAME --mac {mac} --vdisk VDISK)"
            )
        try:
            with self._session() as session:
                device = auto_add(
                    session,
                    self._audit,
                    mac,
                    settings.auto_add_vdisk,
                    settings.auto_add_limit,
                    self._clock(),
                    client_ip,
                )
                return device.name, device.vdisk_id
        except ServiceError as exc:
            raise Refusal(exc.message) from exc

    def _login(self, mac: str, client_ip: str | None, reserve: bool) -> LoginResult:
        try:
            return self._logins.login(mac, client_ip, reserve=reserve)
        except Unavailable as exc:
            self._record_ipxe(mac, client_ip)  # known, assigned, waiting for a server
            raise Refusal(exc.message) from exc
        except ServiceError as exc:
            raise Refusal(exc.message) from exc

    def _boot_script(self, base: str, mac: str, name: str, client_ip: str | None) -> str:
        chosen = self._login(mac, client_ip, reserve=False)
        files, cmdline = self._boot_files(chosen)
        result = self._login(mac, client_ip, reserve=True)
        if (result.vdisk, result.version, result.server) != (
            chosen.vdisk,
            chosen.version,
            chosen.server,
        ):  # the farm changed in between: check again
            files, cmdline = self._boot_files(result)
        server = result.server
        farm_urls = [
            f"http://{e.host}:{e.api_port}"
            for e in (server, *result.alternatives)
            if e.api_port and _BASE_URL.fullmatch(f"http://{e.host}")
        ]
        params = device_params(server.host, server.nbd_port, result.device, farm_urls)
        urls = {
            kind: f"{base}/boot/files/{held.vdisk}/{held.version}/{kind}"
            f"?sha256={held.sha256}&mac={mac}"
            for kind, held in files.items()
        }
        try:
            script = boot_script(
                urls[KERNEL],
                urls.get(INITRD),
                f"{cmdline} {params}".strip(),
                f"{name} boots version {result.version} of vDisk {result.vdisk} "
                f"from server {server.name}",
            )
        except UnsafeScriptText as exc:
            raise Refusal(str(exc)) from exc
        self._record_ipxe(mac, client_ip)
        return script

    def _boot_files(self, result: LoginResult) -> tuple[dict[str, HeldBootFile], str]:
        """The boot files of RESULT's version this server holds, and its
        command line. Raises Refusal."""
        where = f"version {result.version} of vDisk {result.vdisk}"
        with self._session() as session:
            version = session.execute(
                select(VdiskVersion.id, VdiskVersion.boot_cmdline)
                .join(Vdisk, Vdisk.id == VdiskVersion.vdisk_id)
                .where(Vdisk.name == result.vdisk, VdiskVersion.number == result.version)
            ).first()
            rows = (
                session.execute(
                    select(VersionBootFile.kind, VersionBootFile.sha256).where(
                        VersionBootFile.version_id == version.id
                    )
                ).all()
                if version is not None
                else []
            )
        kinds = {row.kind: row.sha256 for row in rows}
        if version is None or version.boot_cmdline is None or KERNEL not in kinds:
            raise Refusal(
                f"{where} has no boot files (vdfarm vdisk boot {result.vdisk} "
                "--kernel FILE --initrd FILE --cmdline TEXT)"
            )
        try:
            held = {
                kind: self._boot.held(result.vdisk, result.version, kind, sha256)
                for kind, sha256 in kinds.items()
            }
        except NotFound as exc:
            raise Refusal(f"{exc.message} (vdfarm store verify on this server)") from exc
        try:
            check_script_text("the kernel command line", version.boot_cmdline)
            check_script_text(f"the address of server {result.server.name}", result.server.host)
        except UnsafeScriptText as exc:
            raise Refusal(str(exc)) from exc
        return held, version.boot_cmdline

    def _record_ipxe(self, mac: str, client_ip: str | None) -> None:
        """Record the `ipxe` stage of MAC's device (a database failure is logged)."""
        try:
            with self._session() as session:
                device_id = session.scalar(select(Device.id).where(Device.mac == mac))
                if device_id is not None:
                    record_stage(session, device_id, IPXE, self._clock(), client_ip)
        except ServiceError as exc:
            log.warning("could not record the ipxe stage of %s: %s", mac, exc)
