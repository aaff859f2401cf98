"""Engine creation and schema migrations for the job store; no alembic.ini is needed at runtime."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, create_engine, event, make_url

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
SQLITE_BUSY_TIMEOUT_S = 30  # how long a SQLite connection waits for another process's write lock
_MIGRATION_LOCK = 0x1E5A0C  # PostgreSQL advisory lock held while one process migrates


def make_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite gets its parent folder created, WAL journaling, foreign keys, a busy timeout
    and transactions that take the write lock when they begin, so concurrent processes wait their turn."""
    sa_url = make_url(url)
    if sa_url.get_backend_name() != "sqlite":
        return create_engine(sa_url)
    if sa_url.database and sa_url.database != ":memory:":
        Path(sa_url.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(sa_url, connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_S})
    event.listen(engine, "connect", _configure_sqlite)
    event.listen(engine, "begin", _begin_immediate)
    return engine


def _configure_sqlite(dbapi_connection: sqlite3.Connection, _connection_record: object) -> None:
    # WAL lets the CLI read while a reconcile writes; SQLite leaves foreign keys off unless asked. The driver's own
    # BEGIN is turned off: _begin_immediate starts every transaction.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_S * 1000}")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _begin_immediate(connection: Connection) -> None:
    # A deferred transaction that reads and then writes fails at once ("database is locked"), whatever the busy
    # timeout, when another process wrote in between; one that takes the write lock up front waits instead.
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def alembic_config() -> Config:
    """An Alembic config pointing at the packaged migrations."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def upgrade(engine: Engine) -> None:
    """Migrate the database to the newest schema; returns at once when it is already there.

    Processes upgrading one database at once take turns, the check included, so the later ones find it migrated:
    on SQLite the transaction holds the write lock from its start, on PostgreSQL an advisory lock.
    """
    config = alembic_config()
    heads = set(ScriptDirectory.from_config(config).get_heads())
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK})")
        if set(current_revisions(connection)) == heads:
            return
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


def current_revisions(connection: Connection) -> tuple[str, ...]:
    """The migration revisions the database is at (empty for a fresh database)."""
    return MigrationContext.configure(connection).get_current_heads()
