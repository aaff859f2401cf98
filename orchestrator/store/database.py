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


def make_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite gets its parent folder created, WAL journaling and foreign keys."""
    sa_url = make_url(url)
    if sa_url.get_backend_name() != "sqlite":
        return create_engine(sa_url)
    if sa_url.database and sa_url.database != ":memory:":
        Path(sa_url.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(sa_url, connect_args={"check_same_thread": False})
    event.listen(engine, "connect", _configure_sqlite)
    return engine


def _configure_sqlite(dbapi_connection: sqlite3.Connection, _connection_record: object) -> None:
    # WAL lets the CLI read while a reconcile writes; SQLite leaves foreign keys off unless asked.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def alembic_config() -> Config:
    """An Alembic config pointing at the packaged migrations."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def upgrade(engine: Engine) -> None:
    """Migrate the database to the newest schema; returns at once when it is already there."""
    config = alembic_config()
    heads = set(ScriptDirectory.from_config(config).get_heads())
    with engine.begin() as connection:
        if set(current_revisions(connection)) == heads:
            return
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


def current_revisions(connection: Connection) -> tuple[str, ...]:
    """The migration revisions the database is at (empty for a fresh database)."""
    return MigrationContext.configure(connection).get_current_heads()
