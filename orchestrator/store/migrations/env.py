"""Alembic environment: migrates the connection handed over by ``orchestrator.store.upgrade``.

Run from the ``alembic`` command line (to write a new revision), it connects to ``sqlalchemy.url`` instead.
"""

from alembic import context
from sqlalchemy import Connection, create_engine

from orchestrator.store.models import Base


def run_migrations(connection: Connection) -> None:
    # Batch mode lets future revisions alter SQLite tables (which lack most ALTER statements).
    context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


connection = context.config.attributes.get("connection")
if connection is not None:
    run_migrations(connection)
else:
    with create_engine(context.config.get_main_option("sqlalchemy.url")).connect() as own_connection:
        run_migrations(own_connection)
