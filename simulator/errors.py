"""OpenAI-style JSON responses and errors, and the request-body checks that raise them.

Every stand-in answers errors in OpenAI's shape, {"error": {"message", "type", "param",
"code"}}, so the real `openai` SDK maps each status to the exception it raises in production.
"""

from __future__ import annotations

import json
from typing import Any

from flask import Response, request
from werkzeug.exceptions import ClientDisconnected

Headers = tuple[tuple[str, str], ...]


class RequestError(Exception):
    """A client mistake that becomes an OpenAI-style error response."""

    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code

    def response(self) -> Response:
        return error_response(self.status, self.message, self.code)


def json_response(status: int, payload: Any, headers: Headers = ()) -> Response:
    """`payload` as json.dumps writes it (not Flask's compact form), with Content-Length."""
    body = json.dumps(payload, ensure_ascii=False).encode("utf-8")
    return Response(body, status, headers=list(headers), content_type="application/json")


def no_content() -> Response:
    """A bare 204: RFC 9110 gives it no body, no Content-Length and nothing to type."""
    response = Response(status=204)
    del response.headers["Content-Type"]
    return response


def _error_type(status: int) -> tuple[str, str | None]:
    """OpenAI's error type and code for a status, so the SDK maps it to the right exception."""
    if status == 429:
        return "rate_limit_error", "rate_limit_exceeded"
    if status >= 500:
        return "server_error", None
    if status == 401:
        return "authentication_error", "invalid_api_key"
    return "invalid_request_error", None


def error_response(
    status: int, message: str, code: str | None = None, headers: Headers = ()
) -> Response:
    error_type, default_code = _error_type(status)
    body = {
        "error": {
            "message": message,
            "type": error_type,
            "param": None,
            "code": code if code is not None else default_code,
        }
    }
    return json_response(status, body, headers)


def raw_body() -> bytes:
    """The whole request body (werkzeug de-chunks it and enforces MAX_CONTENT_LENGTH)."""
    try:
        return request.get_data()
    except ClientDisconnected as exc:  # also what werkzeug raises on broken chunk framing
        raise RequestError(400, "Malformed or incomplete request body.") from exc


def json_object() -> dict[str, Any]:
    try:
        payload = json.loads(raw_body().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RequestError(400, f"We could not parse the JSON body of your request: {exc}") from exc
    if not isinstance(payload, dict):
        raise RequestError(400, "The request body must be a JSON object.")
    return payload


def int_field(
    payload: dict[str, Any], name: str, default: int | None, low: int, high: int
) -> int | None:
    """Read an optional integer field, rejecting bools, floats and out-of-range values."""
    value = payload.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise RequestError(400, f"'{name}' must be an integer between {low} and {high}.")
    return value


def str_field(payload: dict[str, Any], name: str, default: str) -> str:
    """An optional string field; null or empty means `default`."""
    value = payload.get(name) or default
    if not isinstance(value, str):
        raise RequestError(400, f"'{name}' must be a string.")
    return value
