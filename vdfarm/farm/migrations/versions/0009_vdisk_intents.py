"""vDisk intents.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01

Adds `vdisk_intents`: at most one row per vDisk (unique `vdisk_id`) naming a
change of its files that is under way on one server's store — its kind
('merge' or 'seal', enforced by a CHECK constraint), the server whose store
it changes, when it started and its plan (JSON text). The row is written
and committed before the file work starts and deleted in the transaction
that records the result, so a row left behind is a half-done step that
`vdfarm vdisk repair` (or the server's start) completes or rolls back.

Frozen history: spells every type, default and constraint name out in full
and imports nothing from vdfarm.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "vdisk_intents",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("vdisk_id", sa.Integer(), nullable=False),
        sa.Column("server_id", sa.Integer(), nullable=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("plan", sa.Text(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("kind IN ('merge', 'seal')", name="ck_vdisk_intents_kind"),
        sa.ForeignKeyConstraint(
            ["vdisk_id"],
            ["vdisks.id"],
            ondelete="CASCADE",
            name="fk_vdisk_intents_vdisk_id_vdisks",
        ),
        sa.ForeignKeyConstraint(
            ["server_id"],
            ["servers.id"],
            ondelete="SET NULL",
            name="fk_vdisk_intents_server_id_servers",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_vdisk_intents"),
        sa.UniqueConstraint("vdisk_id", name="uq_vdisk_intents_vdisk_id"),
    )


def downgrade() -> None:
    op.drop_table("vdisk_intents")
