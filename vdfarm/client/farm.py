"""`FarmClient`: a farm driven through its REST API, with the interface of
a local one (`vdfarm.client.local.LocalFarm`).

Rules:
- The nouns (`vdisks`, `versions`, `boot`, `devices`, `failovers`, `locks`, `audit`,
  `servers`, `settings`, `tokens`, `replication`: its front-end half)
  have the methods of the services of the same name, with the same
  arguments, and return the same records (rebuilt from the JSON by
  `records.from_plain`), so the CLI prints a remote answer with the code
  that prints a local one. `rebalance`, `login` and `set_subnet_affinity`
  are methods of the farm itself, as on LocalFarm.
- One request per call (one service call on the server), so a failure has
  changed nothing. Errors are the service's (see `client.http`).
- Files named in `vdisks.import_image`, `versions.export` and
  `boot.attach` are files ON THE SERVER, in its transfer directory (a relative path is relative to
  it); nothing is uploaded, and the server refuses paths outside it.
- The slow calls (import, export, verify, promote, merge) take the
  `progress` callback of the local services. A merge is a job on the
  server (202 at once), followed until it ends (`client.jobs.follow`),
  its progress passed on; the others never call it: the server does the
  work, and the answer comes when it is done.
- No audit actor is sent: the server records `token:<name>@<client address>`.
- The audit is read a page at a time (the server sends at most 1000
  entries per request); `audit.list` pages back until it has what was asked.
"""

from __future__ import annotations

import builtins
import functools
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import httpx

from vdfarm.client.http import FarmHttp, RemoteError
from vdfarm.client.jobs import follow
from vdfarm.client.records import from_plain
from vdfarm.service.audit import AuditEntry
from vdfarm.service.devices import DeviceInfo
from vdfarm.service.errors import Invalid
from vdfarm.service.failovers import FailoverReport
from vdfarm.service.locks import LockInfo
from vdfarm.service.login import LoginResult
from vdfarm.service.merges import ExportResult, MergeResult
from vdfarm.service.moves import RebalanceResult
from vdfarm.service.repairs import RepairResult
from vdfarm.service.replica_status import ReplicaStatus, ReplicationProgress, progress_of
from vdfarm.service.replication import ReplicationStart
from vdfarm.service.servers import ServerInfo
from vdfarm.service.settings import Settings
from vdfarm.service.store_sets import DEFAULT_STORE, StoreSetInfo
from vdfarm.service.tokens import NewToken, TokenInfo
from vdfarm.service.validation import UNCHANGED
from vdfarm.service.vdisks import VdiskInfo
from vdfarm.service.versions import OverrideInfo, PromoteResult, VersionInfo
from vdfarm.store.progress import Progress, silent
from vdfarm.store.store import VerifyResult

SESSION_TIMES = ("connected_at", "last_seen")
T = TypeVar("T")
AUDIT_PAGE = 1000  # the server's largest page
NO_ADDRESS = ""  # login: "no client address" (absent would mean the caller's)


def segment(name: str) -> str:
    """NAME quoted as one path segment."""
    return quote(name, safe="")


def server_path(path: str | Path, what: str) -> str:
    """PATH as text: a file in the server's transfer directory (relative to
    it, or absolute inside it; the server refuses anything else). Nothing is
    uploaded. Raises Invalid (empty)."""
    text = str(path)
    if not text:
        raise Invalid(f"give the {what}'s path in the server's transfer directory")
    return text


def _present(**fields: Any) -> dict[str, Any]:
    """The fields that are not None (absent = unchanged in a PATCH)."""
    return {k: v for k, v in fields.items() if v is not None}


def _device(data: Any) -> DeviceInfo:
    info = from_plain(DeviceInfo, data)
    if info.failovers is not None and isinstance(info.failovers["last"].get("at"), str):
        last = {**info.failovers["last"]}
        last["at"] = datetime.fromisoformat(last["at"])
        info = replace(info, failovers={**info.failovers, "last": last})
    if info.session is None:
        return info
    live = dict(info.session)
    for key in SESSION_TIMES:
        if isinstance(live.get(key), str):
            live[key] = datetime.fromisoformat(live[key])
    return DeviceInfo(**{**info.__dict__, "session": live})


