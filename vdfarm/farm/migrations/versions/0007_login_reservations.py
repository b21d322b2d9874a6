"""Login reservations.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-27

Adds `login_reservations`: one row per device that login sent to a server
and that has not connected yet (device, server, when). Placement counts
them on the server's load until the device's session is recorded or the
reservation runs out.

Frozen history: spells every type, default and constraint name out in full
and imports nothing from vdfarm.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "login_reservations",
        sa.Column("device_id", sa.Integer(), nullable=False),
        sa.Column("server_id", sa.Integer(), nullable=False),
        sa.Column("reserved_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["device_id"],
            ["devices.id"],
            ondelete="CASCADE",
            name="fk_login_reservations_device_id_devices",
        ),
        sa.ForeignKeyConstraint(
            ["server_id"],
            ["servers.id"],
            ondelete="CASCADE",
            name="fk_login_reservations_server_id_servers",
        ),
        sa.PrimaryKeyConstraint("device_id", name="pk_login_reservations"),
    )


def downgrade() -> None:
    op.drop_table("login_reservations")
