"""Command line: `python -m ops <command>` (also installed as `aijobs`).

migrate  apply Alembic migrations to DATABASE_URL
seed     load the shipped plans and model prices (idempotent; keeps the plan fields an
         admin set, unless --reset)
audit    check the ledger invariants; exit 1 naming each violation
sweep    release expired holds as of --now (default: the current time)
periodic run one scheduled job as of --now: trial-expiry, ahrefs-reset, renewal, sweep,
         webhooks, reconcile (what Celery beat runs; safe to repeat, each period counts once)
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path

from alembic import command
from alembic.config import Config

from billing import catalog
from billing.audit import audit
from models import utcnow
from models.db import database_url, snapshot, transaction

ROOT = Path(__file__).resolve().parent.parent
# tasks.periodic.JOBS; named here so the parser does not load Celery for other commands.
PERIODIC_JOBS = ("trial-expiry", "ahrefs-reset", "renewal", "sweep", "webhooks", "reconcile")


def migrate(url: str | None = None) -> None:
    config = Config(str(ROOT / "alembic.ini"))
    config.attributes["database_url"] = url or database_url()
    command.upgrade(config, "head")


def _instant(text: str) -> datetime:
    """`--now`: an ISO-8601 instant (UTC unless it says otherwise); a bad one is a usage
    error naming it, not a traceback."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO-8601 instant (e.g. 2026-12-01T00:00:00Z)"
        ) from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="aijobs", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("migrate", help="apply migrations")
    seed = commands.add_parser("seed", help="load plans and model prices")
    seed.add_argument(
        "--reset", action="store_true", help="also overwrite the plan fields an admin set"
    )
    commands.add_parser("audit", help="check ledger invariants")
    sweep = commands.add_parser("sweep", help="release expired holds")
    sweep.add_argument(
        "--now", type=_instant, help="ISO-8601 instant to sweep as of (default: now)"
    )
    periodic = commands.add_parser("periodic", help="run one scheduled job by hand")
    periodic.add_argument("job", choices=list(PERIODIC_JOBS))
    periodic.add_argument(
        "--now", type=_instant, help="ISO-8601 instant to run as of (default: now)"
    )
    args = parser.parse_args(argv)

    if args.command == "migrate":
        migrate()
        print("migrated", _redacted(database_url()))
    elif args.command == "seed":
        with transaction() as session:
            catalog.seed(session, reset=args.reset)
        print(f"seeded {len(catalog.PLANS)} plans and {len(catalog.MODELS)} models")
    elif args.command == "audit":
        with snapshot() as session:
            violations = audit(session)
        for violation in violations:
            print("VIOLATION:", violation)
        print(f"audit: {len(violations)} violation(s) in {_redacted(database_url())}")
        return 1 if violations else 0
    elif args.command in ("sweep", "periodic"):
        # The same code beat runs, so swept jobs get their webhooks too.
        from tasks.periodic import run_periodic

        job = "sweep" if args.command == "sweep" else args.job
        print(f"periodic {job}: {run_periodic(job, args.now or utcnow())}")
    return 0


def _redacted(url: str) -> str:
    """Database URL without its password, for output."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


if __name__ == "__main__":
    sys.exit(main())
