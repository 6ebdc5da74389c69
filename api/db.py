"""One database transaction per request, committed in one place.

Views call `db()`; `after_request` commits when the response is a success and rolls
back otherwise, then runs the after-commit hooks (enqueueing), so a worker never
sees a job whose transaction has not committed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from flask import Flask, Response, g, request
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from api.errors import error_response
from models.db import is_sqlite, session_factory
from models.sqlite import AUTOCOMMIT, begin_writing

log = logging.getLogger(__name__)

AfterCommit = Callable[[], Response | None]


READ_METHODS = ("GET", "HEAD", "OPTIONS")


def db() -> Session:
    """The request's session; reads (GET) do not take SQLite's write lock."""
    if "db_session" not in g:
        g.db_session = session_factory(read_only=request.method in READ_METHODS)()
        g.db_session.begin()
        g.after_commit = []
    session: Session = g.db_session
    return session


def caller_read() -> Session:
    """The request's session for reading who calls (`require_key`), before any write.

    On SQLite a write transaction holds the one writer lock from its first statement,
    so a write request that read its caller in it held the lock through the key read
    and the rate limiter's Redis round trip too. That read (one statement for an API
    key) runs outside any transaction instead, so it neither waits for the lock nor
    costs a BEGIN and a COMMIT; `end_caller_read` then begins the writing transaction
    on the same connection (models/sqlite.py), keeping what it loaded, and the view's
    writes hold the lock for their own statements only. Nothing read there is trusted
    for money: the ledger's writes re-check status and balance in SQL, as on
    PostgreSQL, where each statement sees the latest commits anyway.
    """
    fresh = "db_session" not in g
    session = db()
    if fresh and request.method not in READ_METHODS and is_sqlite():
        session.connection(execution_options={"sqlite_begin": AUTOCOMMIT})
        g.caller_read = True
    return session


def end_caller_read() -> None:
    if g.pop("caller_read", False):
        begin_writing(db().connection())


def commit_now() -> None:
    """Commit the request's work so far, before a slow network call.

    On SQLite a request transaction holds the database's write lock, so a view that
    calls an outside service commits first and does the rest in a new transaction.
    """
    session = db()
    session.commit()
    session.begin()


def after_commit(hook: AfterCommit) -> None:
    """Run `hook` once the request's transaction committed; it may replace the response."""
    db()
    g.after_commit.append(hook)


def init_app(app: Flask) -> None:
    @app.after_request
    def _finish(response: Response) -> Response:
        session: Session | None = g.pop("db_session", None)
        if session is None:
            return response
        hooks: list[AfterCommit] = g.pop("after_commit", [])
        try:
            if response.status_code < 400:
                session.commit()
            else:
                session.rollback()
        except SQLAlchemyError:
            log.exception("commit failed")
            session.rollback()
            return error_response(503, "unavailable", "The database is busy; please retry.")
        finally:
            session.close()
        if response.status_code < 400:
            for hook in hooks:
                replacement = hook()
                if replacement is not None:
                    return replacement
        return response

    @app.teardown_request
    def _close(_exc: BaseException | None) -> None:
        session: Session | None = g.pop("db_session", None)
        if session is not None:
            session.rollback()
            session.close()
