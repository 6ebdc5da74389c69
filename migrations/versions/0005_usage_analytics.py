"""usage analytics: account timezone, automation_id on jobs and usage logs, indexes

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-22 05:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

ARTIFACT_TABLES = ("clusters", "ideas", "contents", "image_prompts", "images")
# Written out, not imported: a migration must not change when the models do.
USAGE_INSIGHT_COLUMNS = (
    "operation", "site_id", "model", "automation_id", "credits", "items_created", "images",
    "cost_usd", "tokens_in", "tokens_out",
)


def upgrade() -> None:
    with op.batch_alter_table("accounts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("timezone", sa.String(length=64), nullable=True))

    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("automation_id", sa.String(length=40), nullable=True))
        batch_op.create_index("ix_jobs_automation_id", ["automation_id"], unique=False)
        batch_op.create_index(
            "ix_jobs_created_at", ["created_at"], unique=False, postgresql_using="brin"
        )

    with op.batch_alter_table("credit_usage_logs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("automation_id", sa.String(length=40), nullable=True))
        batch_op.drop_index("ix_credit_usage_logs_account_created")
        batch_op.create_index(
            "ix_credit_usage_logs_account_created_id",
            ["account_id", "created_at", "id"],
            unique=False,
            postgresql_include=list(USAGE_INSIGHT_COLUMNS),
        )
        batch_op.create_index(
            "ix_credit_usage_logs_created_at", ["created_at"], unique=False,
            postgresql_using="brin",
        )

    for table in ARTIFACT_TABLES:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_index(f"ix_{table}_account_id")
            batch_op.create_index(f"ix_{table}_account_id_id", ["account_id", "id"], unique=False)


def downgrade() -> None:
    for table in ARTIFACT_TABLES:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_index(f"ix_{table}_account_id_id")
            batch_op.create_index(f"ix_{table}_account_id", ["account_id"], unique=False)

    with op.batch_alter_table("credit_usage_logs", schema=None) as batch_op:
        batch_op.drop_index("ix_credit_usage_logs_created_at")
        batch_op.drop_index("ix_credit_usage_logs_account_created_id")
        batch_op.create_index(
            "ix_credit_usage_logs_account_created", ["account_id", "created_at"], unique=False
        )
        batch_op.drop_column("automation_id")

    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_created_at")
        batch_op.drop_index("ix_jobs_automation_id")
        batch_op.drop_column("automation_id")

    with op.batch_alter_table("accounts", schema=None) as batch_op:
        batch_op.drop_column("timezone")