def _failover(data: Any) -> FailoverReport:
    report = from_plain(FailoverReport, data)
    if isinstance(report.at, str):
        return replace(report, at=datetime.fromisoformat(report.at))
    return report


def _as(kind: type) -> Callable[[Any], Any]:
    return functools.partial(from_plain, kind)


def _answer(convert: Callable[[Any], T], data: Any, what: str) -> T:
    try:
        return convert(data)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise RemoteError(
            f"the farm answered {what} with something this client does not understand ({exc})"
        ) from exc


def _verify_result(data: Any) -> VerifyResult:
    return VerifyResult(vdisk=data["vdisk"], problems=tuple(data["problems"]))


def _holding(data: Any) -> tuple[str, list[tuple[str, int]]]:
    return data["server"], sorted((v["vdisk"], v["version"]) for v in data["versions"])


class _Noun:
    def __init__(self, http: FarmHttp) -> None:
        self.http = http

    def one(self, convert: Callable[[Any], T], method: str, path: str, **kw: Any) -> T:
        """One record from METHOD PATH, made by CONVERT."""
        return _answer(convert, self.http.request(method, path, **kw), f"{method} {path}")

    def many(self, convert: Callable[[Any], T], method: str, path: str, **kw: Any) -> list[T]:
        """A list of records from METHOD PATH, each made by CONVERT."""
        data = self.http.request(method, path, **kw)
        if not isinstance(data, list):
            raise RemoteError(f"the farm answered {method} {path} with no list")
        return [_answer(convert, item, f"{method} {path}") for item in data]


class RemoteSettings(_Noun):
    """`SettingsService` over the API."""

    def show(self) -> Settings:
        return self.one(_as(Settings), "GET", "/settings")

    def change(
        self,
        *,
        heartbeat_timeout_s: float | None = None,
        boot_phase_s: float | None = None,
        rebalance_trigger_pct: float | None = None,
        audit_days: int | None = None,
        auto_add_vdisk: str | None = None,
        auto_add_limit: int | None = None,
    ) -> Settings:
        body = _present(
            heartbeat_timeout_s=heartbeat_timeout_s,
            boot_phase_s=boot_phase_s,
            rebalance_trigger_pct=rebalance_trigger_pct,
            audit_days=audit_days,
            auto_add_vdisk=auto_add_vdisk,
            auto_add_limit=auto_add_limit,
        )
        return self.one(_as(Settings), "PATCH", "/settings", body=body)


class RemoteVdisks(_Noun):
    """`VdiskService` over the API."""

    def list(self) -> list[VdiskInfo]:
        return self.many(_as(VdiskInfo), "GET", "/vdisks")

    def show(self, name: str) -> VdiskInfo:
        return self.one(_as(VdiskInfo), "GET", f"/vdisks/{segment(name)}")

    def import_image(
        self,
        name: str,
        source: str | Path,
        *,
        mode: str = "standard",
        write_cache: str = "server-disk",
        cache_limit_mb: int | None = None,
        description: str = "",
        source_format: str | None = None,
        store: str = DEFAULT_STORE,
        progress: Progress = silent,
    ) -> VdiskInfo:
        body = {
            "name": name,
            "source_path": server_path(source, "image file"),
            "mode": mode,
            "write_cache": write_cache,
            "cache_limit_mb": cache_limit_mb,
            "description": description,
            "source_format": source_format,
            "store": store,
        }
        return self.one(_as(VdiskInfo), "POST", "/vdisks", body=body)

    def set(
        self,
        name: str,
        *,
        mode: str | None = None,
        write_cache: str | None = None,
        cache_limit_mb: Any = UNCHANGED,
        description: str | None = None,
        max_versions: int | None = None,
        require_tls: bool | None = None,
        store: str | None = None,
    ) -> VdiskInfo:
        body = _present(
            mode=mode,
            write_cache=write_cache,
            description=description,
            max_versions=max_versions,
            require_tls=require_tls,
            store=store,
        )
        if cache_limit_mb is not UNCHANGED:
            body["cache_limit_mb"] = cache_limit_mb
        return self.one(_as(VdiskInfo), "PATCH", f"/vdisks/{segment(name)}", body=body)

    def delete(self, name: str) -> VdiskInfo:
        return self.one(_as(VdiskInfo), "DELETE", f"/vdisks/{segment(name)}")

    def verify(self, name: str, progress: Progress = silent) -> VerifyResult:
        return self.one(_verify_result, "POST", f"/vdisks/{segment(name)}/verify")


