"""users: only a user who joined holds an address; an invitation reserves none

`users.email` and `users.email_normalized` were unique over every user, invited ones too,
so an address invited by one account could not be invited by another (409 email_taken):
anyone could block someone's team by inviting them first. They are now unique over the
users who joined (registration, an accepted invitation), and once per account; plain
indexes keep the lookups by address. Members from before invitations who never joined
but have a live API key keep their address in the code (billing/accounts.py: no new
such member can be made). The old constraints held over every row, so existing data
always fits the new ones; a downgrade stops while an address is invited by several
accounts, naming it.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-08 01:40:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

JOINED = sa.text("joined_at IS NOT NULL")


def upgrade() -> None:
    op.drop_index("ix_users_email_normalized", table_name="users")
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.drop_constraint("uq_users_email", type_="unique")
    op.create_index("ix_users_email", "users", ["email"])
    op.create_index("ix_users_email_normalized", "users", ["email_normalized"])
    for name, column in (
        ("uq_users_email_joined", "email"),
        ("uq_users_email_normalized_joined", "email_normalized"),
    ):
        op.create_index(
            name, "users", [column], unique=True, sqlite_where=JOINED, postgresql_where=JOINED
        )
    op.create_index("uq_users_account_email", "users", ["account_id", "email"], unique=True)
    op.create_index(
        "uq_users_account_email_normalized",
        "users",
        ["account_id", "email_normalized"],
        unique=True,
    )


def downgrade() -> None:
    shared = (
        op.get_bind()
        .execute(
            sa.text(
                "SELECT email FROM users GROUP BY email HAVING count(*) > 1 "
                "UNION SELECT email_normalized FROM users WHERE email_normalized IS NOT NULL "
                "GROUP BY email_normalized HAVING count(*) > 1"
            )
        )
        .scalars()
        .all()
    )
    if shared:
        raise RuntimeError(
            "addresses with more than one user (invited by several accounts); remove the "
            f"extra invitations, then downgrade again: {sorted(shared)[:20]}"
        )
    for name in (
        "uq_users_account_email_normalized",
        "uq_users_account_email",
        "uq_users_email_normalized_joined",
        "uq_users_email_joined",
        "ix_users_email_normalized",
        "ix_users_email",
    ):
        op.drop_index(name, table_name="users")
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.create_unique_constraint("uq_users_email", ["email"])
    op.create_index("ix_users_email_normalized", "users", ["email_normalized"], unique=True)
