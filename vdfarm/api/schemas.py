"""Request bodies (pydantic) and the few responses that are not a service dataclass.

Rules:
- Bodies forbid unknown fields, so a misspelt field is a 422, never a
  silent no-op. Choices are the service's own tuples (Literal), so OpenAPI
  lists them.
- PATCH bodies tell "absent" (unchanged) from `null` (clear) by
  `model_fields_set`; `changes()` turns them into service keyword arguments.
- Responses are the service's frozen dataclasses (FastAPI turns them into
  JSON schemas), except where the service returns something else.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StrictBool, field_validator

from vdfarm.farm.models import ACCESS_MODES, DEVICE_TYPES, WRITE_CACHE_TYPES
from vdfarm.farm.placement import AFFINITIES
from vdfarm.service.failovers import MAX_COUNT, MAX_REASON
from vdfarm.service.merges import EXPORT_FORMATS
from vdfarm.service.moves import MAX_TRIGGER_PCT
from vdfarm.service.store_sets import DEFAULT_STORE
from vdfarm.service.validation import UNCHANGED
from vdfarm.service.version_rules import PROMOTE_TARGETS

AccessMode = Literal[ACCESS_MODES]  # type: ignore[valid-type]
WriteCacheType = Literal[WRITE_CACHE_TYPES]  # type: ignore[valid-type]
DeviceType = Literal[DEVICE_TYPES]  # type: ignore[valid-type]
PromoteTarget = Literal[PROMOTE_TARGETS]  # type: ignore[valid-type]
ExportFormat = Literal[EXPORT_FORMATS]  # type: ignore[valid-type]
SubnetAffinity = Literal[AFFINITIES]  # type: ignore[valid-type]


class ErrorDetail(BaseModel):
    """Every error answer: one line that says what went wrong."""

    detail: str


class Body(BaseModel):
    """A request body: unknown fields are refused."""

    model_config = ConfigDict(extra="forbid")


TRANSFER_PATH = (
    "Path of the file in the server's transfer directory: relative to it, or "
    "absolute inside it; no '..', no symbolic links."
)


def transfer_path(value: str) -> str:
    """VALUE if it can name a file (the service confines it to the transfer
    directory). Raises ValueError (a 422)."""
    if not value or "\0" in value:
        raise ValueError("give the path of a file in the server's transfer directory")
    return value


class VdiskImport(Body):
    """Import an image file from the server's transfer directory as a new vDisk."""

    name: str
    source_path: str = Field(description=TRANSFER_PATH)
    mode: AccessMode = "standard"
    write_cache: WriteCacheType = "server-disk"
    cache_limit_mb: int | None = Field(default=None, ge=1)
    description: str = ""
    source_format: str | None = Field(
        default=None, description="raw, qcow2, vpc, vhdx or vmdk; detected among those if null."
    )
    store: str = Field(default=DEFAULT_STORE, description="The store set it belongs to.")

    @field_validator("source_path")
    @classmethod
    def check_source_path(cls, value: str) -> str:
        return transfer_path(value)


class VdiskPatch(Body):
    """Fields of a vDisk to change; `cache_limit_mb: null` removes the limit.
    `subnet_affinity` (placement: same subnet first, or only) must come alone."""

    mode: AccessMode | None = None
    write_cache: WriteCacheType | None = None
    cache_limit_mb: int | None = Field(default=None, ge=1)
    description: str | None = None
    max_versions: int | None = None
    require_tls: StrictBool | None = Field(
        default=None, description="true: served over NBD only to clients that started TLS."
    )
    subnet_affinity: SubnetAffinity = Field(
        default="none", description="none, best-effort (same subnet first) or fixed (only)."
    )
    store: str | None = Field(default=None, description="Move it to this store set.")

    def sets_affinity(self) -> bool:
        """True if this patch changes the subnet affinity."""
        return "subnet_affinity" in self.model_fields_set

    def other_fields(self) -> set[str]:
        """The fields sent besides `subnet_affinity`."""
        return set(self.model_fields_set) - {"subnet_affinity"}

    def changes(self) -> dict[str, Any]:
        """Keyword arguments for VdiskService.set (absent fields unchanged)."""
        sent = self.model_fields_set
        return {
            "mode": self.mode,
            "write_cache": self.write_cache,
            "cache_limit_mb": self.cache_limit_mb if "cache_limit_mb" in sent else UNCHANGED,
            "description": self.description,
            "max_versions": self.max_versions,
            "require_tls": self.require_tls,
            "store": self.store,
        }


