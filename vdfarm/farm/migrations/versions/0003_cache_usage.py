"""Write-cache usage of connected devices.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27

Adds `device_sessions.cache_used_bytes`: how much of its write cache a
connected standard-mode device uses, as its server last reported.

Frozen history: imports nothing from vdfarm.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("device_sessions", sa.Column("cache_used_bytes", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("device_sessions") as batch:
        batch.drop_column("cache_used_bytes")
