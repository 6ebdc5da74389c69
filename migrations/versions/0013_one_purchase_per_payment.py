"""uq_purchases_paid_reference: one payment pays for one purchase

A bank payment's reference could confirm a purchase and a bank transfer too, or two
purchases: one payment credited twice. A unique index over the references of paid
purchases refuses the second (billing.credits.paying_once answers 409 first). A database
where that already happened cannot take the index: the upgrade stops naming the
references, for an operator to look at (nothing is changed).

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07 22:30:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

PAID = sa.text("status = 'paid'")


def upgrade() -> None:
    reused = (
        op.get_bind()
        .execute(
            sa.text(
                "SELECT payment_reference FROM purchases WHERE status = 'paid' "
                "AND payment_reference IS NOT NULL "
                "GROUP BY payment_reference HAVING count(*) > 1"
            )
        )
        .scalars()
        .all()
    )
    if reused:
        raise RuntimeError(
            "payments that paid for more than one purchase (one may have been credited "
            f"twice; check them, then migrate again): {sorted(reused)[:20]}"
        )
    op.create_index(
        "uq_purchases_paid_reference",
        "purchases",
        ["payment_reference"],
        unique=True,
        sqlite_where=PAID,
        postgresql_where=PAID,
    )


def downgrade() -> None:
    op.drop_index("uq_purchases_paid_reference", table_name="purchases")
