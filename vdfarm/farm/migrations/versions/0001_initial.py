"""Initial farm schema: servers, stores, vdisks, devices, locks, audit_events.

Revision ID: 0001
Revises:
Create Date: 2024-11-27

Frozen history: spells every type, default and constraint name out in full
and imports nothing from vdfarm.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

UTC_TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "servers",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("uuid", sa.String(36), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("hostname", sa.String(255), nullable=False),
        sa.Column("nbd_port", sa.Integer(), nullable=True),
        sa.Column("api_port", sa.Integer(), nullable=True),
        sa.Column("power_rating", sa.Float(), server_default="1.0", nullable=False),
        sa.Column("store_path", sa.Text(), nullable=False),
        sa.Column("version", sa.String(32), nullable=False),
        sa.Column("last_heartbeat", UTC_TIME, nullable=True),
        sa.Column("created_at", UTC_TIME, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_servers")),
        sa.UniqueConstraint("uuid", name=op.f("uq_servers_uuid")),
        sa.UniqueConstraint("name", name=op.f("uq_servers_name")),
    )
    op.create_table(
        "stores",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("server_id", sa.Integer(), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["server_id"],
            ["servers.id"],
            ondelete="CASCADE",
            name=op.f("fk_stores_server_id_servers"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_stores")),
        sa.UniqueConstraint("server_id", "path", name=op.f("uq_stores_server_id_path")),
    )
    op.create_table(
        "vdisks",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("format", sa.String(16), nullable=False),
        sa.Column("access_mode", sa.String(16), server_default="standard", nullable=False),
        sa.Column("write_cache_type", sa.String(32), server_default="server-disk", nullable=False),
        sa.Column("write_cache_limit_mb", sa.Integer(), nullable=True),
        sa.Column("description", sa.Text(), server_default="", nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("created_at", UTC_TIME, nullable=False),
        sa.CheckConstraint(
            "access_mode IN ('standard', 'private')", name=op.f("ck_vdisks_access_mode")
        ),
        sa.CheckConstraint(
            "write_cache_type IN ('server-disk', 'server-ram', 'device-ram', "
            "'device-disk', 'device-ram-overflow')",
            name=op.f("ck_vdisks_write_cache_type"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_vdisks")),
        sa.UniqueConstraint("name", name=op.f("uq_vdisks_name")),
    )
    op.create_table(
        "devices",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("mac", sa.String(17), nullable=True),
        sa.Column("vdisk_id", sa.Integer(), nullable=True),
        sa.Column("device_type", sa.String(16), server_default="production", nullable=False),
        sa.Column("description", sa.Text(), server_default="", nullable=False),
        sa.Column("created_at", UTC_TIME, nullable=False),
        sa.CheckConstraint(
            "device_type IN ('production', 'test', 'maintenance')",
            name=op.f("ck_devices_device_type"),
        ),
        sa.ForeignKeyConstraint(
            ["vdisk_id"], ["vdisks.id"], name=op.f("fk_devices_vdisk_id_vdisks")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_devices")),
        sa.UniqueConstraint("name", name=op.f("uq_devices_name")),
        sa.UniqueConstraint("mac", name=op.f("uq_devices_mac")),
    )
    op.create_table(
        "locks",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("vdisk_id", sa.Integer(), nullable=False),
        sa.Column("holder_device_id", sa.Integer(), nullable=True),
        sa.Column("server_id", sa.Integer(), nullable=True),
        sa.Column("lease_expires_at", UTC_TIME, nullable=True),
        sa.Column("fencing_token", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("acquired_at", UTC_TIME, nullable=True),
        sa.ForeignKeyConstraint(
            ["vdisk_id"],
            ["vdisks.id"],
            ondelete="CASCADE",
            name=op.f("fk_locks_vdisk_id_vdisks"),
        ),
        sa.ForeignKeyConstraint(
            ["holder_device_id"],
            ["devices.id"],
            ondelete="SET NULL",
            name=op.f("fk_locks_holder_device_id_devices"),
        ),
        sa.ForeignKeyConstraint(
            ["server_id"],
            ["servers.id"],
            ondelete="SET NULL",
            name=op.f("fk_locks_server_id_servers"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_locks")),
        sa.UniqueConstraint("vdisk_id", name=op.f("uq_locks_vdisk_id")),
    )
    op.create_table(
        "audit_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("at", UTC_TIME, nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("target_type", sa.String(32), nullable=False),
        sa.Column("target_name", sa.String(255), nullable=False),
        sa.Column("before", sa.Text(), nullable=True),
        sa.Column("after", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_events")),
    )
    op.create_index(op.f("ix_audit_events_at"), "audit_events", ["at"])


def downgrade() -> None:
    op.drop_index(op.f("ix_audit_events_at"), table_name="audit_events")
    op.drop_table("audit_events")
    op.drop_table("locks")
    op.drop_table("devices")
    op.drop_table("vdisks")
    op.drop_table("stores")
    op.drop_table("servers")
