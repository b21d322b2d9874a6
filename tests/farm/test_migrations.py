"""Every migration walks up and down, and the models match the migrated schema,
on SQLite and (when reachable) PostgreSQL."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Column, Integer, MetaData, Table, inspect

from tests.farm.postgres import fresh_postgres_url
from vdfarm.farm import db
from vdfarm.farm.models import Base

TABLES = {"servers", "stores", "vdisks", "devices", "locks", "audit_events"}


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
