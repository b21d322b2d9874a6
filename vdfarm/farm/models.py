"""The farm database schema: SQLAlchemy 2 typed declarative models.

Rules:
- Portable SQL only: the same models run on SQLite and PostgreSQL.
- Every datetime is timezone-aware UTC in Python (`UTCDateTime`); stored as
  TIMESTAMPTZ on PostgreSQL and as a fixed-width naive UTC text on SQLite, so
  comparisons in SQL (`lease_expires_at < :now`) are right on both.
- Allowed values of enum-like columns are the tuples below, enforced by named
  CHECK constraints; the migrations repeat them literally (migrations are
  frozen history and never import this module).
- A lock row exists for every vDisk from its creation; its `fencing_token`
  only ever grows.
- Every vDisk has a version 0 (its base) from its creation; a version's
  `sha256`/`size` are set when it is sealed (test or production) and null
  while it is open for maintenance. A production version takes effect at
  `production_at` (pending before).
- A device has at most one session row (the version it booted, on which server).
  `move_to_server_id` set on it is a rebalance order: the serving server asks
  the device to reconnect there (the new session row replaces the old one).
- An API token row keeps the sha256 of its secret, never the secret; a
  revoked token keeps its row (and name) with `revoked_at` set.
- `store_versions` says which server holds a complete, verified copy of which
  vDisk version; placement and failover consider only those servers.
- A vDisk belongs to one store set (`store_sets`, id 1 `default` made by the
  migration); a store set without `store_set_servers` rows is on every
  server of the farm. A `replicas` row says what a server is doing about a
  sealed version it does not hold verified yet (queued, copying, failed,
  mismatch); once it holds it, `store_versions` says so instead.
- A version may have boot files (`version_boot_files`: a kernel, an
  initramfs) and a kernel command line (`vdisk_versions.boot_cmdline`, set
  exactly when it has a kernel); a new version starts with its parent's.
  `store_boot_files` says which server holds which boot file (by kind and
  sha256) of a vDisk, as `store_versions` does for versions.
- A device's last network boot (`device_boots`, at most one row) records
  when it reached each stage (`BOOT_STAGES`, in order); `devices.auto_added`
  marks a device the iPXE route registered by itself (`farm_settings`'
  `auto_add_vdisk_id`, capped by `auto_add_limit`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

ACCESS_MODES = ("standard", "private")
WRITE_CACHE_TYPES = (
    "server-disk",
    "server-ram",
    "device-ram",
    "device-disk",
    "device-ram-overflow",
)
DEVICE_TYPES = ("production", "test", "maintenance")
VERSION_ACCESS = ("maintenance", "test", "production")
FILE_FORMATS = ("raw", "qcow2")
SUBNET_AFFINITIES = ("none", "best-effort", "fixed")
TOKEN_ROLES = ("read", "operator", "admin", "replica")
REPLICA_STATES = ("queued", "copying", "failed", "mismatch")
BOOT_KINDS = ("kernel", "initrd")
BOOT_STAGES = ("ipxe", "kernel", "streaming", "up")  # a network boot's stages, in order
DEFAULT_AUTO_ADD_LIMIT = 100
DEFAULT_STORE_SET_ID = 1  # the store set `default`, made by migration 0012
DEFAULT_MAX_VERSIONS = 5
DEFAULT_MAX_BOOTING = 500

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_name)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class UTCDateTime(TypeDecorator[datetime]):
    """A datetime that is always timezone-aware UTC on the Python side.

    Naive datetimes are refused on the way in (they are a bug).
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime()}


class Server(Base):
    """A provisioning server of the farm; its liveness is `last_heartbeat`."""

    __tablename__ = "servers"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    uuid: Mapped[str] = mapped_column(String(36), unique=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    hostname: Mapped[str] = mapped_column(String(255))
    nbd_port: Mapped[int | None] = mapped_column(Integer)
    api_port: Mapped[int | None] = mapped_column(Integer)
    power_rating: Mapped[float] = mapped_column(Float, default=1.0, server_default="1.0")
    store_path: Mapped[str] = mapped_column(Text)
    version: Mapped[str] = mapped_column(String(32))
    last_heartbeat: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    subnet: Mapped[str | None] = mapped_column(String(64))
    max_booting: Mapped[int] = mapped_column(
        Integer, default=DEFAULT_MAX_BOOTING, server_default=str(DEFAULT_MAX_BOOTING)
    )
    # Whether its REST API speaks HTTPS (set at registration), so peers
    # replicating from it know the scheme.
    api_tls: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())


