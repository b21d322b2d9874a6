"""Audit retention.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01

Adds `farm_settings.audit_days`: how many days audit rows are kept before
the periodic prune deletes them (0 keeps them forever). The existing row
gets the default, 365.

Frozen history: spells every type, default and constraint name out in full
and imports nothing from vdfarm.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "farm_settings",
        sa.Column("audit_days", sa.Integer(), server_default="365", nullable=False),
    )


def downgrade() -> None:
    with op.batch_alter_table("farm_settings") as batch:
        batch.drop_column("audit_days")
