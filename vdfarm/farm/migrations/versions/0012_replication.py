"""Replication: store sets, replicas, schedules, the replica token role.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-10

Adds:
- `store_sets`: a named set of vDisks with the copy cap (`max_rate_bps`,
  null: none) and windows (`windows`, "HH:MM-HH:MM,...", "": always) of
  replication; row id 1 `default` is made here;
- `store_set_servers`: the servers a store set is narrowed to (no row: every
  server of the farm);
- `vdisks.store_set_id` (not null, default 1): every existing vDisk lands in
  `default`. SQLite cannot add a column with a REFERENCES clause and a
  default while foreign keys are enforced; `vdfarm.farm.db` runs migrations
  with them off (and checks them before it commits), so the column is added
  in place there, with its constraint inline;
- `replicas`: what a server is doing about a sealed version it does not hold
  yet (state 'queued' | 'copying' | 'failed' | 'mismatch', a CHECK
  constraint; reason, bytes, rate, the peer), one row per (server, vDisk,
  version);
- `vdisk_versions.replicate_now_at` (`replication start --now`) and
  `vdisk_versions.promote_when_replicated` ('production' | 'test', null);
- `servers.api_tls`: whether the server's REST API speaks HTTPS (default
  false);
- the `api_tokens.role` CHECK constraint (named
  `ck_api_tokens_ck_api_tokens_role` by 0008, and kept so) allows 'replica'
  too (SQLite: the table, referenced by nothing, is rebuilt). The downgrade deletes replica
  tokens first, since the old constraint refuses them.

Frozen history: spells every type, default and constraint name out in full
and imports nothing from vdfarm.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

UTC_TIME = sa.DateTime(timezone=True)
# The name 0008 gave it: Alembic applied the naming convention's
# "ck_<table>_" prefix to a name that had it already.
ROLE_CHECK = "ck_api_tokens_ck_api_tokens_role"
OLD_ROLES = "role IN ('read', 'operator', 'admin')"
NEW_ROLES = "role IN ('read', 'operator', 'admin', 'replica')"
STORE_SET_FK = "fk_vdisks_store_set_id_store_sets"


def _is_sqlite() -> bool:
    return op.get_bind().dialect.name == "sqlite"


def _api_tokens(roles: str) -> sa.Table:
    """api_tokens as 0008 made it, with the role CHECK ROLES."""
    return sa.Table(
        "api_tokens",
        sa.MetaData(),
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("secret_sha256", sa.String(64), nullable=False),
        sa.Column("created_at", UTC_TIME, nullable=False),
        sa.Column("created_by", sa.String(128), nullable=False),
        sa.Column("last_used_at", UTC_TIME, nullable=True),
        sa.Column("revoked_at", UTC_TIME, nullable=True),
        sa.CheckConstraint(roles, name=ROLE_CHECK),
        sa.PrimaryKeyConstraint("id", name="pk_api_tokens"),
        sa.UniqueConstraint("name", name="uq_api_tokens_name"),
        sa.UniqueConstraint("secret_sha256", name="uq_api_tokens_secret_sha256"),
    )


def _set_role_check(old: str, new: str) -> None:
    with op.batch_alter_table("api_tokens", copy_from=_api_tokens(old)) as batch:
        batch.drop_constraint(op.f(ROLE_CHECK), type_="check")
        batch.create_check_constraint(op.f(ROLE_CHECK), new)


def upgrade() -> None:
    store_sets = op.create_table(
        "store_sets",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("max_rate_bps", sa.BigInteger(), nullable=True),
        sa.Column("windows", sa.Text(), server_default="", nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_store_sets"),
        sa.UniqueConstraint("name", name="uq_store_sets_name"),
    )
    op.bulk_insert(store_sets, [{"id": 1, "name": "default", "max_rate_bps": None, "windows": ""}])
    if not _is_sqlite():  # an explicit id leaves the sequence behind
        op.execute("SELECT setval(pg_get_serial_sequence('store_sets', 'id'), 1)")
    op.create_table(
        "store_set_servers",
        sa.Column("store_set_id", sa.Integer(), nullable=False),
        sa.Column("server_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["store_set_id"],
            ["store_sets.id"],
            ondelete="CASCADE",
            name="fk_store_set_servers_store_set_id_store_sets",
        ),
        sa.ForeignKeyConstraint(
            ["server_id"],
            ["servers.id"],
            ondelete="CASCADE",
            name="fk_store_set_servers_server_id_servers",
        ),
        sa.PrimaryKeyConstraint("store_set_id", "server_id", name="pk_store_set_servers"),
    )
    if _is_sqlite():
        op.execute(
            "ALTER TABLE vdisks ADD COLUMN store_set_id INTEGER DEFAULT '1' NOT NULL "
            f"CONSTRAINT {STORE_SET_FK} REFERENCES store_sets (id)"
        )
    else:
        op.add_column(
            "vdisks",
            sa.Column("store_set_id", sa.Integer(), server_default="1", nullable=False),
        )
        op.create_foreign_key(STORE_SET_FK, "vdisks", "store_sets", ["store_set_id"], ["id"])
    op.create_table(
        "replicas",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("server_id", sa.Integer(), nullable=False),
        sa.Column("vdisk_id", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("file_name", sa.String(128), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text(), server_default="", nullable=False),
        sa.Column("bytes_done", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("bytes_total", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("rate_bps", sa.Float(), server_default="0", nullable=False),
        sa.Column("peer_server_id", sa.Integer(), nullable=True),
        sa.Column("updated_at", UTC_TIME, nullable=False),
        sa.CheckConstraint(
            "state IN ('queued', 'copying', 'failed', 'mismatch')", name=op.f("ck_replicas_state")
        ),
        sa.ForeignKeyConstraint(
            ["server_id"], ["servers.id"], ondelete="CASCADE", name="fk_replicas_server_id_servers"
        ),
        sa.ForeignKeyConstraint(
            ["vdisk_id"], ["vdisks.id"], ondelete="CASCADE", name="fk_replicas_vdisk_id_vdisks"
        ),
        sa.ForeignKeyConstraint(
            ["peer_server_id"],
            ["servers.id"],
            ondelete="SET NULL",
            name="fk_replicas_peer_server_id_servers",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_replicas"),
        sa.UniqueConstraint(
            "server_id", "vdisk_id", "version", name="uq_replicas_server_id_vdisk_id_version"
        ),
    )
    op.create_index("ix_replicas_vdisk_id", "replicas", ["vdisk_id"])
    op.add_column("vdisk_versions", sa.Column("replicate_now_at", UTC_TIME, nullable=True))
    op.add_column(
        "vdisk_versions", sa.Column("promote_when_replicated", sa.String(16), nullable=True)
    )
    op.add_column(
        "servers", sa.Column("api_tls", sa.Boolean(), server_default=sa.false(), nullable=False)
    )
    _set_role_check(OLD_ROLES, NEW_ROLES)


def downgrade() -> None:
    # Columns go with ALTER TABLE DROP COLUMN on both databases (SQLite >=
    # 3.35): no table referenced by others is rebuilt.
    op.execute("DELETE FROM api_tokens WHERE role = 'replica'")
    _set_role_check(NEW_ROLES, OLD_ROLES)
    op.drop_column("servers", "api_tls")
    op.drop_column("vdisk_versions", "promote_when_replicated")
    op.drop_column("vdisk_versions", "replicate_now_at")
    op.drop_index("ix_replicas_vdisk_id", table_name="replicas")
    op.drop_table("replicas")
    if not _is_sqlite():
        op.drop_constraint(STORE_SET_FK, "vdisks", type_="foreignkey")
    op.drop_column("vdisks", "store_set_id")
    op.drop_table("store_set_servers")
    op.drop_table("store_sets")
