"""make_engine and upgrade on real SQLite files: pragmas, idempotent migrations, schema == models."""

from pathlib import Path

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, inspect

from orchestrator.store import JobStore, make_engine, upgrade
from orchestrator.store.database import alembic_config, current_revisions
from orchestrator.store.models import Base


def test_make_engine_creates_parent_folder_and_enables_wal_and_foreign_keys(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'a' / 'b' / 'jobs.db'}")
    with engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    engine.dispose()
    assert (tmp_path / "a" / "b" / "jobs.db").is_file()


def test_upgrade_creates_both_tables_with_their_indexes(engine: Engine) -> None:
    inspector = inspect(engine)
    assert {"jobs", "job_events", "alembic_version"} <= set(inspector.get_table_names())
    assert {index["name"] for index in inspector.get_indexes("jobs")} == {"ix_jobs_state", "ix_jobs_created_at"}
    with engine.connect() as connection:
        assert current_revisions(connection) == ("0001",)


def test_upgrade_twice_is_a_no_op_that_keeps_data(engine: Engine) -> None:
    JobStore(engine).create("keep-me", name="n", task="classification", spec={})
    upgrade(engine)
    with engine.connect() as connection:
        assert current_revisions(connection) == ("0001",)
    assert JobStore(engine).get("keep-me").id == "keep-me"


def test_migrated_schema_matches_the_models(engine: Engine) -> None:
    with engine.connect() as connection:
        assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []


def test_downgrade_to_base_removes_the_tables_and_upgrade_restores_them(engine: Engine) -> None:
    config = alembic_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, "base")
    assert set(inspect(engine).get_table_names()) == {"alembic_version"}
    upgrade(engine)
    assert {"jobs", "job_events"} <= set(inspect(engine).get_table_names())
