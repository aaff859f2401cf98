"""jobs.finalized_at: when MLflow learnt of a job's end, so reconciling retries the tracking side until it has.

Jobs that had already ended count as finalized: reconciling took its one try at them.

Revision ID: 0002
Revises: 0001
Create Date: 2025-02-01
"""

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("finalized_at", sa.DateTime(timezone=True), nullable=True))
    op.execute("UPDATE jobs SET finalized_at = COALESCE(ended_at, updated_at) "
               "WHERE state IN ('SUCCEEDED', 'FAILED', 'CANCELLED')")


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("finalized_at")
