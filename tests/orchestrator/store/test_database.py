"""make_engine and upgrade on real SQLite files: pragmas, idempotent migrations, schema == models, many processes
opening one fresh store at once."""

import multiprocessing
from datetime import UTC, datetime
from multiprocessing.synchronize import Barrier
from pathlib import Path

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, inspect, text

from orchestrator.store import JobState, JobStore, make_engine, upgrade
from orchestrator.store.database import alembic_config, current_revisions
from orchestrator.store.models import Base


def test_make_engine_creates_parent_folder_and_enables_wal_foreign_keys_and_a_busy_timeout(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'a' / 'b' / 'jobs.db'}")
    with engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30_000
    engine.dispose()
    assert (tmp_path / "a" / "b" / "jobs.db").is_file()


def test_upgrade_creates_both_tables_with_their_indexes(engine: Engine) -> None:
    inspector = inspect(engine)
    assert {"jobs", "job_events", "alembic_version"} <= set(inspector.get_table_names())
    assert {index["name"] for index in inspector.get_indexes("jobs")} == {"ix_jobs_state", "ix_jobs_created_at"}
    with engine.connect() as connection:
        assert current_revisions(connection) == ("0002",)


def test_upgrade_twice_is_a_no_op_that_keeps_data(engine: Engine) -> None:
    JobStore(engine).create("keep-me", name="n", task="classification", spec={})
    upgrade(engine)
    with engine.connect() as connection:
        assert current_revisions(connection) == ("0002",)
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


def test_upgrading_from_the_first_schema_counts_finished_jobs_as_finalized(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'jobs.db'}")
    config = alembic_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0001")
    ended = datetime(2025, 1, 2, 3, 4, 5)
    with engine.begin() as connection:
        for job_id, state in (("done", "SUCCEEDED"), ("running", "RUNNING")):
            connection.execute(text(
                "INSERT INTO jobs (id, name, task, state, spec, attempts, created_at, updated_at, ended_at) "
                "VALUES (:id, 'n', 'classification', :state, '{}', 1, :at, :at, :ended)"),
                {"id": job_id, "state": state, "at": ended, "ended": ended if state == "SUCCEEDED" else None})
    upgrade(engine)
    store = JobStore(engine)
    assert store.get("done").finalized_at == ended.replace(tzinfo=UTC) and store.get("done").is_settled
    assert store.get("running").finalized_at is None
    engine.dispose()


def _open_and_write(url: str, worker: int, start: Barrier) -> None:
    start.wait()  # every process opens the fresh file at the same moment
    engine = make_engine(url)
    upgrade(engine)
    store = JobStore(engine)
    for index in range(5):
        job_id = f"w{worker}-{index}"
        store.create(job_id, name="n", task="classification", spec={})
        store.transition(job_id, JobState.SUBMITTED, ray_submission_id=job_id)
        store.transition(job_id, JobState.FAILED, error="stopped")
    engine.dispose()


def test_eight_processes_opening_a_fresh_store_at_once_all_migrate_and_write(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(8)
    workers = [context.Process(target=_open_and_write, args=(url, worker, start)) for worker in range(8)]
    for process in workers:
        process.start()
    for process in workers:
        process.join(timeout=120)
    assert [process.exitcode for process in workers] == [0] * 8
    engine = make_engine(url)
    assert len(JobStore(engine).list(state=JobState.FAILED)) == 40
    engine.dispose()