class RemoteRepairs(_Noun):
    """`RepairService` over the API."""

    def repair(self, vdisk: str, actor: str | None = None) -> RepairResult:
        return self.one(_as(RepairResult), "POST", f"/vdisks/{segment(vdisk)}/repair")


class RemoteVersions(_Noun):
    """`VersionService` over the API."""

    def _path(self, vdisk: str, tail: str = "") -> str:
        return f"/vdisks/{segment(vdisk)}/versions{tail}"

    def list(self, vdisk: str) -> list[VersionInfo]:
        return self.many(_as(VersionInfo), "GET", self._path(vdisk))

    def show(self, vdisk: str, number: int) -> VersionInfo:
        return self.one(_as(VersionInfo), "GET", self._path(vdisk, f"/{int(number)}"))

    def new(self, vdisk: str) -> VersionInfo:
        return self.one(_as(VersionInfo), "POST", self._path(vdisk))

    def promote(
        self,
        vdisk: str,
        to: str,
        at: datetime | None = None,
        when_replicated: bool = False,
        progress: Progress = silent,
    ) -> PromoteResult:
        body = {
            "to": to,
            "at": at.isoformat() if at is not None else None,
            "when_replicated": when_replicated,
        }
        return self.one(_as(PromoteResult), "POST", self._path(vdisk, "/promote"), body=body)

    def revert(self, vdisk: str) -> VersionInfo:
        return self.one(_as(VersionInfo), "POST", self._path(vdisk, "/revert"))

    def override(self, vdisk: str, number: int | None) -> OverrideInfo:
        return self.one(
            _as(OverrideInfo), "POST", self._path(vdisk, "/override"), body={"version": number}
        )

    def merge(self, vdisk: str, new_base: bool = False, progress: Progress = silent) -> MergeResult:
        job = self.http.request("POST", self._path(vdisk, "/merge"), body={"new_base": new_base})
        return _answer(_as(MergeResult), follow(self.http, job, progress), f"merge of {vdisk}")

    def delete(self, vdisk: str) -> VersionInfo:
        return self.one(_as(VersionInfo), "DELETE", self._path(vdisk, "/newest"))

    def export(
        self,
        vdisk: str,
        out: str | Path,
        fmt: str,
        version: int | None = None,
        progress: Progress = silent,
    ) -> ExportResult:
        body = {"path": server_path(out, "output file"), "format": fmt, "version": version}
        return self.one(_as(ExportResult), "POST", f"/vdisks/{segment(vdisk)}/export", body=body)


class RemoteBoot(_Noun):
    """`BootService` over the API (the files are the server's, in its
    transfer directory)."""

    def attach(
        self,
        vdisk: str,
        *,
        kernel: str | Path | None = None,
        initrd: str | Path | None = None,
        cmdline: str | None = None,
        clear: bool = False,
    ) -> VersionInfo:
        body: dict[str, Any] = {"cmdline": cmdline, "clear": clear}
        if kernel is not None:
            body["kernel"] = server_path(kernel, "kernel file")
        if initrd is not None:
            body["initrd"] = server_path(initrd, "initramfs file")
        return self.one(_as(VersionInfo), "POST", f"/vdisks/{segment(vdisk)}/boot", body=body)


class RemoteFailovers(_Noun):
    """`FailoverService` over the API (a device's agent reporting)."""

    def report(
        self,
        name_or_mac: str,
        *,
        from_server: str,
        to_server: str,
        pause_ms: int,
        retried: int,
        reason: str = "",
    ) -> FailoverReport:
        body = {
            "from": from_server,
            "to": to_server,
            "pause_ms": pause_ms,
            "retried": retried,
            "reason": reason,
        }
        path = f"/devices/{segment(name_or_mac)}/failover"
        return self.one(_failover, "POST", path, body=body)


