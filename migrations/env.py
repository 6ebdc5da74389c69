"""Alembic environment: the models' metadata, the URL from DATABASE_URL."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

import models
from models.db import database_url, get_engine

config = context.config
target_metadata = models.Base.metadata


def run_migrations_offline() -> None:
    context.configure(url=database_url(), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    url = config.attributes.get("database_url") or database_url()
    with get_engine(url).connect() as connection:
        sqlite = connection.dialect.name == "sqlite"
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=sqlite,
            # SQLite can roll DDL back: one transaction for the whole upgrade (alembic's
            # default there is one per migration, which would commit half an upgrade).
            transactional_ddl=True,
        )
        if not sqlite:
            with context.begin_transaction():
                context.run_migrations()
            return
        # SQLite changes a table by copying it (batch mode), and dropping the old copy of
        # a table others point at (users, by API keys) fails with foreign keys on. As
        # SQLite's own procedure says: off outside the transaction (it ignores the pragma
        # inside one), every migration in one transaction, `foreign_key_check` finding
        # nothing before the commit (else all of it rolls back), then on again.
        _sqlite_foreign_keys(connection, on=False)
        try:
            with context.begin_transaction():
                context.run_migrations()
                broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                if broken:
                    raise RuntimeError(f"the migrations broke foreign keys: {broken[:20]}")
        finally:
            _sqlite_foreign_keys(connection, on=True)


def _sqlite_foreign_keys(connection: Connection, *, on: bool) -> None:
    """On the driver's connection, outside any transaction (it runs in autocommit)."""
    driver = connection.connection.dbapi_connection
    assert driver is not None
    driver.execute(f"PRAGMA foreign_keys={'ON' if on else 'OFF'}")


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
