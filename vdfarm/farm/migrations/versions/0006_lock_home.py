"""The home server of a vDisk's writes.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-27

Adds `locks.home_server_id`: the server whose local store holds the writes
of a private vDisk (or of the open version a maintenance device writes).
Every server keeps its own copy, so only that one is current; the lock may
be taken on no other server until the admin moves the home. Existing locks
get the server that holds them now, if any.

Frozen history: spells every type, default and constraint name out in full
and imports nothing from vdfarm.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # locks is referenced by no table, so rebuilding it (SQLite) is safe.
    with op.batch_alter_table("locks") as batch:
        batch.add_column(sa.Column("home_server_id", sa.Integer(), nullable=True))
        batch.create_foreign_key(
            "fk_locks_home_server_id_servers",
            "servers",
            ["home_server_id"],
            ["id"],
            ondelete="SET NULL",
        )
    op.execute("UPDATE locks SET home_server_id = server_id WHERE server_id IS NOT NULL")


def downgrade() -> None:
    with op.batch_alter_table("locks") as batch:
        batch.drop_constraint("fk_locks_home_server_id_servers", type_="foreignkey")
        batch.drop_column("home_server_id")
