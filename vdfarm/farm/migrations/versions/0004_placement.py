"""Placement, inventory and rebalance.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27

Adds:
- `servers.subnet` (CIDR text, null: none) and `servers.max_booting`
  (default 500, the PVS default): placement inputs;
- `vdisks.subnet_affinity` ('none' | 'best-effort' | 'fixed', default
  'none'); its CHECK constraint is created on PostgreSQL only (SQLite cannot
  add one without rebuilding `vdisks`, which other tables reference with
  ON DELETE CASCADE; the service checks the value anyway);
- `device_sessions.client_ip`, `move_to_server_id` (a rebalance order for
  the serving server) and `move_requested_at`, and indexes on its
  `server_id` and `connected_at` (load and booting counts at every login);
- `store_versions`: which server holds a complete, verified copy of which
  vDisk version.

Frozen history: spells every type, default and constraint name out in full
and imports nothing from vdfarm.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

UTC_TIME = sa.DateTime(timezone=True)
AFFINITY_CHECK = "ck_vdisks_subnet_affinity"


def _is_sqlite() -> bool:
    return op.get_bind().dialect.name == "sqlite"


def upgrade() -> None:
    op.add_column("servers", sa.Column("subnet", sa.String(64), nullable=True))
    op.add_column(
        "servers", sa.Column("max_booting", sa.Integer(), server_default="500", nullable=False)
    )
    op.add_column(
        "vdisks", sa.Column("subnet_affinity", sa.String(16), server_default="none", nullable=False)
    )
    if not _is_sqlite():
        op.create_check_constraint(
            AFFINITY_CHECK, "vdisks", "subnet_affinity IN ('none', 'best-effort', 'fixed')"
        )
    # device_sessions is referenced by no table, so rebuilding it (SQLite) is safe.
    with op.batch_alter_table("device_sessions") as batch:
        batch.add_column(sa.Column("client_ip", sa.String(45), nullable=True))
        batch.add_column(sa.Column("move_to_server_id", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("move_requested_at", UTC_TIME, nullable=True))
        batch.create_foreign_key(
            "fk_device_sessions_move_to_server_id_servers",
            "servers",
            ["move_to_server_id"],
            ["id"],
            ondelete="SET NULL",
        )
        batch.create_index("ix_device_sessions_server_id", ["server_id"])
        batch.create_index("ix_device_sessions_connected_at", ["connected_at"])
    op.create_table(
        "store_versions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("server_id", sa.Integer(), nullable=False),
        sa.Column("vdisk_id", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=True),
        sa.Column("verified_at", UTC_TIME, nullable=False),
        sa.ForeignKeyConstraint(
            ["server_id"],
            ["servers.id"],
            ondelete="CASCADE",
            name="fk_store_versions_server_id_servers",
        ),
        sa.ForeignKeyConstraint(
            ["vdisk_id"],
            ["vdisks.id"],
            ondelete="CASCADE",
            name="fk_store_versions_vdisk_id_vdisks",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_store_versions"),
        sa.UniqueConstraint(
            "server_id", "vdisk_id", "version", name="uq_store_versions_server_id_vdisk_id_version"
        ),
    )
    op.create_index("ix_store_versions_vdisk_id", "store_versions", ["vdisk_id"])


def downgrade() -> None:
    op.drop_index("ix_store_versions_vdisk_id", table_name="store_versions")
    op.drop_table("store_versions")
    with op.batch_alter_table("device_sessions") as batch:
        batch.drop_index("ix_device_sessions_connected_at")
        batch.drop_index("ix_device_sessions_server_id")
        batch.drop_constraint("fk_device_sessions_move_to_server_id_servers", type_="foreignkey")
        batch.drop_column("move_requested_at")
        batch.drop_column("move_to_server_id")
        batch.drop_column("client_ip")
    if not _is_sqlite():
        op.drop_constraint(AFFINITY_CHECK, "vdisks", type_="check")
    op.drop_column("vdisks", "subnet_affinity")
    op.drop_column("servers", "max_booting")
    op.drop_column("servers", "subnet")