class FarmSettings(Base):
    """Settings of the whole farm: one row (id 1), read by every server, so
    every console computes up/down and booting the same way."""

    __tablename__ = "farm_settings"
    __table_args__ = (CheckConstraint("id = 1", name="single_row"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    heartbeat_timeout_s: Mapped[float] = mapped_column(Float, default=3.0, server_default="3.0")
    boot_phase_s: Mapped[float] = mapped_column(Float, default=60.0, server_default="60.0")
    rebalance_trigger_pct: Mapped[float] = mapped_column(Float, default=25.0, server_default="25.0")
    audit_days: Mapped[int] = mapped_column(Integer, default=365, server_default="365")
    # An unknown MAC asking for its iPXE script is added with this vDisk (null: never).
    auto_add_vdisk_id: Mapped[int | None] = mapped_column(
        ForeignKey("vdisks.id", ondelete="SET NULL")
    )
    # At most this many auto-added devices in the farm.
    auto_add_limit: Mapped[int] = mapped_column(
        Integer, default=DEFAULT_AUTO_ADD_LIMIT, server_default=str(DEFAULT_AUTO_ADD_LIMIT)
    )


class StoreSet(Base):
    """A named set of vDisks and the servers whose stores hold them (every
    server of the farm when it has no `store_set_servers` rows), with the
    copy cap (bytes/s, None: none) and windows ("HH:MM-HH:MM,...", "":
    always) of replication."""

    __tablename__ = "store_sets"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    max_rate_bps: Mapped[int | None] = mapped_column(BigInteger)
    windows: Mapped[str] = mapped_column(Text, default="", server_default="")


class StoreSetServer(Base):
    """A server a store set is narrowed to."""

    __tablename__ = "store_set_servers"

    store_set_id: Mapped[int] = mapped_column(
        ForeignKey("store_sets.id", ondelete="CASCADE"), primary_key=True
    )
    server_id: Mapped[int] = mapped_column(
        ForeignKey("servers.id", ondelete="CASCADE"), primary_key=True
    )


class StoreLocation(Base):
    """A store directory on a server (the path may differ on every server)."""

    __tablename__ = "stores"
    __table_args__ = (UniqueConstraint("server_id", "path", name="uq_stores_server_id_path"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    server_id: Mapped[int] = mapped_column(ForeignKey("servers.id", ondelete="CASCADE"))
    path: Mapped[str] = mapped_column(Text)


class Vdisk(Base):
    """A disk image known to the farm."""

    __tablename__ = "vdisks"
    __table_args__ = (
        CheckConstraint(_in("access_mode", ACCESS_MODES), name="access_mode"),
        CheckConstraint(_in("write_cache_type", WRITE_CACHE_TYPES), name="write_cache_type"),
        CheckConstraint(_in("subnet_affinity", SUBNET_AFFINITIES), name="subnet_affinity"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    size: Mapped[int] = mapped_column(BigInteger)
    format: Mapped[str] = mapped_column(String(16))
    access_mode: Mapped[str] = mapped_column(
        String(16), default="standard", server_default="standard"
    )
    write_cache_type: Mapped[str] = mapped_column(
        String(32), default="server-disk", server_default="server-disk"
    )
    write_cache_limit_mb: Mapped[int | None] = mapped_column(Integer)
    description: Mapped[str] = mapped_column(Text, default="", server_default="")
    sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    max_versions: Mapped[int] = mapped_column(
        Integer, default=DEFAULT_MAX_VERSIONS, server_default=str(DEFAULT_MAX_VERSIONS)
    )
    override_version: Mapped[int | None] = mapped_column(Integer)
    subnet_affinity: Mapped[str] = mapped_column(String(16), default="none", server_default="none")
    require_tls: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    store_set_id: Mapped[int] = mapped_column(
        ForeignKey("store_sets.id"),
        default=DEFAULT_STORE_SET_ID,
        server_default=str(DEFAULT_STORE_SET_ID),
    )


class VdiskVersion(Base):
    """One version of a vDisk: a file in every store; the base has no parent."""

    __tablename__ = "vdisk_versions"
    __table_args__ = (
        UniqueConstraint("vdisk_id", "number", name="uq_vdisk_versions_vdisk_id_number"),
        CheckConstraint(_in("access", VERSION_ACCESS), name="access"),
        CheckConstraint(_in("format", FILE_FORMATS), name="format"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    vdisk_id: Mapped[int] = mapped_column(ForeignKey("vdisks.id", ondelete="CASCADE"))
    number: Mapped[int] = mapped_column(Integer)
    parent_number: Mapped[int | None] = mapped_column(Integer)
    file_name: Mapped[str] = mapped_column(String(128))
    format: Mapped[str] = mapped_column(String(16))
    access: Mapped[str] = mapped_column(String(16))
    size: Mapped[int | None] = mapped_column(BigInteger)
    sha256: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    sealed_at: Mapped[datetime | None]
    production_at: Mapped[datetime | None]
    # `replication start --now`: copies of this version ignore the windows.
    replicate_now_at: Mapped[datetime | None]
    # 'production' (or 'test'): promote it so once every up server of its
    # store holds it (`version promote --when-replicated`).
    promote_when_replicated: Mapped[str | None] = mapped_column(String(16))
    # The kernel command line of its boot files (null: it has none).
    boot_cmdline: Mapped[str | None] = mapped_column(Text)


class VersionBootFile(Base):
    """A boot file of a version (its kernel or initramfs): size and sha256,
    stored as `<kind>-<sha256>` beside the version's file in every store."""

    __tablename__ = "version_boot_files"
    __table_args__ = (
        UniqueConstraint("version_id", "kind", name="uq_version_boot_files_version_id_kind"),
        CheckConstraint(_in("kind", BOOT_KINDS), name="kind"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("vdisk_versions.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16))
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))


class Device(Base):
    """A target device: a machine that boots from its assigned vDisk."""

    __tablename__ = "devices"
    __table_args__ = (CheckConstraint(_in("device_type", DEVICE_TYPES), name="device_type"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    mac: Mapped[str | None] = mapped_column(String(17), unique=True)
    vdisk_id: Mapped[int | None] = mapped_column(ForeignKey("vdisks.id"))
    device_type: Mapped[str] = mapped_column(
        String(16), default="production", server_default="production"
    )
    description: Mapped[str] = mapped_column(Text, default="", server_default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Registered by the iPXE route (farm setting auto_add_vdisk), not by a person.
    auto_added: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())

    vdisk: Mapped[Vdisk | None] = relationship()


class DeviceBoot(Base):
    """A device's last network boot: the stage it reached (`BOOT_STAGES`)
    and when it reached each one (null: not yet in this boot), and the
    address it fetched its iPXE script from (its boot files count only
    from there)."""

    __tablename__ = "device_boots"
    __table_args__ = (CheckConstraint(_in("stage", BOOT_STAGES), name="stage"),)

    device_id: Mapped[int] = mapped_column(
        ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True
    )
    stage: Mapped[str] = mapped_column(String(16))
    stage_at: Mapped[datetime] = mapped_column(default=utcnow)
    ipxe_at: Mapped[datetime | None]
    kernel_at: Mapped[datetime | None]
    streaming_at: Mapped[datetime | None]
    up_at: Mapped[datetime | None]
    client_ip: Mapped[str | None] = mapped_column(String(45))


class Lock(Base):
    """The lock of one vDisk: holder, lease and an ever-growing fencing token."""

    __tablename__ = "locks"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    vdisk_id: Mapped[int] = mapped_column(ForeignKey("vdisks.id", ondelete="CASCADE"), unique=True)
    holder_device_id: Mapped[int | None] = mapped_column(
        ForeignKey("devices.id", ondelete="SET NULL")
    )
    server_id: Mapped[int | None] = mapped_column(ForeignKey("servers.id", ondelete="SET NULL"))
    lease_expires_at: Mapped[datetime | None]
    fencing_token: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    acquired_at: Mapped[datetime | None]
    # The server whose store holds the vDisk's writes (set by the first lock
    # taken; only the admin moves it): its copy is the only current one.
    home_server_id: Mapped[int | None] = mapped_column(
        ForeignKey("servers.id", ondelete="SET NULL")
    )

    vdisk: Mapped[Vdisk] = relationship()
    holder: Mapped[Device | None] = relationship()
    server: Mapped[Server | None] = relationship(foreign_keys=[server_id])
    home: Mapped[Server | None] = relationship(foreign_keys=[home_server_id])


class DeviceSession(Base):
    """A connected device: the vDisk version it booted and the server serving it."""

    __tablename__ = "device_sessions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    device_id: Mapped[int] = mapped_column(
        ForeignKey("devices.id", ondelete="CASCADE"), unique=True
    )
    server_id: Mapped[int] = mapped_column(ForeignKey("servers.id", ondelete="CASCADE"), index=True)
    vdisk_id: Mapped[int] = mapped_column(ForeignKey("vdisks.id", ondelete="CASCADE"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    connected_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    last_seen: Mapped[datetime] = mapped_column(default=utcnow)
    cache_used_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    client_ip: Mapped[str | None] = mapped_column(String(45))
    move_to_server_id: Mapped[int | None] = mapped_column(
        ForeignKey("servers.id", ondelete="SET NULL")
    )
    move_requested_at: Mapped[datetime | None]

    device: Mapped[Device] = relationship()


class LoginReservation(Base):
    """A device sent to a server by login that has not connected yet: it
    counts on that server's load (and booting) until its session is
    recorded or the reservation runs out, so devices logging in at once
    spread instead of all going to the same least-busy server. `version`
    is the version a running device's agent asked to keep (a failover
    login): the server it connects to serves that one, not the current;
    NULL for a fresh boot (the current version)."""

    __tablename__ = "login_reservations"

    device_id: Mapped[int] = mapped_column(
        ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True
    )
    server_id: Mapped[int] = mapped_column(ForeignKey("servers.id", ondelete="CASCADE"))
    reserved_at: Mapped[datetime] = mapped_column(default=utcnow)
    version: Mapped[int | None] = mapped_column(Integer, nullable=True)


INTENT_KINDS = ("merge", "seal")


class VdiskIntent(Base):
    """A change of a vDisk's files under way on one server's store (a merge,
    or the seal of a promote): written before the file work, deleted with
    the result. One left behind is a half-done step to repair."""

    __tablename__ = "vdisk_intents"
    __table_args__ = (CheckConstraint(_in("kind", INTENT_KINDS), name="kind"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    vdisk_id: Mapped[int] = mapped_column(ForeignKey("vdisks.id", ondelete="CASCADE"), unique=True)
    server_id: Mapped[int | None] = mapped_column(ForeignKey("servers.id", ondelete="SET NULL"))
    kind: Mapped[str] = mapped_column(String(16))
    plan: Mapped[str] = mapped_column(Text)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)

    server: Mapped[Server | None] = relationship()


class StoreVersion(Base):
    """A vDisk version a server holds complete and verified in its store."""

    __tablename__ = "store_versions"
    __table_args__ = (
        UniqueConstraint(
            "server_id", "vdisk_id", "version", name="uq_store_versions_server_id_vdisk_id_version"
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    server_id: Mapped[int] = mapped_column(ForeignKey("servers.id", ondelete="CASCADE"))
    vdisk_id: Mapped[int] = mapped_column(ForeignKey("vdisks.id", ondelete="CASCADE"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str | None] = mapped_column(String(64))
    verified_at: Mapped[datetime] = mapped_column(default=utcnow)


class StoreBootFile(Base):
    """A boot file of a vDisk a server holds verified in its store (by kind
    and sha256: the same file may serve several versions)."""

    __tablename__ = "store_boot_files"
    __table_args__ = (
        UniqueConstraint(
            "server_id",
            "vdisk_id",
            "kind",
            "sha256",
            name="uq_store_boot_files_server_id_vdisk_id_kind_sha256",
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    server_id: Mapped[int] = mapped_column(ForeignKey("servers.id", ondelete="CASCADE"))
    vdisk_id: Mapped[int] = mapped_column(ForeignKey("vdisks.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    sha256: Mapped[str] = mapped_column(String(64))
    verified_at: Mapped[datetime] = mapped_column(default=utcnow)


class Replica(Base):
    """What one server is doing about a sealed vDisk version it does not
    hold verified yet: queued (and why), copying (bytes, rate, from which
    peer), failed (why), mismatch (its copy differs from the database)."""

    __tablename__ = "replicas"
    __table_args__ = (
        UniqueConstraint(
            "server_id", "vdisk_id", "version", name="uq_replicas_server_id_vdisk_id_version"
        ),
        CheckConstraint(_in("state", REPLICA_STATES), name="state"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    server_id: Mapped[int] = mapped_column(ForeignKey("servers.id", ondelete="CASCADE"))
    vdisk_id: Mapped[int] = mapped_column(ForeignKey("vdisks.id", ondelete="CASCADE"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    file_name: Mapped[str] = mapped_column(String(128))
    state: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(Text, default="", server_default="")
    bytes_done: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    bytes_total: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    rate_bps: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    peer_server_id: Mapped[int | None] = mapped_column(
        ForeignKey("servers.id", ondelete="SET NULL")
    )
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class AuditEvent(Base):
    """One change made by any front end; before/after are JSON text."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(64))
    target_type: Mapped[str] = mapped_column(String(32))
    target_name: Mapped[str] = mapped_column(String(255))
    before: Mapped[str | None] = mapped_column(Text)
    after: Mapped[str | None] = mapped_column(Text)


class ApiToken(Base):
    """A named REST API token with a role; only the sha256 of its secret is kept."""

    __tablename__ = "api_tokens"
    __table_args__ = (CheckConstraint(_in("role", TOKEN_ROLES), name="role"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    secret_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_by: Mapped[str] = mapped_column(String(128))
    last_used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]
