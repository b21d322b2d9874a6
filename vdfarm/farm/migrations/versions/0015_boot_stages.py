"""Boot stages of devices, and auto-added devices.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-01

Adds:
- `device_boots`: a device's last network boot (one row per device at
  most, removed with it): its stage ('ipxe' | 'kernel' | 'streaming' |
  'up', a CHECK constraint) and when it reached it, the time of each stage
  of that boot (null: not reached), and the address it fetched its iPXE
  script from;
- `devices.auto_added` (false for every existing device): registered by
  the iPXE route, not by a person;
- `farm_settings.auto_add_vdisk_id` (null: auto-add off, as for every
  existing farm; set null when that vDisk is deleted) and
  `farm_settings.auto_add_limit` (100): how many auto-added devices the
  farm may hold.

Frozen history: spells every type, default and constraint name out in full
and imports nothing from vdfarm.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

UTC_TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "device_boots",
        sa.Column("device_id", sa.Integer(), nullable=False),
        sa.Column("stage", sa.String(16), nullable=False),
        sa.Column("stage_at", UTC_TIME, nullable=False),
        sa.Column("ipxe_at", UTC_TIME, nullable=True),
        sa.Column("kernel_at", UTC_TIME, nullable=True),
        sa.Column("streaming_at", UTC_TIME, nullable=True),
        sa.Column("up_at", UTC_TIME, nullable=True),
        sa.Column("client_ip", sa.String(45), nullable=True),
        sa.CheckConstraint(
            "stage IN ('ipxe', 'kernel', 'streaming', 'up')", name=op.f("ck_device_boots_stage")
        ),
        sa.ForeignKeyConstraint(
            ["device_id"],
            ["devices.id"],
            ondelete="CASCADE",
            name="fk_device_boots_device_id_devices",
        ),
        sa.PrimaryKeyConstraint("device_id", name="pk_device_boots"),
    )
    op.add_column(
        "devices",
        sa.Column("auto_added", sa.Boolean(), server_default=sa.false(), nullable=False),
    )
    with op.batch_alter_table("farm_settings") as batch:
        batch.add_column(sa.Column("auto_add_vdisk_id", sa.Integer(), nullable=True))
        batch.add_column(
            sa.Column("auto_add_limit", sa.Integer(), server_default="100", nullable=False)
        )
        batch.create_foreign_key(
            "fk_farm_settings_auto_add_vdisk_id_vdisks",
            "vdisks",
            ["auto_add_vdisk_id"],
            ["id"],
            ondelete="SET NULL",
        )


def downgrade() -> None:
    with op.batch_alter_table("farm_settings") as batch:
        batch.drop_constraint("fk_farm_settings_auto_add_vdisk_id_vdisks", type_="foreignkey")
        batch.drop_column("auto_add_limit")
        batch.drop_column("auto_add_vdisk_id")
    with op.batch_alter_table("devices") as batch:
        batch.drop_column("auto_added")
    op.drop_table("device_boots")
