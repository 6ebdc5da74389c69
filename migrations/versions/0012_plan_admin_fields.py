"""plans.admin_fields

The fields of a plan an admin set through `PATCH /v1/admin/plans/{slug}`: `ops seed`
(run on every start and deploy) leaves them as the admin made them instead of writing
the catalog's values back (a retired plan came back, a raised price fell back). Plans
edited before this revision cannot be told apart: they start with none. ADD COLUMN on
SQLite too (no table rebuild: the catalog stamp's triggers from 0009 stay).

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-08 10:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "plans", sa.Column("admin_fields", sa.JSON(), server_default="[]", nullable=False)
    )


def downgrade() -> None:
    # A plain DROP COLUMN (SQLite >= 3.35): a batch rebuild would drop 0009's triggers.
    op.drop_column("plans", "admin_fields")
