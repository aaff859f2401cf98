"""The job store: SQLAlchemy models, a repository with the job lifecycle, and Alembic migrations."""

from .database import make_engine, upgrade
from .models import ALLOWED_TRANSITIONS, TASKS, JobState
from .repository import InvalidTransitionError, JobEventRecord, JobRecord, JobStore, UnknownJobError

__all__ = [
    "ALLOWED_TRANSITIONS",
    "TASKS",
    "InvalidTransitionError",
    "JobEventRecord",
    "JobRecord",
    "JobState",
    "JobStore",
    "UnknownJobError",
    "make_engine",
    "upgrade",
]
