"""ai_model_configs.max_output_tokens

The provider refuses a request whose `max_tokens` is above the model's output cap
(16,384 for gpt-4o and gpt-4o-mini): inputs whose output bound is above it are refused
at submission instead of failing at the provider with their hold taken. `ops seed` fills
the shipped models' values. ADD COLUMN on SQLite too (no table rebuild: the catalog
stamp's triggers from 0009 stay).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07 19:10:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("ai_model_configs", sa.Column("max_output_tokens", sa.Integer(), nullable=True))


def downgrade() -> None:
    # A plain DROP COLUMN (SQLite >= 3.35): a batch rebuild would drop 0009's triggers.
    op.drop_column("ai_model_configs", "max_output_tokens")
