"""vDisk versions and device sessions.

Revision ID: 0002
Revises: 0001
Create Date: 2024-12-02

Adds `vdisk_versions` (a version 0 row — the base, in production — is made
for every existing vDisk from its columns: every 0001-era store file is
`base.raw`), `device_sessions`, and the vDisk settings `max_versions` and
`override_version`.

Frozen history: spells every type, default and constraint name out in full
and imports nothing from vdfarm.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

UTC_TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.add_column(
        "vdisks", sa.Column("max_versions", sa.Integer(), server_default="5", nullable=False)
    )
    op.add_column("vdisks", sa.Column("override_version", sa.Integer(), nullable=True))
    op.create_table(
        "vdisk_versions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("vdisk_id", sa.Integer(), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("parent_number", sa.Integer(), nullable=True),
        sa.Column("file_name", sa.String(128), nullable=False),
        sa.Column("format", sa.String(16), nullable=False),
        sa.Column("access", sa.String(16), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=True),
        sa.Column("sha256", sa.String(64), nullable=True),
        sa.Column("created_at", UTC_TIME, nullable=False),
        sa.Column("sealed_at", UTC_TIME, nullable=True),
        sa.Column("production_at", UTC_TIME, nullable=True),
        sa.CheckConstraint(
            "access IN ('maintenance', 'test', 'production')",
            name=op.f("ck_vdisk_versions_access"),
        ),
        sa.CheckConstraint("format IN ('raw', 'qcow2')", name=op.f("ck_vdisk_versions_format")),
        sa.ForeignKeyConstraint(
            ["vdisk_id"],
            ["vdisks.id"],
            ondelete="CASCADE",
            name=op.f("fk_vdisk_versions_vdisk_id_vdisks"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_vdisk_versions")),
        sa.UniqueConstraint("vdisk_id", "number", name=op.f("uq_vdisk_versions_vdisk_id_number")),
    )
    op.execute(
        "INSERT INTO vdisk_versions (vdisk_id, number, parent_number, file_name, format, "
        "access, size, sha256, created_at, sealed_at, production_at) "
        "SELECT id, 0, NULL, 'base.raw', format, 'production', size, sha256, "
        "created_at, created_at, created_at FROM vdisks"
    )
    op.create_table(
        "device_sessions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("device_id", sa.Integer(), nullable=False),
        sa.Column("server_id", sa.Integer(), nullable=False),
        sa.Column("vdisk_id", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("connected_at", UTC_TIME, nullable=False),
        sa.Column("last_seen", UTC_TIME, nullable=False),
        sa.ForeignKeyConstraint(
            ["device_id"],
            ["devices.id"],
            ondelete="CASCADE",
            name=op.f("fk_device_sessions_device_id_devices"),
        ),
        sa.ForeignKeyConstraint(
            ["server_id"],
            ["servers.id"],
            ondelete="CASCADE",
            name=op.f("fk_device_sessions_server_id_servers"),
        ),
        sa.ForeignKeyConstraint(
            ["vdisk_id"],
            ["vdisks.id"],
            ondelete="CASCADE",
            name=op.f("fk_device_sessions_vdisk_id_vdisks"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_device_sessions")),
        sa.UniqueConstraint("device_id", name=op.f("uq_device_sessions_device_id")),
    )
    op.create_index(op.f("ix_device_sessions_vdisk_id"), "device_sessions", ["vdisk_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_device_sessions_vdisk_id"), table_name="device_sessions")
    op.drop_table("device_sessions")
    op.drop_table("vdisk_versions")
    op.drop_column("vdisks", "override_version")
    op.drop_column("vdisks", "max_versions")