class RemoteDevices(_Noun):
    """`DeviceService` over the API."""

    def add(
        self,
        name: str,
        *,
        mac: str | None = None,
        vdisk: str | None = None,
        device_type: str = "production",
        description: str = "",
    ) -> DeviceInfo:
        body = {
            "name": name,
            "mac": mac,
            "vdisk": vdisk,
            "device_type": device_type,
            "description": description,
        }
        return self.one(_device, "POST", "/devices", body=body)

    def list(self) -> list[DeviceInfo]:
        return self.many(_device, "GET", "/devices")

    def show(self, name_or_mac: str) -> DeviceInfo:
        return self.one(_device, "GET", f"/devices/{segment(name_or_mac)}")

    def assign(self, name_or_mac: str, vdisk: str | None) -> DeviceInfo:
        return self.one(_device, "PATCH", f"/devices/{segment(name_or_mac)}", body={"vdisk": vdisk})

    def set(
        self,
        name_or_mac: str,
        *,
        device_type: str | None = None,
        mac: Any = UNCHANGED,
        description: str | None = None,
    ) -> DeviceInfo:
        body = _present(device_type=device_type, description=description)
        if mac is not UNCHANGED:
            body["mac"] = mac
        return self.one(_device, "PATCH", f"/devices/{segment(name_or_mac)}", body=body)

    def delete(self, name_or_mac: str) -> DeviceInfo:
        return self.one(_device, "DELETE", f"/devices/{segment(name_or_mac)}")


class RemoteLocks(_Noun):
    """`LockService` (its admin half) over the API."""

    def list(self) -> list[LockInfo]:
        return self.many(_as(LockInfo), "GET", "/locks")

    def release_by_admin(self, vdisk_name: str) -> LockInfo:
        return self.one(_as(LockInfo), "POST", f"/locks/{segment(vdisk_name)}/release")

    def move_home(self, vdisk_name: str, server_name: str) -> LockInfo:
        return self.one(
            _as(LockInfo),
            "POST",
            f"/locks/{segment(vdisk_name)}/home",
            body={"server": server_name},
        )


class RemoteAudit(_Noun):
    """`AuditService` over the API."""

    def list(self, since: datetime | None = None, limit: int | None = None) -> list[AuditEntry]:
        entries: builtins.list[AuditEntry] = []
        before_id: int | None = None
        while limit is None or len(entries) < limit:
            page = AUDIT_PAGE if limit is None else min(AUDIT_PAGE, limit - len(entries))
            params = _present(
                since=since.isoformat() if since else None, limit=page, before_id=before_id
            )
            got = self.many(_as(AuditEntry), "GET", "/audit", params=params)
            entries[:0] = got
            if len(got) < page or not got:
                break
            before_id = got[0].id
        return entries


class RemoteTokens(_Noun):
    """`TokenService` over the API (admin tokens only). ACTOR is accepted for
    the local interface and not sent: the server records its caller."""

    def list(self) -> list[TokenInfo]:
        return self.many(_as(TokenInfo), "GET", "/tokens")

    def add(self, name: str, role: str, *, actor: str | None = None) -> NewToken:
        return self.one(_as(NewToken), "POST", "/tokens", body={"name": name, "role": role})

    def revoke(self, name: str, *, actor: str | None = None) -> TokenInfo:
        return self.one(_as(TokenInfo), "POST", f"/tokens/{segment(name)}/revoke")


class RemoteServers(_Noun):
    """`ServerService` (its admin half) over the API."""

    def list(self) -> list[ServerInfo]:
        return self.many(_as(ServerInfo), "GET", "/servers")

    def configure(
        self,
        name: str,
        *,
        power_rating: float | None = None,
        subnet: Any = UNCHANGED,
        max_booting: int | None = None,
    ) -> ServerInfo:
        body = _present(power_rating=power_rating, max_booting=max_booting)
        if subnet is not UNCHANGED:
            body["subnet"] = subnet
        return self.one(_as(ServerInfo), "PATCH", f"/servers/{segment(name)}", body=body)

    def inventory(self) -> dict[str, builtins.list[tuple[str, int]]]:  # `list` is a verb here
        return dict(self.many(_holding, "GET", "/stores"))


