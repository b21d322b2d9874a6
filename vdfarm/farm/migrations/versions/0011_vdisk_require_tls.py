"""vDisks that require TLS.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-01

Adds `vdisks.require_tls`: the NBD server serves the vDisk (its devices'
exports and its `vdisk/NAME` view) only over TLS. Existing vDisks get the
default, false: they are served as before.

Frozen history: spells every type, default and constraint name out in full
and imports nothing from vdfarm.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "vdisks",
        sa.Column("require_tls", sa.Boolean(), server_default=sa.false(), nullable=False),
    )


def downgrade() -> None:
    with op.batch_alter_table("vdisks") as batch:
        batch.drop_column("require_tls")
