"""`GET /metrics`: Prometheus text format (metrics.py), open unless METRICS_TOKEN is set
(then `Authorization: Bearer <token>`)."""

from __future__ import annotations

import hmac
import re
from collections.abc import Iterable

import redis
from flask import Blueprint, Flask, Response, request
from prometheus_client.core import GaugeMetricFamily

import metrics
from api.errors import ApiError
from api.schemas import responds
from billing.monitoring import platform_state
from celeryconfig import QUEUES
from models import utcnow
from models.db import session_factory
from settings import get_settings

bp = Blueprint("metrics", __name__)
_CONVERTER = re.compile(r"<[^:>]+:(\w+)>")
_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})


def _state() -> Iterable[GaugeMetricFamily]:
    with session_factory(read_only=True)() as session:
        state = platform_state(session, utcnow())
    yield GaugeMetricFamily("aijobs_credits_held", "Credits on hold", value=state.credits_held)
    yield GaugeMetricFamily("aijobs_holds_open", "Open credit holds", value=state.holds_open)
    yield GaugeMetricFamily(
        "aijobs_hold_oldest_age_seconds",
        "Age of the oldest open hold",
        value=state.oldest_hold_age_seconds,
    )
    jobs = GaugeMetricFamily("aijobs_jobs", "Jobs not yet final, by status", labels=["status"])
    for status, count in state.jobs_by_status.items():
        jobs.add_metric([status], count)
    yield jobs
    client = redis.Redis.from_url(get_settings().broker_url, socket_timeout=2)
    try:
        lengths = GaugeMetricFamily(
            "celery_queue_length", "Messages waiting in a broker queue", labels=["queue_name"]
        )
        for queue in QUEUES:
            lengths.add_metric([queue], client.llen(queue))
        yield lengths
    finally:
        client.close()


@bp.get("/metrics")
@responds(None, errors=(401,), media_types={"text/plain": {"type": "string"}})
def scrape() -> Response:
    """Prometheus text format (`Authorization: Bearer <METRICS_TOKEN>` when that is set)."""
    token = get_settings().metrics_token
    if token:
        offered = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(offered.encode(), token.encode()):
            raise ApiError(401, "unauthorized", "Send the metrics token as a Bearer token.")
    body, content_type = metrics.exposition(_state)
    return Response(body, content_type=content_type)


def _label(rule: str) -> str:
    """`/v1/jobs/<id:job_id>` as `/v1/jobs/<job_id>`: labels do not change with converters."""
    return _CONVERTER.sub(r"<\1>", rule)


def _method(method: str) -> str:
    """Unknown methods as "other": gunicorn passes any made-up token, and a label per
    token would let an unauthenticated client create time series without end."""
    return method if method in _METHODS else "other"


def init_app(app: Flask) -> None:
    """Count every response by method, endpoint and status (429s also as rate-limit
    refusals). Every label has a bounded set of values: the route's rule (never the raw
    path: unmatched URLs are one "unmatched"), a known method or "other", and a status
    the app chose."""

    @app.after_request
    def _count(response: Response) -> Response:
        endpoint = _label(request.url_rule.rule) if request.url_rule else "unmatched"
        status = str(response.status_code)
        metrics.HTTP_RESPONSES.labels(_method(request.method), endpoint, status).inc()
        if response.status_code == 429:
            metrics.RATE_LIMITED.labels(endpoint).inc()
        return response
