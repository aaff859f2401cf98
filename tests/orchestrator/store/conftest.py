"""Every store test gets its own SQLite file, migrated to the newest schema."""

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from orchestrator.store import JobStore, make_engine, upgrade


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = make_engine(f"sqlite:///{tmp_path / 'home' / 'jobs.db'}")
    upgrade(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def store(engine: Engine) -> JobStore:
    return JobStore(engine)