class VdiskExport(Body):
    """Write one version, flattened, to a new file (0600) in the server's
    transfer directory."""

    path: str = Field(description=TRANSFER_PATH + " Never overwritten.")
    format: ExportFormat
    version: int | None = Field(
        default=None, ge=0, description="Default: what production devices boot."
    )

    @field_validator("path")
    @classmethod
    def check_path(cls, value: str) -> str:
        return transfer_path(value)


class BootFilesBody(Body):
    """Boot files for the newest version of a vDisk: a kernel and an
    initramfs (files in the server's transfer directory, copied into its
    store) and a kernel command line; each one given replaces that one, or
    `clear` (alone) removes them all."""

    kernel: str | None = Field(default=None, description=TRANSFER_PATH)
    initrd: str | None = Field(default=None, description=TRANSFER_PATH)
    cmdline: str | None = Field(
        default=None, description="Printable ASCII, at most 1024 characters; null: unchanged."
    )
    clear: bool = False

    @field_validator("kernel", "initrd")
    @classmethod
    def check_path(cls, value: str | None) -> str | None:
        return None if value is None else transfer_path(value)


class VerifyReport(BaseModel):
    """The outcome of checking a vDisk's files in this server's store."""

    vdisk: str
    ok: bool
    problems: list[str]


class ServerPatch(Body):
    """Placement settings of a server to change; `subnet: null` removes it."""

    power_rating: float | None = Field(default=None, description="Relative capacity (> 0).")
    subnet: str | None = Field(default=None, description="CIDR its devices prefer.")
    max_booting: int | None = Field(default=None, description="Devices booting at once (>= 1).")

    def changes(self) -> dict[str, Any]:
        """Keyword arguments for ServerService.configure (absent fields unchanged)."""
        return {
            "power_rating": self.power_rating,
            "max_booting": self.max_booting,
            "subnet": self.subnet if "subnet" in self.model_fields_set else UNCHANGED,
        }


class HomeBody(Body):
    """The server whose copy of a vDisk becomes the current one."""

    server: str = Field(min_length=1, max_length=64)


class SettingsPatch(Body):
    """Changes to the farm's settings; absent fields stay as they are."""

    heartbeat_timeout_s: float | None = Field(
        default=None, description="Seconds after which a silent server is down."
    )
    boot_phase_s: float | None = Field(
        default=None, description="Seconds a device counts as booting after it connected."
    )
    rebalance_trigger_pct: float | None = Field(
        default=None,
        description="Rebalance until every up server is within this "
        "percentage of the weighted average.",
    )
    audit_days: int | None = Field(
        default=None, description="Days audit entries are kept (0: forever)."
    )
    auto_add_vdisk: str | None = Field(
        default=None,
        max_length=64,
        description="The vDisk an unknown MAC asking for its iPXE script is "
        'registered with ("": auto-add off).',
    )
    auto_add_limit: int | None = Field(
        default=None, description="At most this many auto-added devices in the farm."
    )


class RebalanceBody(Body):
    """A rebalance run: plan only (`dry_run`), or order the moves."""

    dry_run: bool = Field(default=False, description="Show the moves, order none.")
    trigger_pct: float | None = Field(
        default=None,
        ge=0,
        le=MAX_TRIGGER_PCT,
        description="Move devices until every up server is within this percentage of the "
        "weighted average (default: the farm's setting).",
    )
    auto: bool = Field(default=False, description="Apply the automatic mode's guards.")


class HeldVersion(BaseModel):
    """A vDisk version a store holds complete and verified."""

    vdisk: str
    version: int


class StoreHoldings(BaseModel):
    """What one server's store holds, sorted by vDisk and version."""

    server: str
    versions: list[HeldVersion]


