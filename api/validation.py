"""Request parsing: a JSON object body validated by a pydantic model, or a 422.

Every JSON body goes through `parse_json` (the app's JSON provider), so what no handler
and no database can take is refused here, once, before any view runs: nesting deeper
than `MAX_JSON_DEPTH` (checked by a flat scan before the parser recurses), strings with
NUL or lone surrogates (PostgreSQL refuses them, SQLite would store them), NaN and
Infinity (not JSON), and bodies that are not UTF-8.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable
from typing import Any, TypeVar

from flask import request
from flask.json.provider import DefaultJSONProvider
from pydantic import BaseModel, ValidationError

from api.errors import ApiError, invalid
from billing.webhook_urls import UrlPolicy, url_policy
from settings import get_settings

M = TypeVar("M", bound=BaseModel)
R = TypeVar("R")

MAX_JSON_DEPTH = 64
# Brackets, quotes and backslashes: all the depth scan needs to look at.
_STRUCTURE = re.compile(r'[\[\]{}"\\]')
# NUL, or a UTF-16 surrogate on its own (JSON's "\ud800" escape): no database stores them.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def parse_json(data: str | bytes) -> Any:
    """A JSON document, or a 422 naming what is wrong with it (`ValueError` for text
    that is not JSON at all, which the caller reports as it sees fit)."""
    if isinstance(data, bytes | bytearray):
        try:
            data = bytes(data).decode("utf-8")
        except UnicodeDecodeError:
            raise _body_error(
                "The request body must be UTF-8 encoded JSON.", "UTF-8 JSON"
            ) from None
    if _deeper_than(data, MAX_JSON_DEPTH):
        raise _body_error(
            f"The request body is nested deeper than {MAX_JSON_DEPTH} levels.",
            f"at most {MAX_JSON_DEPTH} levels of nesting",
        )
    value = json.loads(data, parse_constant=_no_constant)
    _check_strings(value, "")
    return value


class JsonProvider(DefaultJSONProvider):
    """Flask's JSON, with every request body read through `parse_json`."""

    sort_keys = False

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        return parse_json(s)


def _deeper_than(text: str, limit: int) -> bool:
    """Nesting depth by a flat scan (no recursion, linear): brackets outside strings."""
    depth, in_string, escaped_at = 0, False, -1
    for match in _STRUCTURE.finditer(text):
        at, char = match.start(), match.group()
        if at == escaped_at:
            continue
        if in_string:
            if char == "\\":
                escaped_at = at + 1
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > limit:
                return True
        elif char in "]}":
            depth -= 1
    return False


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _check_strings(value: Any, path: str) -> None:
    """Every key and string, at any depth (bounded above), must be storable text."""
    if isinstance(value, str):
        if _UNSTORABLE.search(value):
            raise _unstorable(path or "body")
    elif isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}" if path else key
            if _UNSTORABLE.search(key):
                raise _unstorable(_UNSTORABLE.sub("?", where))
            _check_strings(item, where)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_strings(item, f"{path}.{index}" if path else str(index))


def _unstorable(field: str) -> ApiError:
    return ApiError(
        422,
        "invalid_request",
        f"Invalid request: {field}: text must not contain NUL characters or lone surrogates.",
        fields={field: "text without NUL characters or lone surrogates"},
    )


def _body_error(message: str, expected: str) -> ApiError:
    return ApiError(422, "invalid_request", message, fields={"body": expected})


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
    """The policy for webhook URLs a tenant gives us (private addresses only in dev,
    never the stack's own ports)."""
    settings = get_settings()
    return url_policy(
        allow_private=settings.webhook_allow_private_urls,
        deny_ports=settings.webhook_deny_ports,
    )
