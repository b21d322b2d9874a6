"""Boot files of versions, and which server holds them.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-20

Adds:
- `vdisk_versions.boot_cmdline` (text, null: the version has no boot files);
- `version_boot_files`: a version's kernel or initramfs (kind 'kernel' |
  'initrd', a CHECK constraint), its size and sha256; one per (version,
  kind); removed with its version (ON DELETE CASCADE);
- `store_boot_files`: a server holds a vDisk's boot file of that kind and
  sha256, verified (one row per server, vDisk, kind and sha256); removed
  with its server or vDisk.
Existing versions get no boot files.

Frozen history: spells every type, default and constraint name out in full
and imports nothing from vdfarm.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

UTC_TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.add_column("vdisk_versions", sa.Column("boot_cmdline", sa.Text(), nullable=True))
    op.create_table(
        "version_boot_files",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.CheckConstraint("kind IN ('kernel', 'initrd')", name=op.f("ck_version_boot_files_kind")),
        sa.ForeignKeyConstraint(
            ["version_id"],
            ["vdisk_versions.id"],
            ondelete="CASCADE",
            name="fk_version_boot_files_version_id_vdisk_versions",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_version_boot_files"),
        sa.UniqueConstraint("version_id", "kind", name="uq_version_boot_files_version_id_kind"),
    )
    op.create_table(
        "store_boot_files",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("server_id", sa.Integer(), nullable=False),
        sa.Column("vdisk_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("verified_at", UTC_TIME, nullable=False),
        sa.ForeignKeyConstraint(
            ["server_id"],
            ["servers.id"],
            ondelete="CASCADE",
            name="fk_store_boot_files_server_id_servers",
        ),
        sa.ForeignKeyConstraint(
            ["vdisk_id"],
            ["vdisks.id"],
            ondelete="CASCADE",
            name="fk_store_boot_files_vdisk_id_vdisks",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_store_boot_files"),
        sa.UniqueConstraint(
            "server_id",
            "vdisk_id",
            "kind",
            "sha256",
            name="uq_store_boot_files_server_id_vdisk_id_kind_sha256",
        ),
    )
    op.create_index("ix_store_boot_files_vdisk_id", "store_boot_files", ["vdisk_id"])


def downgrade() -> None:
    op.drop_index("ix_store_boot_files_vdisk_id", table_name="store_boot_files")
    op.drop_table("store_boot_files")
    op.drop_table("version_boot_files")
    op.drop_column("vdisk_versions", "boot_cmdline")
