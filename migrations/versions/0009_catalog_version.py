"""catalog version stamp (issue 17)

`catalog_version`: one row whose `version` the database sets to a new random value on
every change to `plans` or `ai_model_configs` (triggers), so API processes may cache the
price list and still see an admin's change on their very next request.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02 07:30:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

# Kept here, not imported: a migration must not change when the models do.
TABLES = ("plans", "ai_model_configs")
EVENTS = ("insert", "update", "delete")
PG_STAMP = "floor(random() * 9007199254740991)::bigint"
PG_FUNCTION = f"""
CREATE FUNCTION bump_catalog_version() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE catalog_version SET version = {PG_STAMP};
    RETURN NULL;
END $$
"""
SQLITE_BUMP = "UPDATE catalog_version SET version = random()"


def upgrade() -> None:
    op.create_table(
        "catalog_version",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("id = 1", name=op.f("ck_catalog_version_single_row")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_catalog_version")),
    )
    postgresql = op.get_bind().dialect.name == "postgresql"
    stamp = PG_STAMP if postgresql else "random()"
    op.execute(f"INSERT INTO catalog_version (id, version) VALUES (1, {stamp})")
    if postgresql:
        op.execute(PG_FUNCTION)
        for table in TABLES:
            op.execute(
                f"CREATE TRIGGER {table}_bump_catalog_version "
                f"AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON {table} "
                "FOR EACH STATEMENT EXECUTE FUNCTION bump_catalog_version()"
            )
    else:
        for table in TABLES:
            for event in EVENTS:
                op.execute(
                    f"CREATE TRIGGER {table}_{event}_bump_catalog_version "
                    f"AFTER {event.upper()} ON {table} BEGIN {SQLITE_BUMP}; END"
                )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for table in TABLES:
            op.execute(f"DROP TRIGGER {table}_bump_catalog_version ON {table}")
        op.execute("DROP FUNCTION bump_catalog_version()")
    else:
        for table in TABLES:
            for event in EVENTS:
                op.execute(f"DROP TRIGGER {table}_{event}_bump_catalog_version")
    op.drop_table("catalog_version")
