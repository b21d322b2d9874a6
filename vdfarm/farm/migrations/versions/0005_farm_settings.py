"""Farm settings.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27

Adds `farm_settings`, one row (id 1, enforced by a CHECK constraint) with
the settings every server must agree on: the heartbeat timeout after which
a server is down (3 s), how long a device counts as booting after it
connected (60 s), and the rebalance trigger percentage (25). The row is
inserted with those defaults.

Frozen history: spells every type, default and constraint name out in full
and imports nothing from vdfarm.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    table = op.create_table(
        "farm_settings",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("heartbeat_timeout_s", sa.Float(), server_default="3.0", nullable=False),
        sa.Column("boot_phase_s", sa.Float(), server_default="60.0", nullable=False),
        sa.Column("rebalance_trigger_pct", sa.Float(), server_default="25.0", nullable=False),
        sa.CheckConstraint("id = 1", name="ck_farm_settings_single_row"),
        sa.PrimaryKeyConstraint("id", name="pk_farm_settings"),
    )
    op.bulk_insert(table, [{"id": 1}])


def downgrade() -> None:
    op.drop_table("farm_settings")
