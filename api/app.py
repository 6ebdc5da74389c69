"""The Flask app factory (gunicorn: `api.app:create_app()`)."""

from __future__ import annotations

from flask import Flask
from werkzeug.middleware.proxy_fix import ProxyFix

import logs
from api import (
    accounts,
    admin,
    ai_settings,
    artifacts,
    auth,
    automations,
    billing,
    credits,
    db,
    health,
    jobs,
    keyword_library,
    keywords,
    metrics,
    openapi,
    plans,
    provider_limits,
    request_ids,
    sites,
    team,
    usage,
    validation,
    webhooks,
)
from api.errors import register_error_handlers
from settings import reload_settings


def create_app() -> Flask:
    settings = reload_settings()  # the environment as it is now (tests change it)
    app = Flask(__name__, static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes
    app.json = validation.JsonProvider(app)
    app.url_map.converters["id"] = validation.IdConverter
    if settings.trusted_proxies:  # the client address comes from X-Forwarded-For
        hops = settings.trusted_proxies
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops)  # type: ignore[method-assign]
    logs.configure()
    request_ids.init_app(app)
    metrics.init_app(app)
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
        keyword_library.bp,
        team.bp,
        ai_settings.bp,
        webhooks.bp,
        usage.bp,
        artifacts.bp,
        openapi.bp,
        metrics.bp,
        billing.bp,
        provider_limits.bp,
        automations.bp,
    ):
        app.register_blueprint(blueprint)
    return app
