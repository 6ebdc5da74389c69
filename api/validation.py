"""Request parsing: a JSON object body validated by a pydantic model, or a 422."""

from __future__ import annotations

from typing import Any, TypeVar

from flask import request
from pydantic import BaseModel, ValidationError

from api.errors import ApiError, invalid

M = TypeVar("M", bound=BaseModel)


def json_object() -> dict[str, Any]:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise ApiError(
            422,
            "invalid_request",
            "The request body must be a JSON object.",
            fields={"body": "a JSON object"},
        )
    return body


def parse_body(model: type[M]) -> M:
    body = json_object()
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise invalid(exc) from None


def query_int(name: str, default: int) -> int:
    raw = request.args.get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ApiError(
            422,
            "invalid_request",
            f"Query parameter {name!r} must be an integer.",
            fields={name: "an integer"},
        ) from None
