"""Every migration walks up and down, and the models match the migrated schema,
on SQLite and (when reachable) PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Column, Integer, MetaData, Table, inspect, select, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from tests.farm.postgres import fresh_postgres_url
from vdfarm.farm import db
from vdfarm.farm.models import Base, Vdisk, VdiskVersion

CREATED = datetime(2030, 1, 1, tzinfo=UTC)
TABLES = {
    "servers",
    "stores",
    "vdisks",
    "devices",
    "locks",
    "audit_events",
    "vdisk_versions",
    "device_sessions",
    "store_versions",
    "farm_settings",
    "login_reservations",
    "api_tokens",
    "vdisk_intents",
    "store_sets",
    "store_set_servers",
    "replicas",
    "version_boot_files",
    "store_boot_files",
    "device_boots",
}


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path):
    if request.param == "sqlite":
        yield db.sqlite_url(tmp_path / "farm.db")
    else:
        with fresh_postgres_url() as pg_url:
            yield pg_url


def diffs(url, metadata=Base.metadata):
    engine = db.make_engine(url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            return compare_metadata(context, metadata)
    finally:
        engine.dispose()


def tables(url):
    engine = db.make_engine(url)
    try:
        return set(inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def revisions_base_to_head():
    script = ScriptDirectory.from_config(db.alembic_config())
    return [r.revision for r in reversed(list(script.walk_revisions()))]


def test_head_revision_constant_is_the_head():
    script = ScriptDirectory.from_config(db.alembic_config())
    assert script.get_heads() == [db.HEAD_REVISION]


def test_walk_every_migration_up_and_down(url):
    engine = db.make_engine(url)
    try:
        for revision in revisions_base_to_head():
            db.upgrade(url, revision)
            assert db.current_revision(engine) == revision
        assert diffs(url) == []
        assert tables(url) == TABLES
        for revision in reversed(revisions_base_to_head()):
            assert db.current_revision(engine) == revision
            db.downgrade(url, "-1")
        assert db.current_revision(engine) is None
        assert tables(url) == set()
        db.upgrade(url)
        assert diffs(url) == []
    finally:
        engine.dispose()


def test_comparison_would_catch_a_model_drift(url):
    db.upgrade(url)
    drifted = MetaData()
    for table in Base.metadata.sorted_tables:
        table.to_metadata(drifted)
    Table("extra", drifted, Column("id", Integer, primary_key=True))
    drifted.tables["devices"].append_column(Column("rack", Integer))
    kinds = {d[0] for d in diffs(url, drifted)}
    assert {"add_table", "add_column"} <= kinds


def test_check_url():
    assert db.check_url("sqlite:////tmp/x.db") == "sqlite:////tmp/x.db"
    with pytest.raises(db.BadDatabaseURL):
        db.check_url("not a url")
    with pytest.raises(db.BadDatabaseURL, match="unsupported database"):
        db.check_url("mysql://u@h/db")
    # PostgreSQL without a driver: the one vdfarm installs (psycopg 3).
    assert db.check_url("postgresql://u:pw@h:5433/farm") == "postgresql+psycopg://u:pw@h:5433/farm"
    assert db.check_url("postgresql+psycopg://u@h/farm") == "postgresql+psycopg://u@h/farm"


def test_a_silent_database_host_fails_a_connect_instead_of_hanging_it():
    """A host that accepts TCP but never answers (a hung server): the
    connect gives up (after POSTGRES_CONNECT_ARGS' timeout) with an error."""
    import socket
    import threading

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        engine = db.make_engine(f"postgresql://root@127.0.0.1:{port}/farm")
        outcome = []

        def connect():
            try:
                engine.connect().close()
                outcome.append("connected")
            except OperationalError as exc:
                outcome.append(exc)

        worker = threading.Thread(target=connect, daemon=True)
        worker.start()
        worker.join(60)
        engine.dispose()
    assert not worker.is_alive(), "the connect hung"
    assert isinstance(outcome[0], OperationalError), outcome
    assert "timeout" in str(outcome[0]).lower()


def test_0002_gives_every_existing_vdisk_its_base_version(url):
    engine = db.make_engine(url)
    try:
        db.upgrade(url, "0001")
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO vdisks (name, size, format, sha256, created_at) "
                    "VALUES ('w', 4096, 'raw', :sha, :at)"
                ),
                {"sha": "a" * 64, "at": CREATED},
            )
        db.upgrade(url, "0002")
        with Session(engine) as session:
            vdisk = session.execute(
                select(  # the 0002 columns only: later ones are missing
                    Vdisk.id, Vdisk.max_versions, Vdisk.override_version, Vdisk.created_at
                )
            ).one()
            [base] = session.execute(
                select(  # the 0002 columns only: later ones are missing
                    VdiskVersion.vdisk_id,
                    VdiskVersion.number,
                    VdiskVersion.parent_number,
                    VdiskVersion.file_name,
                    VdiskVersion.format,
                    VdiskVersion.access,
                    VdiskVersion.size,
                    VdiskVersion.sha256,
                    VdiskVersion.created_at,
                    VdiskVersion.sealed_at,
                    VdiskVersion.production_at,
                )
            ).all()
        assert (vdisk.max_versions, vdisk.override_version) == (5, None)
        assert (base.vdisk_id, base.number, base.parent_number, base.file_name) == (
            vdisk.id,
            0,
            None,
            "base.raw",
        )
        assert (base.format, base.access, base.size, base.sha256) == (
            "raw",
            "production",
            4096,
            "a" * 64,
        )
        assert base.created_at == base.sealed_at == base.production_at == vdisk.created_at
        db.downgrade(url, "0001")
        with engine.connect() as conn:
            assert conn.execute(text("SELECT name FROM vdisks")).scalars().all() == ["w"]
    finally:
        engine.dispose()


def test_postgres_statements_and_lock_waits_are_bounded():
    engine = db.make_engine("postgresql://root@127.0.0.1:5432/test")
    try:
        with engine.connect() as connection:
            show = connection.exec_driver_sql
            assert (
                show("SHOW statement_timeout").scalar(),
                show("SHOW lock_timeout").scalar(),
            ) == ("30s", "10s")
    except OperationalError as exc:  # pragma: no cover - no PostgreSQL here
        pytest.skip(f"PostgreSQL not reachable: {exc}")
    finally:
        engine.dispose()
