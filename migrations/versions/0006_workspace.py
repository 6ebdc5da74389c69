"""workspace self-service: invitations, token versions, site deletion, keyword library

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-22 09:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("token_version", sa.Integer(), nullable=False, server_default="0")
        )
        batch_op.add_column(sa.Column("joined_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.alter_column("token_version", server_default=None)
    # Owners set their password at registration; members invited before invitations
    # existed never could, so they show as invited and can be sent a new invitation.
    op.execute("UPDATE users SET joined_at = created_at WHERE role = 'owner'")

    op.create_table(
        "invitations",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("account_id", sa.String(length=40), nullable=False),
        sa.Column("user_id", sa.String(length=40), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("accepted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name=op.f("fk_invitations_account_id_accounts")
        ),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_invitations_user_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_invitations")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_invitations_token_hash")),
    )
    with op.batch_alter_table("invitations", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_invitations_account_id"), ["account_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_invitations_user_id"), ["user_id"], unique=False)

    with op.batch_alter_table("sites", schema=None) as batch_op:
        batch_op.add_column(sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True))

    with op.batch_alter_table("keywords", schema=None) as batch_op:
        batch_op.add_column(sa.Column("cpc", sa.Numeric(precision=10, scale=2), nullable=True))
        batch_op.add_column(sa.Column("country", sa.String(length=2), nullable=True))
        batch_op.add_column(sa.Column("intent", sa.String(length=20), nullable=True))

    keyword_type = sa.String(length=300).with_variant(
        sa.String(length=300, collation="C"), "postgresql"
    )
    op.create_table(
        "keyword_library",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("keyword", keyword_type, nullable=False),
        sa.Column("country", sa.String(length=2), nullable=False),
        sa.Column("volume", sa.Integer(), nullable=False),
        sa.Column("difficulty", sa.Integer(), nullable=False),
        sa.Column("cpc", sa.Numeric(precision=10, scale=2), nullable=True),
        sa.Column("intent", sa.String(length=20), nullable=True),
        sa.Column("topic", sa.String(length=100), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("volume >= 0", name=op.f("ck_keyword_library_volume_not_negative")),
        sa.CheckConstraint(
            "difficulty BETWEEN 0 AND 100", name=op.f("ck_keyword_library_difficulty_range")
        ),
        sa.CheckConstraint("cpc >= 0", name=op.f("ck_keyword_library_cpc_not_negative")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_keyword_library")),
        sa.UniqueConstraint("keyword", "country", name=op.f("uq_keyword_library_keyword")),
    )
    with op.batch_alter_table("keyword_library", schema=None) as batch_op:
        batch_op.create_index("ix_keyword_library_volume", ["volume", "id"], unique=False)
        batch_op.create_index(
            "ix_keyword_library_country_volume", ["country", "volume", "id"], unique=False
        )
        batch_op.create_index(
            "ix_keyword_library_topic_volume", ["topic", "volume", "id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("keyword_library", schema=None) as batch_op:
        batch_op.drop_index("ix_keyword_library_topic_volume")
        batch_op.drop_index("ix_keyword_library_country_volume")
        batch_op.drop_index("ix_keyword_library_volume")
    op.drop_table("keyword_library")

    with op.batch_alter_table("keywords", schema=None) as batch_op:
        batch_op.drop_column("intent")
        batch_op.drop_column("country")
        batch_op.drop_column("cpc")

    with op.batch_alter_table("sites", schema=None) as batch_op:
        batch_op.drop_column("deleted_at")

    with op.batch_alter_table("invitations", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_invitations_user_id"))
        batch_op.drop_index(batch_op.f("ix_invitations_account_id"))
    op.drop_table("invitations")

    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.drop_column("joined_at")
        batch_op.drop_column("token_version")
