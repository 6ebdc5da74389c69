"""credit amounts and token counts in 64-bit columns

On PostgreSQL these were `integer` (int4): a balance that grew past 2,147,483,647 (a plan
of 10^9 credits a month rolling over twice) made `integer out of range` in the grant,
and the renewal of every account, run in one transaction, failed with it; a provider
answer counting 2^31 tokens could not be logged. SQLite's integers are 64-bit already;
only the declared type changes there (batch: each table is rebuilt once).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07 19:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

# Kept here, not imported: a migration must not change when the models do.
COLUMNS = {
    "accounts": ("credits", "reserved_credits", "budget_monthly_credits"),
    "automation_runs": ("reserved_credits", "held_credits", "released_credits"),
    "jobs": ("reserved_credits", "credits_charged"),
    "purchases": ("credits",),
    "credit_reservations": ("amount",),
    "credit_transactions": ("amount", "balance_after"),
    "credit_usage_logs": ("tokens_in", "tokens_out", "images", "credits"),
    "unbilled_usage": ("tokens_in", "tokens_out", "images", "credits"),
}


def _retype(old: type[sa.types.TypeEngine[int]], new: type[sa.types.TypeEngine[int]]) -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table, columns in COLUMNS.items():
        for column in columns:
            op.alter_column(table, column, type_=new(), existing_type=old())


def upgrade() -> None:
    _retype(sa.Integer, sa.BigInteger)


def downgrade() -> None:
    _retype(sa.BigInteger, sa.Integer)
