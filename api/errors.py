"""Every error is JSON: {"error": {"code", "message", ...details}} with the right status."""

from __future__ import annotations

import logging
from typing import Any

import redis
from flask import Flask, Response, jsonify
from kombu.exceptions import OperationalError as BrokerError
from pydantic import ValidationError
from sqlalchemy.exc import DataError, OperationalError
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from billing.errors import BillingError
from billing.operations import validation_details

log = logging.getLogger(__name__)

STATUS_BY_CODE = {
    "invalid_request": 422,
    "not_found": 404,
    "conflict": 409,
    "idempotency_conflict": 409,
    "job_not_cancellable": 409,
    "automation_not_cancellable": 409,
    "duplicate_reference": 409,
    "email_taken": 409,
    "already_exists": 409,
    "webhook_disabled": 409,
    "invitation_used": 409,
    "invitation_expired": 410,
    "amount_mismatch": 409,
    "purchase_not_pending": 409,
    "plan_limits_exceeded": 409,
    "insufficient_credits": 402,
    "budget_exceeded": 402,
    "subscription_required": 402,
    "account_suspended": 403,
    "account_cancelled": 403,
    "model_not_allowed": 403,
    "limit_reached": 403,
    "forbidden": 403,
}


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, **details: Any) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details


def error_response(http_status: int, code: str, message: str, /, **details: Any) -> Response:
    response = jsonify({"error": {"code": code, "message": message, **details}})
    response.status_code = http_status
    return response


def invalid(exc: ValidationError, prefix: str = "") -> ApiError:
    fields = validation_details(exc, prefix)
    name, problem = next(iter(fields.items()))
    return ApiError(422, "invalid_request", f"Invalid request: {name}: {problem}.", fields=fields)


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError) -> Response:
        response = error_response(exc.status, exc.code, exc.message, **exc.details)
        if "retry_after" in exc.details:
            response.headers["Retry-After"] = str(exc.details["retry_after"])
        return response

    @app.errorhandler(BillingError)
    def _billing_error(exc: BillingError) -> Response:
        return error_response(
            STATUS_BY_CODE.get(exc.code, 400), exc.code, exc.message, **exc.details
        )

    @app.errorhandler(RequestEntityTooLarge)
    def _too_large(_exc: RequestEntityTooLarge) -> Response:
        limit = app.config["MAX_CONTENT_LENGTH"]
        return error_response(
            422,
            "invalid_request",
            f"Request body is too large (limit {limit} bytes).",
            fields={"body": f"at most {limit} bytes"},
        )

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        """werkzeug's errors as JSON, keeping their headers (a 405's `Allow`)."""
        code = (exc.name or "error").lower().replace(" ", "_")
        response = error_response(exc.code or 500, code, exc.description or exc.name or "Error")
        for name, value in exc.get_headers():
            if name.lower() != "content-type":
                response.headers[name] = value
        return response

    @app.errorhandler(DataError)
    def _unstorable_value(exc: DataError) -> Response:
        """Values the database refuses outright, e.g. a NUL byte in a PostgreSQL string."""
        log.info("database refused a value: %s", exc.orig)
        return error_response(
            422, "invalid_request", "The request contains a value that cannot be stored."
        )

    @app.errorhandler(OperationalError)
    def _database_unavailable(exc: OperationalError) -> Response:
        """A locked SQLite file past its busy timeout, or a lost PostgreSQL connection."""
        log.warning("database unavailable: %s", exc.orig)
        response = error_response(
            503, "database_unavailable", "The database is busy or unreachable; please retry."
        )
        response.headers["Retry-After"] = "1"
        return response

    @app.errorhandler(redis.ConnectionError)
    @app.errorhandler(redis.TimeoutError)
    @app.errorhandler(BrokerError)
    def _broker_unavailable(exc: Exception) -> Response:
        """Redis (broker, limits) unreachable where no view expected it: 503, not 500."""
        log.warning("redis unavailable: %s", exc)
        response = error_response(
            503, "broker_unavailable", "The job queue is unavailable; please retry."
        )
        response.headers["Retry-After"] = "5"
        return response

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        log.exception("unhandled error")
        return error_response(500, "internal_error", "Something went wrong on our side.")