def store_holdings(inventory: dict[str, list[tuple[str, int]]]) -> list[StoreHoldings]:
    """`ServerService.inventory()` as the API answers it, by server name."""
    return [
        StoreHoldings(server=server, versions=[HeldVersion(vdisk=v, version=n) for v, n in held])
        for server, held in sorted(inventory.items())
    ]


class DeviceCreate(Body):
    """A new target device."""

    name: str
    mac: str | None = None
    vdisk: str | None = None
    device_type: DeviceType = "production"
    description: str = ""


class DevicePatch(Body):
    """Fields of a device to change. `mac: null` removes the MAC. `vdisk`
    (a name, or null for none) assigns a vDisk and must come alone."""

    device_type: DeviceType | None = None
    mac: str | None = None
    description: str | None = None
    vdisk: str | None = None

    def assigns(self) -> bool:
        """True if this patch (re)assigns the vDisk."""
        return "vdisk" in self.model_fields_set

    def other_fields(self) -> set[str]:
        """The fields sent besides `vdisk`."""
        return set(self.model_fields_set) - {"vdisk"}

    def changes(self) -> dict[str, Any]:
        """Keyword arguments for DeviceService.set (absent fields unchanged)."""
        return {
            "device_type": self.device_type,
            "mac": self.mac if "mac" in self.model_fields_set else UNCHANGED,
            "description": self.description,
        }


class FailoverBody(Body):
    """A device's agent reporting that it left server `from` for `to`."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    from_server: str = Field(alias="from", min_length=1, max_length=64)
    to_server: str = Field(alias="to", min_length=1, max_length=64)
    pause_ms: int = Field(ge=0, le=MAX_COUNT, description="The pause the device saw.")
    retried: int = Field(ge=0, le=MAX_COUNT, description="Requests sent again.")
    reason: str = Field(default="", max_length=MAX_REASON)


class PromoteBody(Body):
    """Promote the newest version to test or production (from `at`, else now;
    or, with `when_replicated`, once every up server of its store holds it)."""

    to: PromoteTarget
    at: AwareDatetime | None = None
    when_replicated: StrictBool = Field(
        default=False,
        description="To production: switch once every up server of the vDisk's store holds "
        "the version (sealed, and test, now).",
    )


class OverrideBody(Body):
    """Pin production devices to a version; `version: null` removes the pin."""

    version: int | None = Field(ge=0)


class MergeBody(Body):
    """Fold the chain into one delta on the base, or into a new full base."""

    new_base: bool = False


RATE_DESCRIPTION = (
    "Copy cap: bytes per second as a number, or text like 50MB/s, 1.5GB/s, 100M, "
    '512KiB/s (MB = 10^6 bytes, MiB = 2^20); 0 or "none": no cap.'
)
WINDOWS_DESCRIPTION = (
    "Copy windows, HH:MM-HH:MM in each server's local time (22:00-06:00 wraps "
    "midnight); none: copies run at any time."
)


class StoreAdd(Body):
    """A new store set."""

    name: str
    servers: list[str] = Field(
        default_factory=list, description='Server names; empty (or ["all"]): every server.'
    )
    max_rate: int | str | None = Field(default=None, description=RATE_DESCRIPTION)
    windows: list[str] = Field(default_factory=list, description=WINDOWS_DESCRIPTION)


class StorePatch(Body):
    """Fields of a store set to change; absent fields stay as they are
    (`max_rate: null` removes the cap, `windows: []` opens every hour,
    `servers: []` means every server)."""

    servers: list[str] | None = None
    max_rate: int | str | None = Field(default=None, description=RATE_DESCRIPTION)
    windows: list[str] | None = Field(default=None, description=WINDOWS_DESCRIPTION)

    def changes(self) -> dict[str, Any]:
        """Keyword arguments for ReplicationService.set_store."""
        sent = self.model_fields_set
        rate = (
            self.max_rate if self.max_rate is not None else ("none" if "max_rate" in sent else None)
        )
        return {"servers": self.servers, "max_rate": rate, "windows": self.windows}


class ReplicationStartBody(Body):
    """Let the copies of one version ignore the windows."""

    vdisk: str
    version: int | None = Field(default=None, ge=0, description="Default: the newest sealed.")
