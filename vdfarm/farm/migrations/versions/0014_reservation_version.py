"""A login reservation may name the version a running device keeps.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-01

Adds `login_reservations.version` (nullable integer): the version a running
device's agent asked to keep at a failover login; the server the device
connects to serves that version instead of the current one. NULL (every
existing row): a fresh boot, served the current version as before.

Frozen history: spells every type out in full and imports nothing from
vdfarm.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("login_reservations", sa.Column("version", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("login_reservations") as batch:
        batch.drop_column("version")