class RemoteReplication(_Noun):
    """`ReplicationService` (its front-end half: status, start, store sets)
    over the API."""

    def status(self, vdisk: str | None = None, version: int | None = None) -> list[ReplicaStatus]:
        params = _present(vdisk=vdisk, version=version)
        return self.many(_as(ReplicaStatus), "GET", "/replication", params=params)

    def progress(self, vdisk: str, version: int) -> ReplicationProgress:
        return progress_of(self.status(vdisk, version), vdisk, version)

    def start_now(self, vdisk: str, version: int | None = None) -> ReplicationStart:
        body = {"vdisk": vdisk, "version": version}
        return self.one(_as(ReplicationStart), "POST", "/replication/start", body=body)

    def store_sets(self) -> builtins.list[StoreSetInfo]:
        return self.many(_as(StoreSetInfo), "GET", "/store-sets")

    def add_store(
        self,
        name: str,
        servers: Sequence[str] | None = None,
        max_rate: str | int | None = None,
        windows: Sequence[str] | None = None,
    ) -> StoreSetInfo:
        body = {
            "name": name,
            "servers": list(servers or ()),
            "max_rate": max_rate,
            "windows": list(windows or ()),
        }
        return self.one(_as(StoreSetInfo), "POST", "/stores", body=body)

    def set_store(
        self,
        name: str,
        servers: Sequence[str] | None = None,
        max_rate: str | int | None = None,
        windows: Sequence[str] | None = None,
    ) -> StoreSetInfo:
        body = _present(
            servers=None if servers is None else list(servers),
            max_rate=max_rate,
            windows=None if windows is None else list(windows),
        )
        return self.one(_as(StoreSetInfo), "PATCH", f"/stores/{segment(name)}", body=body)


class FarmClient:
    """The farm whose REST API is at URL (a server's http://HOST:API_PORT).

    Raises (from every call) the service errors of `client.http`.
    """

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        http: httpx.Client | None = None,
        ca_file: str | Path | None = None,
    ) -> None:
        self.http = FarmHttp(url, token, http=http, ca_file=ca_file)
        self.url = self.http.url
        self.vdisks = RemoteVdisks(self.http)
        self.versions = RemoteVersions(self.http)
        self.boot = RemoteBoot(self.http)
        self.devices = RemoteDevices(self.http)
        self.failovers = RemoteFailovers(self.http)
        self.locks = RemoteLocks(self.http)
        self.audit = RemoteAudit(self.http)
        self.servers = RemoteServers(self.http)
        self.settings = RemoteSettings(self.http)
        self.tokens = RemoteTokens(self.http)
        self.repairs = RemoteRepairs(self.http)
        self.replication = RemoteReplication(self.http)
        self._calls = _Noun(self.http)

    def rebalance(
        self, *, apply: bool, trigger_pct: float | None = None, auto: bool = False
    ) -> RebalanceResult:
        body = _present(dry_run=not apply, trigger_pct=trigger_pct, auto=auto)
        return self._calls.one(_as(RebalanceResult), "POST", "/rebalance", body=body)

    def login(
        self,
        name_or_mac: str,
        client_ip: str | None = None,
        reserve: bool = True,
        exclude: Sequence[str] | None = None,
    ) -> LoginResult:
        body = {
            "device": name_or_mac,
            "client_ip": client_ip or NO_ADDRESS,
            "reserve": reserve,
            "exclude": list(exclude or ()),
        }
        return self._calls.one(_as(LoginResult), "POST", "/login", body=body)

    def set_subnet_affinity(self, vdisk_name: str, affinity: str) -> VdiskInfo:
        return self._calls.one(
            _as(VdiskInfo),
            "PATCH",
            f"/vdisks/{segment(vdisk_name)}",
            body={"subnet_affinity": affinity},
        )

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> FarmClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
