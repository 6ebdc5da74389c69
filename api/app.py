"""The Flask app factory (gunicorn: `api.app:create_app()`)."""

from __future__ import annotations

import logging

from flask import Flask

from api import (
    accounts,
    admin,
    ai_settings,
    auth,
    credits,
    db,
    health,
    jobs,
    keywords,
    openapi,
    plans,
    provider_limits,
    sites,
    team,
    webhooks,
)
from api.errors import register_error_handlers
from settings import get_settings


def create_app() -> Flask:
    settings = get_settings()
    app = Flask(__name__, static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes
    app.json.sort_keys = False  # type: ignore[attr-defined]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    db.init_app(app)
    register_error_handlers(app)
    for blueprint in (
        health.bp,
        auth.bp,
        accounts.bp,
        jobs.bp,
        credits.bp,
        admin.bp,
        plans.bp,
        sites.bp,
        keywords.bp,
        team.bp,
        ai_settings.bp,
        webhooks.bp,
        openapi.bp,
        provider_limits.bp,
    ):
        app.register_blueprint(blueprint)
    return app
