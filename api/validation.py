"""Request parsing: a JSON object body validated by a pydantic model, or a 422."""

from __future__ import annotations

import functools
import io
from collections.abc import Callable
from typing import Any, TypeVar

from flask import request
from pydantic import BaseModel, ValidationError
from werkzeug.exceptions import RequestEntityTooLarge

from api.errors import ApiError, invalid
from billing.webhook_urls import UrlPolicy, url_policy
from settings import get_settings

M = TypeVar("M", bound=BaseModel)
R = TypeVar("R")


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


def json_body(
    model: type[BaseModel] | type[dict[str, Any]],
) -> Callable[[Callable[..., R]], Callable[..., R]]:
    """Hand the view its JSON body as `body=`: validated by the pydantic `model`, or as
    the plain object when `model` is `dict` (billing validates those fields itself).

    Put it under the auth decorators, so a caller without access gets 401/403 before any
    422. The OpenAPI document (api/openapi.py) reads `model` from the view.
    """

    def decorate(view: Callable[..., R]) -> Callable[..., R]:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> R:
            if model is dict:
                kwargs["body"] = json_object()
            else:
                kwargs["body"] = parse_body(model)  # type: ignore[arg-type]
            return view(*args, **kwargs)

        wrapper.__dict__["openapi_body"] = model
        return wrapper

    return decorate


def csv_body(max_bytes: Callable[[], int]) -> Callable[[Callable[..., R]], Callable[..., R]]:
    """Hand the view its `text/csv` body as `lines=`, a stream of text lines read as the
    view consumes them (nothing is buffered whole), up to `max_bytes()` bytes.

    A body that is not UTF-8 or is too large is a 422 even mid-stream: the request's
    transaction then rolls back, so nothing of it is written.
    """

    def decorate(view: Callable[..., R]) -> Callable[..., R]:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> R:
            if request.mimetype != "text/csv":
                raise ApiError(
                    422,
                    "invalid_request",
                    "Send the CSV as the request body with 'Content-Type: text/csv'.",
                    fields={"body": "text/csv"},
                )
            limit = max_bytes()
            request.max_content_length = limit
            try:
                stream = request.stream
                kwargs["lines"] = io.TextIOWrapper(stream, encoding="utf-8-sig", newline="")  # type: ignore[arg-type]
                return view(*args, **kwargs)
            except UnicodeDecodeError as exc:
                raise ApiError(
                    422, "invalid_request", f"The CSV is not valid UTF-8 (byte {exc.start}).",
                    fields={"body": "UTF-8 text"},
                ) from None  # fmt: skip
            except RequestEntityTooLarge:
                raise ApiError(
                    422, "invalid_request", f"The CSV is too large (limit {limit} bytes).",
                    fields={"body": f"at most {limit} bytes"},
                ) from None  # fmt: skip

        wrapper.__dict__["openapi_body"] = "text/csv"
        return wrapper

    return decorate


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


def webhook_url_policy() -> UrlPolicy:
    """The policy for webhook URLs a tenant gives us (private addresses only in dev)."""
    return url_policy(allow_private=get_settings().webhook_allow_private_urls)
